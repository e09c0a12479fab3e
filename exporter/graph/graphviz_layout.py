"""The module view of a drawing (``yexport graph --collapse modules``): the non-constant nodes grouped
by top-level layer (``model.N``) with the layer's module type, and for YOLO-style networks the
backbone / neck / head sections and the Detect layer's per-level heads.

Module scopes come from what the PyTorch exporters record (see :mod:`exporter.graph.scopes`).
Module type names are taken, first one found wins, from: the ``layers`` argument
(``{index: "C3"}``); the model's ``metadata_props`` key :data:`LAYERS_KEY`; the class hierarchy
metadata; the operator pattern of the layer (C3, SPPF, SPP, Focus, Conv, Concat, Upsample, Detect,
...).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.graph.graphviz_graph import _Graph, _prepare
from exporter.graph.scopes import module_scope, node_scope

#: Model-level ``metadata_props`` key naming the top-level layers of the network, written by an
#: exporter that knows the model. Value: a JSON array with one entry per layer of the top-level
#: ``Sequential`` in order (entry ``i`` is layer ``i``); an entry is either the module name
#: (``"C3"``) or an array whose first item is the module name, the rest free-form, e.g. the YAML row
#: with the name first: ``[["Conv", -1, 1, [64, 6, 2, 2]], ["C3", -1, 3, [128]], ...]``.
#: A JSON object ``{"0": "Conv", "1": "C3", ...}`` is accepted too.
LAYERS_KEY = "yexport.layers"


def parse_layers(value: str | list | dict) -> dict[int, str]:
    """Parse the :data:`LAYERS_KEY` value (JSON text or already-parsed) into ``{index: module name}``."""
    data = json.loads(value) if isinstance(value, str) else value
    out: dict[int, str] = {}
    items: Iterable[tuple[Any, Any]] = data.items() if isinstance(data, dict) else enumerate(data)
    for key, entry in items:
        name = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
        if isinstance(name, str) and name:
            out[int(key)] = name.rsplit(".", 1)[-1]
    return out


def _model_layers(model: Any) -> dict[int, str]:
    for prop in model.metadata_props:
        if prop.key == LAYERS_KEY:
            try:
                return parse_layers(prop.value)
            except (ValueError, TypeError, AttributeError):
                return {}
    return {}


def infer_module_type(nodes: list[Any]) -> str:
    """Guess a YOLOv5 module name from the (non-constant) operators of one layer."""
    ops = Counter(n.op_type for n in nodes)
    outputs = {o: n for n in nodes for o in n.output}
    if not ops:
        return "?"
    if ops["Resize"] or ops["Upsample"]:
        return "Upsample"
    if set(ops) == {"Concat"}:
        return "Concat"
    if ops["Conv"] and (ops["Reshape"] or ops["Transpose"]):
        return "Detect"
    if ops["MaxPool"] >= 3:
        pools = [n for n in nodes if n.op_type == "MaxPool"]
        chained = any(outputs.get(p.input[0]) is not None and outputs[p.input[0]].op_type == "MaxPool" for p in pools)
        return "SPPF" if chained else "SPP"
    if (ops["Slice"] >= 4 or ops["SpaceToDepth"]) and ops["Conv"]:
        return "Focus"
    if ops["Conv"] >= 3 and ops["Concat"]:
        bn_on_concat = any(
            n.op_type == "BatchNormalization" and outputs.get(n.input[0]) is not None
            and outputs[n.input[0]].op_type == "Concat" for n in nodes
        )
        return "BottleneckCSP" if bn_on_concat else "C3"
    if ops["Conv"] == 2 and ops["Add"]:
        return "Bottleneck"
    if ops["Conv"] == 1:
        return "Conv"
    return ops.most_common(1)[0][0]


@dataclass
class Block:
    """One top-level layer (``model.N``) of the network: its nodes, module type and outputs."""

    key: str
    index: int | None
    module: str
    nodes: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def module_blocks(model: Any, layers: Mapping[int, str] | None = None) -> list[Block]:
    """Group the non-constant nodes of ``model`` by top-level layer, in graph order.

    Nodes outside any layer scope become single-node blocks with ``index=None``.
    """
    return _blocks(_prepare(model), layers)[0]


def _blocks(g: _Graph, layers: Mapping[int, str] | None) -> tuple[list[Block], dict[int, str]]:
    named = dict(_model_layers(g.model))
    named.update(layers or {})
    blocks: dict[str, Block] = {}
    classes: dict[str, str] = {}
    owner: dict[int, str] = {}
    for i in g.live:
        node = g.nodes[i]
        scope = node_scope(node)
        if scope is None:
            key, index, cls = f"{node.op_type}#{i}", None, None
        else:
            key, index, cls = scope
        if cls and key not in classes:
            classes[key] = cls
        if key not in blocks:
            blocks[key] = Block(key, index, "")
        blocks[key].nodes.append(i)
        owner[i] = key
    for key, block in blocks.items():
        if block.index is None:
            block.module = g.nodes[block.nodes[0]].op_type
        elif block.index in named:
            block.module = named[block.index]
        elif key in classes:
            block.module = classes[key]
        else:
            block.module = infer_module_type([g.nodes[i] for i in block.nodes])
        outs: list[str] = []
        for i in block.nodes:
            for o in g.nodes[i].output:
                if not o:
                    continue
                external = o in g.outputs or any(owner.get(c) != key for c in g.consumers.get(o, []))
                if external:
                    outs.append(o)
        block.outputs = outs
    return list(blocks.values()), owner


# --------------------------------------------------------------------------------------------
# YOLO layout: sections and the Detect layer's levels


BACKBONE_KEY = "yexport.backbone_layers"  # optional: how many YAML rows are the backbone


def _backbone_end(g: _Graph, blocks: list[Block]) -> int | None:
    """Index of the last backbone layer: from the file's metadata, else YOLOv5's rule (the backbone
    list ends with its SPP/SPPF layer, or with the C3 after SPP in v5.0)."""
    for prop in g.model.metadata_props:
        if prop.key == BACKBONE_KEY and prop.value.strip().isdigit():
            return int(prop.value) - 1
    pools = [b.index for b in blocks if b.index is not None and b.module in ("SPPF", "SPP")]
    if not pools:
        return None
    end = max(pools)
    after = next((b for b in blocks if b.index == end + 1), None)
    if after is not None and after.module in ("C3", "BottleneckCSP"):  # v5.0: SPP, then C3 closes the backbone
        end += 1
    return end


def _repeats(g: _Graph, block: Block) -> int:
    """How many Bottlenecks a C3/BottleneckCSP layer repeats (``model.N.m.K`` scopes), 0 if unknown."""
    found = {sc[1] for i in block.nodes if (sc := module_scope(g.nodes[i].name)) and sc[1] and "/m/m." in g.nodes[i].name}
    return len(found)


@dataclass
class _Level:
    conv: int  # node index of the level's 1x1 conv
    name: str  # P3/8
    grid: str  # 80x80
    channels: str  # 128 -> 255
    anchors: str  # 10x13 16x30 33x23 (pixels), or ""


def _detect_levels(g: _Graph, block: Block) -> list[_Level]:
    """The Detect layer's per-level heads: one 1x1 conv each, its grid and its anchors (from the
    decode's constant anchor grids, where the file decodes)."""
    from onnx import numpy_helper

    convs = [i for i in block.nodes if g.nodes[i].op_type == "Conv"]
    meta = {p.key: p.value for p in g.model.metadata_props}
    strides = [int(x) for x in meta.get("yexport.stride", "").split(",") if x.strip().isdigit()]
    anchor_names = [x for i in block.nodes for x in g.nodes[i].input
                    if x in g.init_dims and len(g.init_dims[x]) == 5 and g.init_dims[x][2:] == [1, 1, 2]]
    inits = {t.name: t for t in g.model.graph.initializer}
    anchors: list[str] = []
    for name in dict.fromkeys(anchor_names):
        t = inits.get(name)
        try:
            a = numpy_helper.to_array(t).reshape(-1, 2) if t is not None and t.data_location != 1 else None
        except Exception:
            a = None
        # yexport's Detect decodes wh * wh * (4 * anchor_grid): the constant is 4x the anchors in pixels;
        # another exporter's decode may fold it otherwise, so anchors are shown for yexport files only
        if a is not None and meta.get("yexport.head") == "decode":
            anchors.append("  ".join(f"{w:g},{h:g}" for w, h in (a / 4).round(1).tolist()))
    levels = []
    for k, i in enumerate(convs):
        node = g.nodes[i]
        dims = (g.shapes.get(node.output[0], "") or "").replace("×", "x").split("x")
        grid = "×".join(dims[-2:]) if len(dims) == 4 else "?"
        w = g.init_dims.get(node.input[1], [])
        channels = f"{w[1]} → {w[0]}" if len(w) == 4 else ""
        stride = strides[k] if k < len(strides) else None
        in_dims = (g.shapes.get(g.inputs[0], "") if g.inputs else "").replace("×", "x").split("x")
        if stride is None and len(in_dims) == 4 and len(dims) == 4 and in_dims[2].isdigit() and dims[2].isdigit():
            stride = int(in_dims[2]) // max(int(dims[2]), 1)  # no yexport.stride: image height / grid height
        name = f"P{stride.bit_length() - 1}/{stride}" if stride else f"level {k}"
        levels.append(_Level(i, name, grid, channels, anchors[k] if k < len(anchors) and len(anchors) == len(convs)
                             else ""))
    return levels
