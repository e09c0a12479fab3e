"""parity: compare the graph (and the graph before each stage that asks for it: simplify, half) with the
PyTorch model.

Input shapes come from the graph itself (see :func:`exporter.parity.default_shapes`): the static
shape, or batches 1/2/4, or three image sizes for ``--dynamic all``; the inputs are never the capture
example. The PyTorch forwards (fp32, float64 truth, and the fused copy that was captured) run once per
input and serve both comparisons, and the other variants of the same model (exporter.parity.cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.pipeline import GRAPH, Context, Stage

if TYPE_CHECKING:
    from onnx import ModelProto

    from exporter.parity import ParityReport


def parity(ctx: Context) -> Context:
    from exporter.parity import compare_with, default_shapes, file_precision
    from exporter.parity.cache import cached_reference
    from exporter.stages.external import onnx_source

    o = ctx.options
    explicit = o.atol is not None or o.rtol is not None
    refs: dict[str, Any] = {}

    def run(graph: ModelProto, precision: str) -> ParityReport:
        if precision not in refs:  # build_reference's forwards, reused by the next variant of the same model
            refs[precision] = cached_reference(
                ctx.source.model, default_shapes(ctx.onnx), inputs=o.inputs, images=o.images, training=o.training,
                head=o.head, seed=o.seed, device=o.device, exported=ctx.model if o.fuse_bn else None,
                truth=not explicit, precision=precision, cuda_floor="cuda" in (*o.providers, *o.require))
        source = onnx_source(ctx.replace(onnx=graph))  # a path when the weights are external data
        return compare_with(source, refs[precision], providers=o.providers, require=o.require, atol=o.atol,
                            rtol=o.rtol, output_atol=o.output_atol, model=ctx.source.model,
                            detections=o.detections, strict=o.strict)

    # every graph is judged at its own precision (float16 initializers: the float16 floor), the file and
    # the graph before each stage that asked for it (simplify, half): no stage is a special case here
    report = run(ctx.graph, file_precision(ctx.graph))
    before = {name: run(graph, file_precision(graph)) for name, graph in ctx.before.items()}
    change = "; ".join([*(f"before {name}: {r.summary()}" for name, r in before.items()), f"after: {report.summary()}"]
                       ) if before else report.summary()
    return ctx.replace(parity=report, parity_before=before, change=change,
                       failure="" if report else "parity failed")


STAGE = Stage("parity", parity, lambda o: o.check, requires=(GRAPH,), numerics=lambda o: "none (measures)")
