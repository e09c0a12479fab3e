"""Graphviz diagrams of an ONNX graph: every operator, or one box per top-level module.

The DOT text is written here (no Python dependency); Graphviz's ``dot`` turns it into SVG or PNG.
Edges carry tensor shapes (after ONNX shape inference). Constant sub-graphs (``Constant`` nodes,
``Identity`` copies of weights, shape arithmetic on weights) are left out: they are not data flow.
Labels read the way papers draw networks: ``Conv 3×3 /2`` with its output channels,
``BatchNormalization`` in its own colour, ``Resize`` as ``Upsample (nearest)``, ``Reshape`` as
``view``, ``Transpose`` as ``permute``.

Module scopes (``collapse="modules"``) come from what the PyTorch exporters record:

* TorchScript exporter: node names ``/model.2/cv1/conv/Conv``; the first path component ending in
  ``.<index>`` (``model.2``) is the top-level layer.
* dynamo exporter (``torch.onnx.export(..., dynamo=True)``): node ``metadata_props``
  ``pkg.torch.onnx.name_scopes`` = ``"['', 'model.2', 'model.2.cv1', ...]"`` and
  ``pkg.torch.onnx.class_hierarchy`` = ``"['pkg.Model', 'pkg.C3', 'pkg.Conv', ...]"`` (Python list
  literals, aligned), or the older ``namespace`` = ``": pkg.Model/model.2: pkg.C3/..."``. The class
  at the layer's position names its module type.

Module type names are taken, first one found wins, from: the ``layers`` argument
(``{index: "C3"}``); the model's ``metadata_props`` key :data:`LAYERS_KEY`; the class hierarchy
metadata; the operator pattern of the layer (C3, SPPF, SPP, Focus, Conv, Concat, Upsample, Detect,
...).
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, MissingDependency, YexportError
from exporter.graph.scopes import module_scope, node_scope

#: Model-level ``metadata_props`` key naming the top-level layers of the network, written by an
#: exporter that knows the model. Value: a JSON array with one entry per layer of the top-level
#: ``Sequential`` in order (entry ``i`` is layer ``i``); an entry is either the module name
#: (``"C3"``) or an array whose first item is the module name, the rest free-form, e.g. the YAML row
#: with the name first: ``[["Conv", -1, 1, [64, 6, 2, 2]], ["C3", -1, 3, [128]], ...]``.
#: A JSON object ``{"0": "Conv", "1": "C3", ...}`` is accepted too.
LAYERS_KEY = "yexport.layers"


COLLAPSE_CHOICES = ("modules",)
OUTPUT_FORMATS = ("svg", "png", "pdf", "dot")
DEFAULT_DIR = Path("graphviz_out")

_FONT = "Helvetica"
_OP_COLORS = {
    "Conv": "#c9daf8",
    "ConvTranspose": "#c9daf8",
    "Gemm": "#c9daf8",
    "MatMul": "#c9daf8",
    "BatchNormalization": "#fde9a9",
    "Sigmoid": "#f4cccc",
    "Relu": "#f4cccc",
    "LeakyRelu": "#f4cccc",
    "HardSwish": "#f4cccc",
    "Mul": "#f4cccc",
    "Add": "#d9d2e9",
    "Concat": "#e0e0e0",
    "Split": "#e0e0e0",
    "Slice": "#e0e0e0",
    "Reshape": "#e6dccd",
    "Transpose": "#e6dccd",
    "Resize": "#d0ecd0",
    "MaxPool": "#cfe8e4",
    "AveragePool": "#cfe8e4",
}
_MODULE_COLORS = {
    "Conv": "#c9daf8",
    "Focus": "#c9daf8",
    "C3": "#fce5cd",
    "BottleneckCSP": "#fce5cd",
    "Bottleneck": "#fce5cd",
    "SPPF": "#d9d2e9",
    "SPP": "#d9d2e9",
    "Concat": "#e0e0e0",
    "Upsample": "#d0ecd0",
    "Detect": "#f4cccc",
}
_ADDED = {"color": "#2e7d32", "fillcolor": "#c8e6c9", "penwidth": "2"}
_REMOVED = {"color": "#c62828", "fillcolor": "#ffebee", "fontcolor": "#c62828", "penwidth": "2"}


# --------------------------------------------------------------------------------------------
# Reading the graph


@dataclass
class _Graph:
    """One ONNX graph prepared for drawing: shapes, producers, the non-constant ("live") nodes."""

    model: Any
    nodes: list[Any]
    live: list[int]
    shapes: dict[str, str]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    constant: set[str]
    init_dims: dict[str, list[int]]
    values: dict[str, Any]
    inputs: list[str]
    outputs: list[str]


def _dims_text(type_proto: Any) -> str | None:
    from exporter.graph._canon import shape_list

    shape = shape_list(type_proto)
    if shape is None:
        return None
    dims = ["?" if d is None else str(d) for d in shape]
    text = "×".join(dims) if dims else "scalar"
    elem = type_proto.tensor_type.elem_type
    if elem not in (0, 1):  # show the dtype only where it is not float32
        import onnx

        text += " " + onnx.TensorProto.DataType.Name(elem).lower()
    return text


def _prepare(model: Any) -> _Graph:
    import onnx
    from onnx import numpy_helper

    from exporter.graph.infer import infer_shapes

    g = model.graph
    declared = {vi.name for vi in g.input}
    try:  # on a weight-free copy, data propagation only where it cannot blow up memory
        ig = infer_shapes(model, data_prop=True).graph
    except Exception:  # shape inference is a help, not a requirement
        ig = g
    nodes = list(g.node)
    shapes: dict[str, str] = {}
    for vi in [v for v in ig.input if v.name in declared] + list(ig.value_info) + list(ig.output):
        text = _dims_text(vi.type)
        if text is not None:
            shapes[vi.name] = text
    init_dims = {t.name: list(t.dims) for t in g.initializer}
    values: dict[str, Any] = {}
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.dims) <= 1:
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:
                pass
    constant = set(init_dims)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    live: list[int] = []
    for i, node in enumerate(nodes):
        ins = [x for x in node.input if x]
        # CastLike reads only the dtype of its second input: with a constant first input it is constant.
        if (
            node.op_type == "Constant"
            or (ins and all(x in constant for x in ins))
            or (node.op_type == "CastLike" and node.input[0] in constant)
        ):
            constant.update(o for o in node.output if o)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        try:
                            values[node.output[0]] = numpy_helper.to_array(attr.t)
                        except Exception:
                            pass
            elif node.op_type == "Identity" and ins[0] in init_dims:
                init_dims[node.output[0]] = init_dims[ins[0]]
            continue
        live.append(i)
        for o in node.output:
            if o:
                producer[o] = i
        for x in ins:
            if x not in constant:
                consumers[x].append(i)
    inputs = [vi.name for vi in g.input if vi.name not in init_dims]
    outputs = [vi.name for vi in g.output]
    return _Graph(model, nodes, live, shapes, producer, dict(consumers), constant, init_dims, values, inputs, outputs)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        try:
            v = onnx.helper.get_attribute_value(a)
        except Exception:
            continue
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _xy(values: Iterable[int]) -> str:
    vals = list(values)
    return "×".join(str(v) for v in vals)


def friendly_label(node: Any, graph: _Graph | None = None) -> str:
    """The label an operator gets in the diagram (lines separated by ``\\n``)."""
    op = node.op_type
    a = _attrs(node)
    dims = graph.init_dims if graph else {}
    values = graph.values if graph else {}
    if op in ("Conv", "ConvTranspose"):
        w = dims.get(node.input[1]) if len(node.input) > 1 else None
        kernel = a.get("kernel_shape") or (w[2:] if w else [])
        strides = a.get("strides") or [1] * max(len(kernel), 1)
        head = op
        if kernel:
            head += f" {_xy(kernel)}"
        stride = strides[0] if len(set(strides)) == 1 else "×".join(map(str, strides))
        head += f" /{stride}"
        lines = [head]
        if w:
            out_ch = w[0] * (a.get("group", 1) if op == "ConvTranspose" else 1)
            ch = f"{out_ch} ch"
            if a.get("group", 1) > 1:
                ch += f", groups {a['group']}"
            lines.append(ch)
        return "\n".join(lines)
    if op == "BatchNormalization":
        w = dims.get(node.input[1]) if len(node.input) > 1 else None
        detail = [f"{w[0]} ch"] if w else []
        if "epsilon" in a:
            detail.append(f"eps {a['epsilon']:.0e}".replace("e-0", "e-"))
        if a.get("training_mode"):
            detail.append("training_mode=1")
        return "BatchNormalization" + ("\n" + ", ".join(detail) if detail else "")
    if op == "Resize":
        mode = a.get("mode", "nearest")
        scale = ""
        if len(node.input) > 2 and node.input[2] in values:
            sc = [float(v) for v in values[node.input[2]].ravel()]
            spatial = sc[2:] if len(sc) > 2 else sc
            if spatial and len(set(spatial)) == 1:
                scale = f" ×{spatial[0]:g}"
            up = all(s >= 1 for s in sc)
        else:
            up = True
        return f"{'Upsample' if up else 'Resize'} ({mode}){scale}"
    if op == "Reshape":
        return "view"
    if op == "Transpose":
        perm = a.get("perm")
        return f"permute({','.join(map(str, perm))})" if perm else "permute"
    if op in ("MaxPool", "AveragePool"):
        k = a.get("kernel_shape", [])
        s = a.get("strides") or [1] * len(k)
        return f"{op} {_xy(k)} /{s[0] if len(set(s)) == 1 else '×'.join(map(str, s))}" if k else op
    if op == "Concat":
        return f"Concat (dim {a.get('axis', 0)})"
    if op == "Split":
        return f"Split (dim {a.get('axis', 0)})"
    if op == "Gemm" and len(node.input) > 1 and node.input[1] in dims:
        w = dims[node.input[1]]
        return f"Gemm\n{w[0] if a.get('transB') else w[-1]} features"
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{op}"
    return op


# --------------------------------------------------------------------------------------------
# Module scopes


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
# Structural diff (for highlighting)


@dataclass
class _Diff:
    added: set[int]  # live node indices of this graph
    removed: list[int]  # live node indices of the other graph
    match: dict[int, int]  # other index -> this index
    other: _Graph


def _signature(node: Any, g: _Graph) -> str:
    return friendly_label(node, g).replace("\n", " ")


def _diff(this: _Graph, other: _Graph) -> _Diff:
    a = [_signature(other.nodes[i], other) for i in other.live]
    b = [_signature(this.nodes[i], this) for i in this.live]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    match: dict[int, int] = {}
    for blk in matcher.get_matching_blocks():
        for k in range(blk.size):
            match[other.live[blk.a + k]] = this.live[blk.b + k]
    matched_this = set(match.values())
    added = {i for i in this.live if i not in matched_this}
    removed = [i for i in other.live if i not in match]
    return _Diff(added, removed, match, other)


# --------------------------------------------------------------------------------------------
# DOT text


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _q(text: str) -> str:
    """A DOT quoted string; control characters (a NUL breaks ``dot``) are shown as ``\\xNN``."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + _CONTROL.sub(lambda m: f"\\\\x{ord(m.group()):02x}", text) + '"'


