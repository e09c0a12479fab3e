"""parity: compare the graph (and, after --simplify, the graph before it) with the PyTorch model.

Input shapes come from the graph itself (see :func:`exporter.parity.default_shapes`): the static
shape, or batches 1/2/4, or three image sizes for ``--dynamic all``. The PyTorch reference runs
once per input and serves both comparisons.
"""

from __future__ import annotations

from exporter.pipeline import Context


def parity(ctx: Context) -> Context:
    from exporter.parity import compare_with, default_shapes, reference_outputs

    o = ctx.options
    ref = reference_outputs(ctx.source.model, default_shapes(ctx.onnx), inputs=o.inputs, images=o.images,
                            training=o.training, head=o.head, seed=o.seed, device=o.device)
    def run(graph: object):
        return compare_with(graph, ref, providers=o.providers, require=o.require, atol=o.atol, rtol=o.rtol,
                            output_atol=o.output_atol, model=ctx.source.model)

    report = run(ctx.onnx)
    before = run(ctx.unsimplified) if ctx.unsimplified is not None else None
    change = report.summary() if before is None else f"before simplify: {before.summary()}; after: {report.summary()}"
    return ctx.replace(parity=report, parity_unsimplified=before, change=change,
                       failure="" if report else "parity failed")
