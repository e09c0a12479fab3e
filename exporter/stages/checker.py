"""checker: onnx.checker, then every promise the stages before it made about the file.

The checker has no expectations of its own: it holds the graph to exactly the promises made so far
(``Context.promises``: capture's opset, infer_shapes' types, prepare's BatchNorm count, ...), so the
stage that makes a promise and the check of it cannot disagree. A broken promise fails naming the
stage that made it."""

from __future__ import annotations

from exporter.errors import YexportError
from exporter.pipeline import GRAPH, Context, Stage


class GraphCheckError(YexportError):
    exit_code = 1


def checker(ctx: Context) -> Context:
    import onnx

    from exporter.stages.external import has_external, saved_copy

    m = ctx.graph
    if ctx.external_dir is not None and has_external(m):
        # by path: the checker then also checks the external data references against the files
        onnx.checker.check_model(str(saved_copy(ctx)), full_check=True)
    else:
        onnx.checker.check_model(m, full_check=True)
    found = []
    for stage, cond in ctx.promises:
        v = cond.verdict(ctx)
        if not v:
            raise GraphCheckError(f"{stage} promised {cond.name}: {v.text or 'it does not hold'}")
        found.append(v.text or cond.name)
        if v.note:
            ctx = ctx.note(v.note)
    return ctx.replace(change="; ".join(["onnx.checker passed", *found]))


STAGE = Stage("checker", checker, requires=(GRAPH,))