def _attr_text(attrs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items())


class _Dot:
    def __init__(self, name: str, title: str | None) -> None:
        self.lines: list[str] = [
            f"digraph {_q(name)} {{",
            f'  graph [rankdir=TB, fontname="{_FONT}", fontsize=12, nodesep=0.25, ranksep=0.3'
            + (f", label={_q(title)}, labelloc=t" if title else "") + "];",
            f'  node [shape=box, style="rounded,filled", fillcolor="#f3f3f3", color="#555555", fontname="{_FONT}", fontsize=10];',
            f'  edge [fontname="{_FONT}", fontsize=8, color="#666666", fontcolor="#444444", arrowsize=0.6];',
        ]
        self.node_count = 0
        self.edge_count = 0
        self._edges: set[tuple[str, str, str]] = set()

    def node(self, nid: str, attrs: Mapping[str, str]) -> None:
        self.node_count += 1
        self.lines.append(f"  {_q(nid)} [{_attr_text(attrs)}];")

    def edge(self, a: str, b: str, attrs: Mapping[str, str] | None = None) -> None:
        label = (attrs or {}).get("label", "")
        if (a, b, label) in self._edges:
            return
        self._edges.add((a, b, label))
        self.edge_count += 1
        self.lines.append(f"  {_q(a)} -> {_q(b)}" + (f" [{_attr_text(attrs)}]" if attrs else "") + ";")

    def text(self) -> str:
        return "\n".join([*self.lines, "}"]) + "\n"


