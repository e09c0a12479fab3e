"""infer_shapes: ONNX shape inference, so every edge carries its size (what Netron shows on edges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.pipeline import GRAPH, Condition, Context, Stage, Verdict

if TYPE_CHECKING:
    import onnx
    from onnx import ValueInfoProto


def shape_coverage(model: onnx.ModelProto) -> tuple[int, int]:
    """(edges with a fully known shape, all intermediate edges)."""
    known = {vi.name for vi in model.graph.value_info
             if vi.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_value") or d.HasField("dim_param") for d in vi.type.tensor_type.shape.dim)}
    outputs = {o.name for o in model.graph.output}
    edges = {o for n in model.graph.node for o in n.output if o and o not in outputs}
    return len(edges & known), len(edges)


def infer_shapes(ctx: Context) -> Context:
    import onnx

    model = onnx.shape_inference.infer_shapes(ctx.graph, check_type=True, strict_mode=True, data_prop=True)
    known, total = shape_coverage(model)
    return ctx.replace(onnx=model, change=f"shapes on {known}/{total} intermediate edges")


def _typed(vi: ValueInfoProto) -> bool:
    kind = vi.type.WhichOneof("value")
    return kind is not None and (kind != "tensor_type" or vi.type.tensor_type.elem_type != 0)


def _every_edge_typed(ctx: Context) -> Verdict:
    if ctx.onnx is None:
        return Verdict(False, "there is no ONNX graph")
    g = ctx.onnx.graph
    typed = {vi.name for vi in (*g.value_info, *g.output, *g.input) if _typed(vi)}
    missing = [o for n in g.node for o in n.output if o and o not in typed]
    return Verdict(not missing, f"{len(missing)} edges have no type (e.g. {missing[0]})" if missing else "")


TYPED = Condition("a type on every edge", _every_edge_typed)
STAGE = Stage("infer_shapes", infer_shapes, lambda o: o.infer_shapes, requires=(GRAPH,), ensures=(TYPED,),
              numerics=lambda o: "none (annotations only)")
