"""Graphviz diagrams of an ONNX graph: every operator, or one box per top-level module.

The DOT text is written here (no Python dependency); Graphviz's ``dot`` turns it into SVG or PNG.
Edges carry tensor shapes (after ONNX shape inference). Constant sub-graphs (``Constant`` nodes,
``Identity`` copies of weights, shape arithmetic on weights) are left out: they are not data flow.
Labels read the way papers draw networks: ``Conv 3×3 /2`` with its output channels,
``BatchNormalization`` in its own colour, ``Resize`` as ``Upsample (nearest)``, ``Reshape`` as
``view``, ``Transpose`` as ``permute``.

The pieces: the graph as drawn (live nodes, shapes, labels, highlighting) in
:mod:`exporter.graph.graphviz_graph`, the module view (``collapse="modules"``: module scopes, module
types, YOLO sections) in :mod:`exporter.graph.graphviz_layout`, DOT text and the ``dot`` runner in
:mod:`exporter.graph.graphviz_dot`; this module draws.
"""

from __future__ import annotations

import shutil  # noqa: F401 - tests patch shutil.which through this module
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError
from exporter.graph.graphviz_dot import (  # noqa: F401 - re-exported
    _FONT,
    OUTPUT_FORMATS,
    DotGraph,
    _Dot,
    _q,
    find_dot,
    write_dot,
)
from exporter.graph.graphviz_graph import _Diff, _Graph, _prepare, friendly_label
from exporter.graph.graphviz_graph import highlight as highlight_diff
from exporter.graph.graphviz_layout import (  # noqa: F401 - re-exported: the public names of the drawing
    BACKBONE_KEY,
    LAYERS_KEY,
    Block,
    _backbone_end,
    _blocks,
    _detect_levels,
    _repeats,
    infer_module_type,
    module_blocks,
    parse_layers,
)
from exporter.graph.scopes import module_scope, node_scope  # noqa: F401 - re-exported

COLLAPSE_CHOICES = ("modules",)
DEFAULT_DIR = Path("graphviz_out")

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
# Drawing


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


_SECTIONS = (("backbone", "Backbone"), ("neck", "Neck (FPN + PAN)"), ("head", "Head (Detect)"))
_SECTION_STYLE = {"backbone": "#eef4fc", "neck": "#fdf6ec", "head": "#fcefef"}


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
    path) marks nodes added (green) and removed (red, dashed) relative to it, matched as
    ``yexport diff`` matches them; ``layers`` names the module type of layer indices (``{9: "SPPF"}``).
    """
    if collapse not in (None, *COLLAPSE_CHOICES):
        raise ConfigError(f"--collapse {collapse}: unknown (choose from: {', '.join(COLLAPSE_CHOICES)})")
    g = _prepare(model)
    diff = None
    if highlight is not None:
        from exporter.graph.load import load_onnx

        other_model = load_onnx(highlight) if isinstance(highlight, (str, Path)) else highlight
        diff = highlight_diff(g, _prepare(other_model))
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


def default_output(path: str | Path) -> Path:
    """``graphviz_out/<stem>.svg`` (relative to the working directory)."""
    return DEFAULT_DIR / f"{Path(path).stem}.svg"


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