@dataclass(frozen=True)
class DotGraph:
    """DOT text plus what it shows (for messages and tests)."""

    text: str
    nodes: int
    edges: int
    blocks: int = 0
    added: int = 0
    removed: int = 0

    def summary(self) -> str:
        parts = [f"{self.blocks} module boxes" if self.blocks else f"{self.nodes} nodes", f"{self.edges} edges"]
        if self.added or self.removed:
            parts.append(f"{self.added} added, {self.removed} removed")
        return ", ".join(parts)


def _io_nodes(dot: _Dot, g: _Graph) -> None:
    for name in g.inputs:
        dot.node(f"in:{name}", {"label": f"{name}\n{g.shapes.get(name, '?')}", "shape": "ellipse",
                                "style": "filled", "fillcolor": "#ffffff"})
    for name in g.outputs:
        dot.node(f"out:{name}", {"label": f"{name}\n{g.shapes.get(name, '?')}", "shape": "ellipse",
                                 "style": "filled", "fillcolor": "#ffffff"})


def _edge_label(g: _Graph, tensor: str) -> dict[str, str]:
    shape = g.shapes.get(tensor)
    return {"label": f" {shape}"} if shape else {}


def _full(g: _Graph, dot: _Dot, diff: _Diff | None) -> None:
    _io_nodes(dot, g)
    for i in g.live:
        node = g.nodes[i]
        attrs = {"label": friendly_label(node, g), "tooltip": node.name or node.op_type,
                 "fillcolor": _OP_COLORS.get(node.op_type, "#f3f3f3")}
        if diff and i in diff.added:
            attrs.update(_ADDED)
            attrs["label"] = "+ " + attrs["label"]
        dot.node(f"n{i}", attrs)
    for i in g.live:
        for x in g.nodes[i].input:
            if not x or x in g.constant:
                continue
            src = f"n{g.producer[x]}" if x in g.producer else f"in:{x}" if x in g.inputs else None
            if src:
                dot.edge(src, f"n{i}", _edge_label(g, x))
    for name in g.outputs:
        if name in g.producer:
            dot.edge(f"n{g.producer[name]}", f"out:{name}")
        elif name in g.inputs:
            dot.edge(f"in:{name}", f"out:{name}")
    if diff:
        _removed_nodes(g, dot, diff)


