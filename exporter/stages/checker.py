"""checker: onnx.checker, plus the promises yexport makes about the file (opset, BatchNorm)."""

from __future__ import annotations

from exporter.errors import YexportError
from exporter.pipeline import Context, op_counts


class GraphCheckError(YexportError):
    exit_code = 1


def checker(ctx: Context) -> Context:
    import onnx
    from torch import nn

    o = ctx.options
    m = ctx.onnx
    onnx.checker.check_model(m, full_check=True)
    opset = next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset != o.opset:
        raise GraphCheckError(f"the graph has opset {opset} but --opset {o.opset} was asked for (the exporter "
                              "switched opsets); choose an opset the exporter supports, e.g. 18")
    ops = op_counts(m)
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    want = sum(1 for x in ctx.source.model.modules() if isinstance(x, nn.BatchNorm2d))
    if o.bn_kept:
        if len(bns) != want:
            raise GraphCheckError(f"--keep-bn: the model has {want} BatchNorm2d but the graph has {len(bns)} "
                                  "BatchNormalization nodes")
        mode = 1 if o.training else 0
        wrong = [n.name for n in bns if next((a.i for a in n.attribute if a.name == "training_mode"), 0) != mode]
        if wrong:
            raise GraphCheckError(f"BatchNormalization {wrong[0]} has training_mode != {mode}")
        producers = {out: n for n in m.graph.node for out in n.output}
        fed = [n.name for n in bns for i in n.input[1:] if i in producers and producers[i].op_type == "Identity"]
        if fed:
            raise GraphCheckError(f"Identity node in front of BatchNormalization {fed[0]}")
    elif ops["BatchNormalization"]:
        raise GraphCheckError(f"BatchNorm fusion asked for, but {ops['BatchNormalization']} BatchNormalization remain")
    found = f"{len(bns)} BatchNormalization" if bns else "no BatchNormalization"
    return ctx.replace(change=f"onnx.checker passed; opset {opset}; {found}")
