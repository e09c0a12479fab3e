"""simplify: onnxsim, honouring --keep-bn. A failure, or a result that fails
:func:`~exporter.stages._verify.verified`, keeps the unsimplified graph and is reported; a graph whose
weights are external data (onnxsim holds the whole model as one protobuf, at most 2 GiB) is left as it
is, with the reason recorded."""

from __future__ import annotations

from typing import Any

from exporter.pipeline import GRAPH, Context, Stage, op_counts


def simplify(ctx: Context) -> Context:
    import onnxsim

    from exporter.stages._verify import verified
    from exporter.stages.external import has_external

    o = ctx.options
    before = ctx.graph
    if has_external(before):
        why = ("simplify skipped: the weights are external data and onnxsim can only hold a model as one protobuf "
               "(at most 2 GiB)")
        return ctx.replace(change=why).note(why)
    kwargs: dict[str, Any] = {"skip_fuse_bn": o.bn_kept, "check_n": 0}  # parity is ours, before and after
    if o.dynamic:
        kwargs["test_input_shapes"] = {before.graph.input[0].name: [o.batch, 3, *o.img]}
    try:
        model, _ = onnxsim.simplify(before, **kwargs)
    except Exception as exc:  # onnxsim raises plain RuntimeError/ValueError/onnx errors
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ctx.replace(failure=f"onnxsim failed ({msg}); kept the unsimplified graph")
    bn_before, bn_after = op_counts(before)["BatchNormalization"], op_counts(model)["BatchNormalization"]
    if o.bn_kept and bn_after < bn_before:
        return ctx.replace(failure=f"onnxsim folded {bn_before - bn_after} BatchNormalization despite --keep-bn; "
                                   "kept the unsimplified graph")
    verdict = verified(ctx, model, "simplify", numerics=False)  # numerics: parity runs before and after
    if verdict.fell_back:
        return ctx.replace(failure=f"{verdict.reason}; kept the unsimplified graph")
    return ctx.replace(onnx=model, change=f"{len(before.graph.node)} -> {len(model.graph.node)} nodes")


STAGE = Stage("simplify", simplify, lambda o: o.simplify, requires=(GRAPH,), compare_before=True,
              numerics=lambda o: "onnxsim constant folding" + ("; BatchNorm folding skipped" if o.bn_kept else "")
              + "; checked by parity before and after")