def _removed_nodes(g: _Graph, dot: _Dot, diff: _Diff) -> None:
    other = diff.other
    removed = set(diff.removed)
    dashed = {"style": "dashed", "color": _REMOVED["color"]}
    for j in diff.removed:
        node = other.nodes[j]
        attrs = {"label": "− " + friendly_label(node, other), "tooltip": f"removed: {node.name or node.op_type}",
                 "style": "dashed,rounded,filled", **_REMOVED}
        dot.node(f"r{j}", attrs)
    for j in diff.removed:
        node = other.nodes[j]
        for x in node.input:
            if not x or x in other.constant:
                continue
            p = other.producer.get(x)
            if p is not None:
                src = f"r{p}" if p in removed else (f"n{diff.match[p]}" if p in diff.match else None)
            else:
                src = f"in:{x}" if x in g.inputs else None
            if src:
                dot.edge(src, f"r{j}", dashed)
        for o in node.output:
            for c in other.consumers.get(o, []):
                if c in diff.match:
                    dot.edge(f"r{j}", f"n{diff.match[c]}", dashed)
            if o in other.outputs and o in g.outputs:
                dot.edge(f"r{j}", f"out:{o}", dashed)


def _block_label(block: Block, g: _Graph) -> str:
    head = f"{block.index}: {block.module}" if block.index is not None else block.module
    shapes = []
    # graph outputs first (in graph order), then what other layers read
    ordered = [o for o in g.outputs if o in block.outputs] + [o for o in block.outputs if o not in g.outputs]
    for o in ordered:
        s = g.shapes.get(o, "?")
        if s not in shapes:
            shapes.append(s)
    if len(shapes) > 4:
        shapes = [*shapes[:3], f"+{len(shapes) - 3} more"]
    return "\n".join([head, *shapes])


BACKBONE_KEY = "yexport.backbone_layers"  # optional: how many YAML rows are the backbone
_SECTIONS = (("backbone", "Backbone"), ("neck", "Neck (FPN + PAN)"), ("head", "Head (Detect)"))
_SECTION_STYLE = {"backbone": "#eef4fc", "neck": "#fdf6ec", "head": "#fcefef"}


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


