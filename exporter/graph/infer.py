"""ONNX shape inference that a hostile file cannot turn into a memory bomb; never imports torch.

onnx's inference runs on a weight-free copy of the model (:func:`shape_only`), and its data
propagation (``data_prop=True``, which resolves Shape -> Gather -> Concat -> Reshape chains) only
where it is bounded: onnx keeps every element of a known-length 1-D value as a protobuf message,
so one ``Add`` of a declared 671M-element vector would take tens of gigabytes.
"""

from __future__ import annotations

from typing import Any

_EXTERNAL = 1  # TensorProto.EXTERNAL
#: shape inference keeps inline tensors up to this size (Reshape shapes, axes, pads); larger or
#: external ones become typed graph inputs, so their data is never materialised
KEEP_INLINE_BYTES = 64 * 1024



def shape_only(model: Any) -> Any:
    """A copy of ``model`` without its weights, for ``onnx.shape_inference`` (``data_prop`` too).

    External tensors and inline ones over :data:`KEEP_INLINE_BYTES` (initializers of the graph and
    its subgraphs, and Constant nodes) become typed inputs of the main graph: their shapes stay
    known and their data can be neither read nor materialised. Small constants (shapes, axes) stay,
    so data propagation still resolves Reshape targets and the like."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = model.graph.name
    lg.input.extend(model.graph.input)
    lg.output.extend(model.graph.output)
    lg.value_info.extend(model.graph.value_info)
    names = {vi.name for vi in lg.input}
    moved: list[Any] = []

    def heavy(t: Any) -> bool:
        return t.data_location == _EXTERNAL or t.ByteSize() > KEEP_INLINE_BYTES

    def strip(g_src: Any, g_dst: Any) -> None:
        for t in g_src.initializer:
            if heavy(t):
                moved.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            else:
                g_dst.initializer.append(t)
        for st in g_src.sparse_initializer:
            if heavy(st.values) or heavy(st.indices):
                moved.append(helper.make_tensor_value_info(st.values.name, st.values.data_type, list(st.dims)))
            else:
                g_dst.sparse_initializer.append(st)
        for n in g_src.node:
            value = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and value is not None and heavy(value):
                moved.append(helper.make_tensor_value_info(n.output[0], value.data_type, list(value.dims)))
                continue
            n2 = g_dst.node.add()
            n2.op_type, n2.domain, n2.name = n.op_type, n.domain, n.name
            n2.input.extend(n.input)
            n2.output.extend(n.output)
            for a in n.attribute:
                a2 = n2.attribute.add()
                if a.HasField("g") or len(a.graphs):
                    a2.name, a2.type = a.name, a.type
                    if a.HasField("g"):
                        _copy_graph_shell(a.g, a2.g)
                        strip(a.g, a2.g)
                    for sg in a.graphs:
                        sg2 = a2.graphs.add()
                        _copy_graph_shell(sg, sg2)
                        strip(sg, sg2)
                elif a.HasField("t") and heavy(a.t):
                    a2.CopyFrom(a)
                    _stub(a2.t)
                else:
                    a2.CopyFrom(a)

    strip(model.graph, lg)
    for vi in moved:
        if vi.name not in names:
            names.add(vi.name)
            lg.input.append(vi)
    return light


def _copy_graph_shell(src: Any, dst: Any) -> None:
    dst.name = src.name
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)


def _stub(t: Any) -> None:
    """Keep a tensor attribute's type, drop its data (no location: nothing can be read)."""
    t.ClearField("raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data",
              "external_data"):
        t.ClearField(f)
    t.data_location = 0


#: data propagation keeps every known 1-D value as one protobuf message per element (about 100
#: bytes each, copied per consumer): it runs only while all 1-D values together stay below this
DATA_PROP_ELEMENTS = 1 << 18


def infer_shapes(model: Any, *, data_prop: bool = True) -> Any:
    """ONNX shape inference on the weight-free :func:`shape_only` copy of ``model``.

    With ``data_prop`` a first pass without data propagation checks that it is safe: every value
    has a known rank and the 1-D ones known lengths adding up to at most
    :data:`DATA_PROP_ELEMENTS` (onnx allocates per element of such values, so a file declaring a
    671M-element vector would otherwise take tens of gigabytes); only then a second pass propagates
    shape values (Shape -> Gather -> Concat -> Reshape). Exceptions from onnx propagate."""
    import onnx

    light = shape_only(model)
    first = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=False)
    if not data_prop or not _data_prop_safe(first.graph):
        return first
    return onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)


def _data_prop_safe(g: Any, budget: list[int] | None = None) -> bool:
    budget = [DATA_PROP_ELEMENTS] if budget is None else budget
    types = {vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output)}
    dims = [list(t.dims) for t in g.initializer]
    for n in g.node:
        for o in n.output:
            if not o:
                continue
            tp = types.get(o)
            if tp is None or tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
                return False
            shape = tp.tensor_type.shape.dim
            if len(shape) == 1:
                if not shape[0].HasField("dim_value"):
                    return False
                dims.append([shape[0].dim_value])
        for a in n.attribute:
            for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                if not _data_prop_safe(sg, budget):
                    return False
    for vi in g.input:
        tp = vi.type
        if tp.WhichOneof("value") == "tensor_type" and len(tp.tensor_type.shape.dim) == 1:
            d = tp.tensor_type.shape.dim[0]
            dims.append([d.dim_value if d.HasField("dim_value") else 0])
    budget[0] -= sum(d[0] for d in dims if len(d) == 1)
    return budget[0] >= 0
