"""tidy: constant folding and clean-up of the captured graph (onnxscript's optimizer passes), with
BatchNorm folding left out when BatchNorm is kept, and Identity nodes removed.

When the only constant work left is ``Constant`` nodes (a static TorchScript export), they are lifted
to initializers directly: same graph, without importing onnxscript (about a second per process)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from exporter.pipeline import GRAPH, Context, Stage, op_counts

if TYPE_CHECKING:
    from onnx import ModelProto

# constant folding limits: fold what the exporters leave behind (grids, shapes), not big weights
_FOLD_INPUT_LIMIT = 1 << 16
_FOLD_OUTPUT_LIMIT = 1 << 22


def tidy_model(model: ModelProto, keep_bn: bool, base_dir: Path | None = None) -> ModelProto:
    """Return an optimized copy of ``model`` (an onnx.ModelProto). Tensors stored as external data (in
    ``base_dir``) stay external: the passes read only the small ones they fold."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES
             if not (keep_bn and "BatchNorm" in (getattr(r, "name", "") or ""))]
    irm = ir.serde.deserialize_model(model)
    if base_dir is not None:
        ir.external_data.set_base_dir(irm.graph, base_dir)
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


def only_constant_nodes_to_fold(model: ModelProto) -> bool:
    """True for a static graph in which no node but ``Constant`` (with a tensor ``value``) has only
    constant inputs, and no Identity is left: then lifting the Constant nodes is all there is to fold.
    (With dynamic axes, onnxscript also folds shape arithmetic on the dimensions that are known.)"""
    from exporter.graph.constants import graph_constant_nodes

    for i in model.graph.input:
        if not all(d.HasField("dim_value") for d in i.type.tensor_type.shape.dim):
            return False
    constant, _ = graph_constant_nodes(model.graph)  # the rule the snapshot, diff and drawing share
    for n, is_constant in zip(model.graph.node, constant, strict=True):
        if n.op_type == "Constant":
            if [a.name for a in n.attribute] != ["value"]:
                return False
        elif n.op_type == "Identity" or (is_constant and len(n.input)):
            return False
    return True


def lift_constants(model: ModelProto) -> ModelProto:
    """A copy of ``model`` with every ``Constant`` node turned into an initializer."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for n in out.graph.node:
        if n.op_type == "Constant":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            out.graph.initializer.append(t)
        else:
            keep.append(n)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def tidy(ctx: Context) -> Context:
    """Tidy the graph; a result that fails :func:`~exporter.stages._verify.verified` (checker, topological
    order, the same outputs) is dropped and the untidied graph kept, with the reason in the record and
    the notes (the export goes on: the graph it keeps is the one capture made)."""
    from exporter.stages._verify import verified

    before = op_counts(ctx.graph)
    lifted = only_constant_nodes_to_fold(ctx.graph)
    try:
        model = lift_constants(ctx.graph) if lifted else tidy_model(ctx.graph, keep_bn=ctx.options.bn_kept,
                                                                         base_dir=ctx.external_dir)
    except Exception as exc:  # a pass of onnxscript that raises: keep the captured graph
        from exporter.errors import first_line

        why = f"tidy fell back to its input graph: the rewrite raised {type(exc).__name__}: {first_line(exc)[:200]}"
        return ctx.replace(change=why).note(why)
    verdict = verified(ctx, model, "tidy", numerics=not lifted)  # lifting Constant nodes moves no number
    if verdict.fell_back:
        return ctx.replace(change=verdict.reason).note(verdict.reason)
    after = op_counts(model)
    gone = {k: before[k] - after[k] for k in before if before[k] > after[k]}
    top = ", ".join(f"-{v} {k}" for k, v in sorted(gone.items(), key=lambda t: -t[1])[:6])
    return ctx.replace(onnx=model, change=f"{sum(before.values())} -> {sum(after.values())} nodes ({top or 'no change'})")


STAGE = Stage("tidy", tidy, lambda o: o.tidy, requires=(GRAPH,), numerics=lambda o: "constants folded in fp32 "
              "(grids, scalings)" + ("; BatchNorm kept" if o.bn_kept else ""))
