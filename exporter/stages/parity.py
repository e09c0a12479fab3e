"""parity: compare the graph (and, after --simplify, the graph before it) with the PyTorch model.

Input shapes come from the graph itself (see :func:`exporter.parity.default_shapes`): the static
shape, or batches 1/2/4, or three image sizes for ``--dynamic all``; the inputs are never the capture
example. The PyTorch forwards (fp32, float64 truth, and the fused copy that was captured) run once per
input and serve both comparisons, and the other variants of the same model (exporter.parity.cache).
"""

from __future__ import annotations

from exporter.pipeline import Context


def parity(ctx: Context) -> Context:
    from exporter.parity import compare_with, default_shapes
    from exporter.parity.cache import cached_reference
    from exporter.stages.external import onnx_source

    o = ctx.options
    explicit = o.atol is not None or o.rtol is not None
    # build_reference's forwards, reused by the next variant of the same model in this process
    ref = cached_reference(ctx.source.model, default_shapes(ctx.onnx), inputs=o.inputs, images=o.images,
                           training=o.training, head=o.head, seed=o.seed, device=o.device,
                           exported=ctx.model if o.fuse_bn else None, truth=not explicit,
                           precision="float16" if o.half else "float32",
                           cuda_floor="cuda" in (*o.providers, *o.require))

    def run(graph: object):
        return compare_with(graph, ref, providers=o.providers, require=o.require, atol=o.atol, rtol=o.rtol,
                            output_atol=o.output_atol, model=ctx.source.model, detections=o.detections,
                            strict=o.strict)

    report = run(onnx_source(ctx))  # a path when the weights are external data
    before = run(ctx.unsimplified) if ctx.unsimplified is not None else None
    change = report.summary() if before is None else f"before simplify: {before.summary()}; after: {report.summary()}"
    return ctx.replace(parity=report, parity_unsimplified=before, change=change,
                       failure="" if report else "parity failed")
