"""checker: onnx.checker, plus the promises yexport makes about the file (opset, BatchNorm).

The BatchNorm promise is prepare's: ``ctx.bn_expected`` is how many BatchNorm2d the prepared model
still has (all of them with --keep-bn; with fusion, those that follow no conv), and the graph must
have exactly that many BatchNormalization nodes (fewer by at most ``ctx.bn_may_fold``, those whose
input prepare could not see), in the right mode, reading their statistics from initializers."""

from __future__ import annotations

from exporter.errors import YexportError
from exporter.pipeline import Context


class GraphCheckError(YexportError):
    exit_code = 1


def expected_batchnorms(ctx: Context) -> int:
    """prepare's count; a pipeline without prepare counts the BatchNorm2d of the captured model."""
    if ctx.bn_expected is not None:
        return ctx.bn_expected
    from torch import nn

    model = ctx.model if ctx.model is not None else ctx.source.model
    return sum(1 for x in model.modules() if isinstance(x, nn.BatchNorm2d))


def checker(ctx: Context) -> Context:
    import onnx

    from exporter.stages.external import has_external, saved_copy

    o = ctx.options
    m = ctx.graph
    if ctx.external_dir is not None and has_external(m):
        # by path: the checker then also checks the external data references against the files
        onnx.checker.check_model(str(saved_copy(ctx)), full_check=True)
    else:
        onnx.checker.check_model(m, full_check=True)
    opset = next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset != o.opset:
        raise GraphCheckError(f"the graph has opset {opset} but --opset {o.opset} was asked for (the exporter "
                              "switched opsets); choose an opset the exporter supports, e.g. 18")
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    want = expected_batchnorms(ctx)
    low = want - (0 if o.bn_kept else ctx.bn_may_fold)
    if not low <= len(bns) <= want:
        if o.bn_kept:
            raise GraphCheckError(f"--keep-bn: the model has {want} BatchNorm2d but the graph has {len(bns)} "
                                  "BatchNormalization nodes")
        kept = (f"prepare kept {want if low == want else f'{low} to {want}'} BatchNorm2d that it could not fold "
                "(see its record)" if want else "prepare fused every BatchNorm2d")
        raise GraphCheckError(f"BatchNorm fusion asked for: {kept}, but {len(bns)} BatchNormalization remain")
    mode = 1 if o.training else 0
    wrong = [n.name for n in bns if next((a.i for a in n.attribute if a.name == "training_mode"), 0) != mode]
    if wrong:
        raise GraphCheckError(f"BatchNormalization {wrong[0]} has training_mode != {mode}")
    producers = {out: n for n in m.graph.node for out in n.output}
    fed = [n.name for n in bns for i in n.input[1:] if i in producers and producers[i].op_type == "Identity"]
    if fed:
        raise GraphCheckError(f"Identity node in front of BatchNormalization {fed[0]}")
    found = f"{len(bns)} BatchNormalization" if bns else "no BatchNormalization"
    if len(bns) < want:  # only without --keep-bn: prepare kept these, the exporter's constant folding took them
        folded = want - len(bns)
        found += f" (the exporter folded {folded} of the {want} BatchNorm2d prepare could not fold)"
        ctx = ctx.note(f"BatchNorm fusion: the exporter folded {folded} BatchNorm2d that prepare left (Conv+BN "
                       f"constant folding); {len(bns) or 'none'} remain in the graph")
    return ctx.replace(change=f"onnx.checker passed; opset {opset}; {found}")
