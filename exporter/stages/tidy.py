"""tidy: constant folding and clean-up of the captured graph (onnxscript's optimizer passes), with
BatchNorm folding left out when BatchNorm is kept, and Identity nodes removed."""

from __future__ import annotations

from exporter.pipeline import Context, op_counts

# constant folding limits: fold what the exporters leave behind (grids, shapes), not big weights
_FOLD_INPUT_LIMIT = 1 << 16
_FOLD_OUTPUT_LIMIT = 1 << 22


def tidy_model(model, keep_bn: bool):
    """Return an optimized copy of ``model`` (an onnx.ModelProto)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES
             if not (keep_bn and "BatchNorm" in (getattr(r, "name", "") or ""))]
    irm = ir.serde.deserialize_model(model)
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=_FOLD_INPUT_LIMIT,
                                                    output_size_limit=_FOLD_OUTPUT_LIMIT),
                rewriter.RewritePass(rules),
                common.RemoveUnusedNodesPass(),
            ],
            steps=3,
            early_stop=True,
        ),
        common.IdentityEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedOpsetsPass(),
    )(irm)
    return ir.serde.serialize_model(irm)


def tidy(ctx: Context) -> Context:
    before = op_counts(ctx.onnx)
    model = tidy_model(ctx.onnx, keep_bn=ctx.options.bn_kept)
    after = op_counts(model)
    gone = {k: before[k] - after[k] for k in before if before[k] > after[k]}
    top = ", ".join(f"-{v} {k}" for k, v in sorted(gone.items(), key=lambda t: -t[1])[:6])
    return ctx.replace(onnx=model, change=f"{sum(before.values())} -> {sum(after.values())} nodes ({top or 'no change'})")
