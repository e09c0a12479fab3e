"""prepare: a private copy of the model, set up as the options say (the caller's model is never touched).

With fusion on, every BatchNorm2d that directly follows a Conv2d is folded into it: the model's own
``fuse()`` first (YOLOv5's ``Conv``), then, for any BatchNorm2d left, a look at its parent module's
forward (torch.fx, children as leaves): ``conv -> bn`` folds into the conv, ``cat(conv, conv, ...) -> bn``
(BottleneckCSP) folds slice by slice into those convs. A BatchNorm2d that follows anything else (a
ReLU, an add) is kept and declared: prepare promises how many BatchNormalization nodes the graph has
(:func:`batchnorm_promise`; none when it fused them all), and the checker holds the graph to that
promise, so prepare and checker cannot disagree.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from exporter.errors import ConfigError
from exporter.options import InputSpec
from exporter.pipeline import PREPARED, Condition, Context, Stage, Verdict

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


def resolve_device(name: str) -> torch.device:
    """torch.device for ``cpu`` / ``cuda`` / ``cuda:N``, refusing CUDA where torch cannot use it."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch sees no usable CUDA device on this machine (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: use cpu, cuda or cuda:N")
    return dev


# ------------------------------------------------------------------------------ BatchNorm folding


def _set_module(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent, _, leaf = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _trace_children_as_leaves(parent: nn.Module) -> fx.Graph | None:
    """The graph of ``parent.forward`` with every submodule a leaf call, or None when it cannot be traced."""
    from torch import fx

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return True

    try:
        return Leaves().trace(parent)
    except Exception:  # noqa: BLE001 - fx raises many kinds; untraceable means "not folded"
        return None


def _bn_slice(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    from torch import nn

    part = nn.BatchNorm2d(stop - start, eps=bn.eps).to(bn.weight.device)
    assert bn.running_mean is not None and bn.running_var is not None
    part.load_state_dict({"weight": bn.weight[start:stop], "bias": bn.bias[start:stop],
                          "running_mean": bn.running_mean[start:stop], "running_var": bn.running_var[start:stop],
                          "num_batches_tracked": bn.num_batches_tracked}, strict=True)
    return part.eval()


@dataclass
class BatchNormFold:
    """What the fold of leftover BatchNorm2d did: how many folded, why each other one stays, and how many
    are never called (so never in the graph)."""

    folded: int = 0  # conv -> bn
    sliced: int = 0  # cat(conv, ...) -> bn
    kept: list[str] = field(default_factory=list)
    unseen: int = 0  # kept because the parent's forward cannot be traced: the exporter may fold them
    uncalled: int = 0


def _sole_conv(parent: nn.Module, calls: dict[str, list[fx.Node]], uses: dict[int, int], node: object,
               user: fx.Node) -> str | None:
    """The target of ``node`` when it calls a plain Conv2d called only there, whose output only ``user`` reads."""
    from torch import fx, nn

    if not (isinstance(node, fx.Node) and node.op == "call_module" and set(node.users) == {user}):
        return None
    target = str(node.target)
    m = parent.get_submodule(target)
    return target if type(m) is nn.Conv2d and len(calls[target]) == 1 and uses[id(m)] == 1 else None


def _fold_in(parent: nn.Module, prefix: str, uses: dict[int, int], out: BatchNormFold) -> None:
    """Fold the BatchNorm2d children of ``parent`` that follow a conv (or a Concat of convs) in its forward."""
    import torch
    from torch import fx, nn

    from exporter.models.fuse import fuse_conv_bn

    bns = sorted(n for n, m in parent.named_children() if isinstance(m, nn.BatchNorm2d))
    graph = _trace_children_as_leaves(parent)
    if graph is None:
        out.kept += [f"{prefix}{b} (its parent's forward cannot be traced)" for b in bns]
        out.unseen += len(bns)
        return
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    for b in bns:
        bn = parent.get_submodule(b)
        nodes = calls.get(b, [])
        if not nodes:
            out.uncalled += 1
            continue
        if type(bn) is not nn.BatchNorm2d or len(nodes) != 1 or uses[id(bn)] != 1 or bn.running_mean is None:
            out.kept.append(f"{prefix}{b} (not a plain BatchNorm2d called once with running statistics)")
            if type(bn) is not nn.BatchNorm2d:  # e.g. timm's BatchNormAct2d: the exporter may still fold it
                out.unseen += 1
            continue
        (node,) = nodes
        src = node.args[0] if node.args else None
        convs: list[str] = []
        if isinstance(src, fx.Node) and src.op == "call_module":
            convs = [c] if (c := _sole_conv(parent, calls, uses, src, node)) else []
            kind = type(parent.get_submodule(str(src.target))).__name__
            why = (f"after {src.target}, a {kind} shared or read elsewhere" if kind == "Conv2d"
                   else f"after {src.target} ({kind}), not a Conv")
        elif isinstance(src, fx.Node) and src.op == "call_function" and src.target is torch.cat:
            parts = src.args[0] if src.args else ()
            dim = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim", 0)
            found = [_sole_conv(parent, calls, uses, p, src) for p in parts] if isinstance(parts, (list, tuple)) else []
            if dim == 1 and set(src.users) == {node} and found and all(found):
                convs = [c for c in found if c]
            why = "after a Concat that is not one of convs read only by it"
        else:
            why = f"after {getattr(src, 'name', src)}, not a Conv"
        mods = [m for c in convs if isinstance(m := parent.get_submodule(c), nn.Conv2d)]
        if not convs or sum(m.out_channels for m in mods) != bn.num_features:
            out.kept.append(f"{prefix}{b} ({why})")
            continue
        start = 0
        for c, m in zip(convs, mods, strict=True):  # the channels of a Concat are its inputs', in order
            _set_module(parent, c, fuse_conv_bn(m, _bn_slice(bn, start, start + m.out_channels)))
            start += m.out_channels
        _set_module(parent, b, nn.Identity())
        if len(convs) == 1 and isinstance(src, fx.Node) and src.op == "call_module":
            out.folded += 1
        else:
            out.sliced += 1


def fold_leftover_batchnorms(model: nn.Module) -> BatchNormFold:
    """Fold the BatchNorm2d modules ``model.fuse()`` left (in place), where the parent's forward shows
    that they follow a conv or a Concat of convs."""
    from torch import nn

    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    out = BatchNormFold()
    parents = {name.rpartition(".")[0] for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for pname in sorted(parents):
        _fold_in(model.get_submodule(pname), f"{pname}." if pname else "", uses, out)
    return out


def batchnorm_promise(want: int, may_fold: int = 0, *, keep: bool = False, training: bool = False) -> Condition:
    """What prepare promises about the graph's BatchNormalization nodes: ``want`` of them (the called
    BatchNorm2d of the prepared model), fewer by at most ``may_fold`` with fusion (those whose input
    prepare could not see: the exporter's constant folding may still take them), in the mode of
    ``training``, reading their statistics from initializers (no Identity in front)."""
    low = want - (0 if keep else may_fold)
    mode = 1 if training else 0
    count = "no" if not want else str(want) if low == want else f"{low} to {want}"
    name = f"{count} BatchNormalization" + (f" (training_mode={mode}, one per BatchNorm2d)" if keep and want else
                                             " (the BatchNorm2d prepare could not fold)" if want else "")

    def check(ctx: Context) -> Verdict:
        if ctx.onnx is None:
            return Verdict(False, "there is no ONNX graph")
        bns = [n for n in ctx.onnx.graph.node if n.op_type == "BatchNormalization"]
        if not low <= len(bns) <= want:
            if keep:
                return Verdict(False, f"--keep-bn: the model has {want} BatchNorm2d but the graph has {len(bns)} "
                                      "BatchNormalization nodes")
            kept = (f"prepare kept {want if low == want else f'{low} to {want}'} BatchNorm2d that it could not fold "
                    "(see its record)" if want else "prepare fused every BatchNorm2d")
            return Verdict(False, f"BatchNorm fusion asked for: {kept}, but {len(bns)} BatchNormalization remain")
        wrong = [n.name for n in bns if next((a.i for a in n.attribute if a.name == "training_mode"), 0) != mode]
        if wrong:
            return Verdict(False, f"BatchNormalization {wrong[0]} has training_mode != {mode}")
        producers = {out: n for n in ctx.onnx.graph.node for out in n.output}
        fed = [n.name for n in bns for i in n.input[1:] if i in producers and producers[i].op_type == "Identity"]
        if fed:
            return Verdict(False, f"Identity node in front of BatchNormalization {fed[0]}")
        found = f"{len(bns)} BatchNormalization" if bns else "no BatchNormalization"
        if len(bns) == want:
            return Verdict(True, found)
        folded = want - len(bns)  # only with fusion: prepare kept these, the exporter's constant folding took them
        return Verdict(True, f"{found} (the exporter folded {folded} of the {want} BatchNorm2d prepare could not fold)",
                       f"BatchNorm fusion: the exporter folded {folded} BatchNorm2d that prepare left (Conv+BN "
                       f"constant folding); {len(bns) or 'none'} remain in the graph")

    return Condition(name, check)


# ------------------------------------------------------------------------------------------ stage


def example_inputs(specs: tuple[InputSpec, ...], seed: int, device: torch.device | str = "cpu") -> \
        torch.Tensor | tuple[torch.Tensor, ...]:
    """Seeded example tensors for ``--input-shape``: synthetic images for Bx3xHxW float inputs, uniform
    [0, 1) for other float inputs, integers in [0, high) and booleans otherwise. One spec gives one
    tensor; several give a tuple (the forward's positional arguments)."""
    import torch

    from exporter.models.weights import synthetic_images

    out = []
    gen = torch.Generator().manual_seed(seed)
    for s in specs:
        if s.is_image:
            t = synthetic_images(s.shape[0], (s.shape[2], s.shape[3]), seed)
        elif s.is_float:
            t = torch.rand(s.shape, generator=gen)
        elif s.dtype == "bool":
            t = torch.randint(0, 2, s.shape, generator=gen).bool()
        else:
            t = torch.randint(0, s.high, s.shape, generator=gen)
        out.append(t.to(device=device, dtype=getattr(torch, s.dtype)))
    return out[0] if len(out) == 1 else tuple(out)



def prepare(ctx: Context) -> Context:
    from torch import nn

    from exporter.models.common import Detect
    from exporter.models.detection import network_part, post_processing
    from exporter.models.weights import synthetic_images

    o = ctx.options
    from exporter.models.common import model_strides

    strides = model_strides(ctx.source.model)
    smax = max(strides or [32])
    if strides and o.input_shapes:
        raise ConfigError("--input-shape is for models other than YOLO; give a YOLO model's size with --img")
    if not o.input_shapes and (o.img[0] % smax or o.img[1] % smax):
        raise ConfigError(f"--img {o.img[0]},{o.img[1]}: this model's largest stride is {smax}; "
                          f"use sizes that are multiples of {smax}")
    dev = resolve_device(o.device)
    model = deepcopy(ctx.source.model).to(dev).float()
    changes = []
    post = post_processing(model)
    if post and o.head == "raw":
        model = cast("nn.Module", network_part(model))
        changes.append(str(model.part))
    det = getattr(model, "model", [None])[-1] if hasattr(model, "model") else None
    if isinstance(det, Detect):
        det.output = o.head
        det.int_shapes = o.use_int_shapes
        changes.append(f"Detect output={o.head}" + (", int shapes (sizes baked, batch -1)" if o.use_int_shapes else ""))
    if o.training:
        model.train()
        changes.append("train mode (BatchNorm uses batch statistics)")
    else:
        model.eval()

    def n_bn() -> int:
        return sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))

    fold = BatchNormFold()
    if o.fuse_bn:
        n = n_bn()
        fuse = getattr(model, "fuse", None)  # YOLOv5's Model.fuse: every Conv's BatchNorm
        if callable(fuse):
            fuse()
        fused = n - n_bn()
        fold = fold_leftover_batchnorms(model)
        changes.append(f"fused {fused + fold.folded} Conv+BN pairs" if n else "no BatchNorm2d to fuse")
        if fold.sliced:
            changes.append(f"folded {fold.sliced} BatchNorm2d after a Concat of convs into those convs (by slices)")
        if fold.kept:
            changes.append(f"kept {len(fold.kept)} BatchNorm2d not foldable here: {', '.join(fold.kept[:3])}"
                           + (f" and {len(fold.kept) - 3} more" if len(fold.kept) > 3 else ""))
    # The parameters keep requires_grad: frozen parameters (or no_grad) send nn.MultiheadAttention and
    # TransformerEncoderLayer down their fused fast path (aten::_native_multi_head_attention), which no
    # ONNX exporter translates; capture also turns that fast path off explicitly.
    h, w = o.img
    specs = o.example_inputs
    if o.dynamic and not isinstance(det, Detect) and any(sp.shape[0] == 1 for sp in specs):
        # torch.export specializes a dimension of size 1 (and tidy's rewrites then bake it): a model other
        # than YOLOv5 is captured at batch 2 when the batch is dynamic; parity still checks batch 1
        specs = tuple(InputSpec((2, *sp.shape[1:]), sp.dtype, sp.high) if sp.shape[0] == 1 else sp for sp in specs)
        changes.append("example at batch 2 (a batch of 1 would be specialized by the exporter)")
    example = example_inputs(specs, o.seed, dev) if specs != o.example_inputs or o.input_shapes else \
        synthetic_images(o.batch, (h, w), o.seed).to(dev)
    ctx = ctx.replace(model=model, example=example, change="; ".join(changes) or "copied").promise(
        batchnorm_promise(n_bn() - fold.uncalled, fold.unseen, keep=o.bn_kept, training=o.training))
    if fold.kept:
        ctx = ctx.note(f"BatchNorm fusion: prepare could not fold {len(fold.kept)} BatchNorm2d into a conv (its "
                       "record says why each); "
                       + (f"the exporter may still fold {fold.unseen} whose input prepare could not see, the "
                          "others stay as BatchNormalization(training_mode=0) (the checker's record says how many "
                          "remain)" if fold.unseen else "they stay as BatchNormalization(training_mode=0) in the graph"))
    if o.use_int_shapes and o.dynamic == "batch" and isinstance(det, Detect):  # int shapes are Detect's
        ctx = ctx.note(f"int shapes: feature-map sizes for {h}x{w} are constants in the graph; the batch stays "
                       "dynamic (--no-int-shapes keeps the traced shape arithmetic)")
    if post and o.head != "raw":
        ctx = ctx.note(f"the model ends in data-dependent post-processing, {post}: exported whole, the trace "
                       "bakes in the example's branches or the capture fails; --raw-head exports the network "
                       "up to it (the head's raw outputs)")
    if o.training:
        ctx = ctx.note("training mode: BatchNormalization uses batch statistics (training_mode=1); this is not "
                       "an inference graph, and its outputs depend on the whole batch")
    return ctx


STAGE = Stage("prepare", prepare, ensures=(PREPARED,), numerics=lambda o: "Conv+BN folded into the convs: fp32 "
              "reassociation, ~1e-7 relative per layer" if o.fuse_bn else "none (BatchNorm kept)")