def _collapsed(g: _Graph, dot: _Dot, diff: _Diff | None, layers: Mapping[int, str] | None) -> int:
    blocks, owner = _blocks(g, layers)
    ids = {b.key: f"b{k}" for k, b in enumerate(blocks)}
    _io_nodes(dot, g)
    box_count = 0
    # YOLOv5 layout: backbone / neck / head clusters, the Detect layer drawn as its per-level heads
    detect = next((b for b in blocks if b.module == "Detect" and b.index is not None), None)
    end = _backbone_end(g, blocks) if detect is not None else None
    levels = _detect_levels(g, detect) if detect is not None and end is not None else []
    level_of = {lv.conv: n for n, lv in enumerate(levels)}
    section: dict[str, str] = {}
    if end is not None:
        for b in blocks:
            if b.index is not None:
                section[b.key] = "head" if b is detect else "backbone" if b.index <= end else "neck"
    members: dict[str, list[str]] = defaultdict(list)
    for b in blocks:
        attrs = {"label": _block_label(b, g), "tooltip": b.key,
                 "fillcolor": _MODULE_COLORS.get(b.module, "#f3f3f3")}
        n = _repeats(g, b) if b.module in ("C3", "BottleneckCSP") else 0
        if n:
            first, _, rest = attrs["label"].partition("\n")
            attrs["label"] = f"{first} ×{n}" + ("\n" + rest if rest else "")
        if b is detect and levels:
            attrs["label"] = f"{b.index}: Detect\ndecode + concat\n" + attrs["label"].partition("\n")[2]
        if b.index is None:
            attrs.update({"shape": "ellipse", "label": friendly_label(g.nodes[b.nodes[0]], g)})
        else:
            attrs.update({"fontsize": "11", "margin": "0.15,0.06"})
            box_count += 1
        if diff:
            added = Counter(g.nodes[i].op_type for i in b.nodes if i in diff.added)
            removed = Counter(diff.other.nodes[j].op_type for j in diff.removed if _other_owner(diff, j) == b.key)
            if sum(added.values()) == len(b.nodes):
                attrs.update(_ADDED)
            elif added or removed:
                attrs.update({"color": _ADDED["color"] if added and not removed else _REMOVED["color"], "penwidth": "2"})
                attrs["label"] += "\n" + _change_text(added, removed)
        if b.key in section:
            members[section[b.key]].append(ids[b.key])
        dot.node(ids[b.key], attrs)
    for n, lv in enumerate(levels):
        label = f"{lv.name} head\n1x1 Conv {lv.channels}\ngrid {lv.grid}" + (f"\nanchors {lv.anchors}" if lv.anchors else "")
        dot.node(f"det{n}", {"label": label, "fillcolor": _MODULE_COLORS["Detect"], "fontsize": "10",
                             "tooltip": f"{detect.key if detect else ''}.m.{n}"})
        members["head"].append(f"det{n}")
        out = g.nodes[lv.conv].output[0]
        if detect is not None:
            dot.edge(f"det{n}", ids[detect.key], _edge_label(g, out))
    for key, title in _SECTIONS:
        if members.get(key):
            dot.lines.append(f"  subgraph cluster_{key} {{")
            dot.lines.append(f'    label={_q(title)}; labeljust=l; style="rounded,filled"; color="#bbbbbb"; '
                             f'fillcolor="{_SECTION_STYLE[key]}"; fontsize=12;')
            dot.lines.append("    " + " ".join(_q(m) for m in members[key]) + ";")
            dot.lines.append("  }")
    for b in blocks:
        for i in b.nodes:
            target = f"det{level_of[i]}" if i in level_of else ids[b.key]
            for x in g.nodes[i].input:
                if not x or x in g.constant:
                    continue
                if x in g.producer:
                    src = owner[g.producer[x]]
                    if src != b.key:
                        dot.edge(ids[src], target, _edge_label(g, x))
                elif x in g.inputs:
                    dot.edge(f"in:{x}", target, _edge_label(g, x))
    for name in g.outputs:
        if name in g.producer:
            dot.edge(ids[owner[g.producer[name]]], f"out:{name}")
    if diff:
        gone: dict[str, list[int]] = defaultdict(list)
        for j in diff.removed:
            key = _other_owner(diff, j)
            if key not in ids:
                gone[key].append(j)
        for n, (key, nodes) in enumerate(gone.items()):
            scope = node_scope(diff.other.nodes[nodes[0]])
            module = scope[2] if scope and scope[2] else infer_module_type([diff.other.nodes[j] for j in nodes])
            label = f"{scope[1]}: {module}" if scope else module
            dot.node(f"gone{n}", {"label": f"− {label}\n(removed)", "style": "dashed,rounded,filled", "tooltip": key,
                                  **_REMOVED})
    return box_count


def _change_text(added: Counter[str], removed: Counter[str], limit: int = 3) -> str:
    items = [f"+{n} {op}" for op, n in added.most_common()] + [f"−{n} {op}" for op, n in removed.most_common()]
    return " ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _other_owner(diff: _Diff, j: int) -> str:
    scope = node_scope(diff.other.nodes[j])
    return scope[0] if scope else f"{diff.other.nodes[j].op_type}#{j}"


