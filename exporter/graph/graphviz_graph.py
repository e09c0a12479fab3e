"""The ONNX graph as the Graphviz drawing shows it (:mod:`exporter.graph.graphviz`): tensor shapes
after ONNX shape inference, the producers and consumers of the live (non-constant) nodes, the
labels that read the way papers draw networks, and which nodes a highlighted drawing marks as added
or removed relative to another file.

Constant sub-graphs (``Constant`` nodes, ``Identity`` copies of weights, shape arithmetic on
weights; :mod:`exporter.graph.constants`) are left out: they are not data flow. The highlighting
uses the structural matching of ``yexport diff`` (:func:`exporter.graph.diff.structural_match`):
nodes are matched by structure, never by name or position in the file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from exporter.graph.constants import graph_constant_nodes
from exporter.graph.value_types import shape_list


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
        if t.data_location != 1 and len(t.dims) <= 1:  # not external
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:
                pass
    flags, constant = graph_constant_nodes(g)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = defaultdict(list)
    live: list[int] = []
    for i, node in enumerate(nodes):
        ins = [x for x in node.input if x]
        if flags[i]:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        try:
                            values[node.output[0]] = numpy_helper.to_array(attr.t)
                        except Exception:
                            pass
            elif node.op_type == "Identity" and ins and ins[0] in init_dims and node.output:
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
# Highlighting: what was added and removed relative to another file


@dataclass
class _Diff:
    added: set[int]  # live node indices of this graph
    removed: list[int]  # live node indices of the other graph
    match: dict[int, int]  # other index -> this index (drawn nodes of this graph only)
    other: _Graph


def highlight(this: _Graph, other: _Graph) -> _Diff:
    """Nodes of ``this`` without a counterpart in ``other`` (added) and the other way round
    (removed), matched as ``yexport diff`` matches them (the other file is A, this one B)."""
    from exporter.graph._canon import canonicalize
    from exporter.graph.diff import structural_match

    ga, gb = canonicalize(other.model), canonicalize(this.model)
    _, _, matching = structural_match(ga, gb)
    oa, ob = ga.order or [], gb.order or []
    paired = {oa[i]: ob[j] for i, j in matching.pairs}  # file indices: other -> this
    matched_this = set(paired.values())
    live_this = set(this.live)
    added = {i for i in this.live if i not in matched_this}
    removed = [j for j in other.live if j not in paired]
    match = {j: i for j, i in paired.items() if i in live_this}
    return _Diff(added, removed, match, other)
