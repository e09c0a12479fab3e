"""half: the graph in float16 (weights, activations, compute), on any machine.

The graph is captured in fp32 and converted afterwards (onnxconverter-common's float16 converter) rather
than traced from a ``.half()`` copy: tracing runs one real forward, and PyTorch's float16 kernels on a CPU
are about 100x slower than fp32 (25 s for yolov5s at 640), while the converted graph is the same
computation with float16 tensors. Kept in float32, deliberately:
- ``Resize`` (nn.Upsample): its ``scales`` input must be float32 in ONNX; the converter's default block
  list keeps the op in float32 with a Cast on each side.
- Nothing else. The Detect decode stays in float16 as the official exporter has it: its largest pixel
  values (about 1300 at 640) are far below float16's maximum (65504) and its rounding there (0.5 px
  above 512) is below the network's own float16 noise (about 1 px on P3 boxes, measured by parity).
``--half-io float32`` keeps the file's inputs and outputs in float32 (Casts at the edges).
The parity check then judges the file against float64 with PyTorch's float16 noise as the floor.
"""

from __future__ import annotations

import warnings

from exporter.pipeline import GRAPH, Context, Stage


def half(ctx: Context) -> Context:
    import onnx
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    o = ctx.options
    keep_io = o.half_io == "float32"
    before = ctx.graph
    graph = onnx.ModelProto()
    graph.CopyFrom(before)  # the converter edits its argument in place
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model contains values beyond float16's range" is checked below
        # max_finite_val: constants are clipped to it; yolov5's largest (grid x stride, 4 x anchors) stay below
        converted = convert_float_to_float16(graph, keep_io_types=keep_io, op_block_list=DEFAULT_OP_BLOCK_LIST,
                                             max_finite_val=65504.0)
    _retarget_casts(before, converted)
    del converted.graph.value_info[:]  # inferred again from the converted graph, so edges and ops agree
    converted = onnx.shape_inference.infer_shapes(converted)
    kept = sorted({n.op_type for n in before.graph.node if n.op_type in DEFAULT_OP_BLOCK_LIST})
    casts = sum(n.op_type == "Cast" for n in converted.graph.node) - sum(n.op_type == "Cast" for n in before.graph.node)
    change = (f"float16 weights and compute; {casts} Cast(s) added"
              + (f"; {', '.join(kept)} kept float32" if kept else "")
              + ("; inputs/outputs float32" if keep_io else "; inputs/outputs float16"))
    return ctx.replace(onnx=converted, change=change)


STAGE = Stage("half", half, lambda o: o.half, requires=(GRAPH,), compare_before=True,
              numerics=lambda o: "float16 weights and activations (~1e-3 relative per op); judged against "
              "PyTorch's float16 noise; checked by parity before and after")


def _retarget_casts(before, converted) -> None:
    """The graph's own Casts to float32 (e.g. a dynamic grid made from Range) must cast to float16 now; the
    converter changes tensor types but leaves their ``to``. Casts it inserted around kept ops stay."""
    import onnx

    own = {n.name for n in before.graph.node if n.op_type == "Cast"}
    for node in converted.graph.node:
        if node.op_type == "Cast" and node.name in own:
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