def build_dot(
    model: Any,
    *,
    collapse: str | None = None,
    highlight: Any = None,
    layers: Mapping[int, str] | None = None,
    title: str | None = None,
) -> DotGraph:
    """Build the diagram of ``model`` (an ``onnx.ModelProto``) and return a :class:`DotGraph`.

    ``collapse="modules"`` draws one box per top-level layer; ``highlight`` (another model or its
    path) marks nodes added (green) and removed (red, dashed) relative to it; ``layers`` names the
    module type of layer indices (``{9: "SPPF"}``).
    """
    if collapse not in (None, *COLLAPSE_CHOICES):
        raise ConfigError(f"--collapse {collapse}: unknown (choose from: {', '.join(COLLAPSE_CHOICES)})")
    g = _prepare(model)
    diff = None
    if highlight is not None:
        from exporter.graph.load import load_onnx

        other_model = load_onnx(highlight) if isinstance(highlight, (str, Path)) else highlight
        diff = _diff(g, _prepare(other_model))
    name = model.graph.name or "graph"
    dot = _Dot(name, title)
    boxes = 0
    if collapse == "modules":
        boxes = _collapsed(g, dot, diff, layers)
    else:
        _full(g, dot, diff)
    if diff:
        dot.lines.append(
            '  legend [shape=plaintext, style="", label="green: added   red dashed: removed (vs the other file)", fontsize=9];'
        )
    return DotGraph(dot.text(), dot.node_count, dot.edge_count, boxes,
                    len(diff.added) if diff else 0, len(diff.removed) if diff else 0)


def to_dot(
    model: Any,
    *,
    collapse: str | None = None,
    highlight: Any = None,
    layers: Mapping[int, str] | None = None,
    title: str | None = None,
) -> str:
    """DOT text of ``model`` (an ``onnx.ModelProto`` or a path); see :func:`build_dot`."""
    if isinstance(model, (str, Path)):
        from exporter.graph.load import load_onnx

        model = load_onnx(model)
    return build_dot(model, collapse=collapse, highlight=highlight, layers=layers, title=title).text


# --------------------------------------------------------------------------------------------
# Files


def find_dot() -> str:
    """Path of Graphviz's ``dot``; :class:`MissingDependency` names the Debian package."""
    found = shutil.which("dot")
    if not found:
        raise MissingDependency("Graphviz 'dot' not found: install Debian's 'graphviz' package (make install-system)")
    return found


def default_output(path: str | Path) -> Path:
    """``graphviz_out/<stem>.svg`` (relative to the working directory)."""
    return DEFAULT_DIR / f"{Path(path).stem}.svg"


def write_dot(text: str, out: str | Path, timeout: float = 300.0) -> Path:
    """Write DOT ``text`` to ``out``: as is for ``.dot``, through ``dot -T<suffix>`` otherwise."""
    from exporter.io import atomic_write

    dst = Path(out)
    fmt = dst.suffix.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"{dst}: unknown output type '{dst.suffix}': use .svg, .png, .pdf or .dot")
    if fmt == "dot":
        return atomic_write(dst, text)
    exe = find_dot()
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise YexportError(f"Graphviz 'dot' took more than {timeout:.0f} s on this graph") from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise YexportError(f"Graphviz 'dot' failed: {err[0] if err else f'exit code {proc.returncode}'}")
    return atomic_write(dst, proc.stdout)


def render_graphviz(
    path: str | Path,
    out: str | Path | None = None,
    collapse: str | None = None,
    highlight: str | Path | None = None,
    layers: Mapping[int, str] | None = None,
) -> Path:
    """Draw the ONNX file ``path`` with Graphviz into ``out`` (.svg/.png/.pdf/.dot; default
    ``graphviz_out/<stem>.svg``) and return the path written."""
    from exporter.graph.load import load_onnx

    dst = Path(out) if out is not None else default_output(path)
    if dst.suffix.lower().lstrip(".") not in OUTPUT_FORMATS:
        raise ConfigError(f"{dst}: unknown output type '{dst.suffix}': use .svg, .png, .pdf or .dot")
    if dst.suffix.lower() != ".dot":
        find_dot()
    model = load_onnx(path)
    graph = build_dot(model, collapse=collapse, highlight=highlight, layers=layers, title=Path(path).name)
    return write_dot(graph.text, dst)
