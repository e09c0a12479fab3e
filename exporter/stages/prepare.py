"""prepare: a private copy of the model, set up as the options say (the caller's model is never touched)."""

from __future__ import annotations

from copy import deepcopy

from exporter.errors import ConfigError
from exporter.pipeline import Context


def resolve_device(name: str):
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


def prepare(ctx: Context) -> Context:
    from torch import nn

    from exporter.models.common import Detect
    from exporter.models.weights import synthetic_images

    o = ctx.options
    stride = getattr(ctx.source.model, "stride", None)
    smax = int(stride.max()) if stride is not None else 32
    if o.img[0] % smax or o.img[1] % smax:
        raise ConfigError(f"--img {o.img[0]},{o.img[1]}: this model's largest stride is {smax}; "
                          f"use sizes that are multiples of {smax}")
    dev = resolve_device(o.device)
    model = deepcopy(ctx.source.model).to(dev).float()
    changes = []
    det = getattr(model, "model", [None])[-1] if hasattr(model, "model") else None
    if isinstance(det, Detect):
        det.output = o.head
        # a static export bakes every size anyway; reading them as ints keeps shape arithmetic out of the trace
        det.int_shapes = o.int_shapes or o.dynamic is None
        changes.append(f"Detect output={o.head}" + (", int shapes (sizes baked, batch -1)" if o.int_shapes else ""))
    if o.training:
        model.train()
        changes.append("train mode (BatchNorm uses batch statistics)")
    else:
        model.eval()
    if o.fuse_bn:
        n = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        if hasattr(model, "fuse"):
            model.fuse()
        left = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        changes.append(f"fused {n - left} Conv+BN pairs" + (f" ({left} BatchNorm2d not after a Conv kept)" if left else ""))
    for p in model.parameters():
        p.requires_grad_(False)
    h, w = o.img
    example = synthetic_images(o.batch, (h, w), o.seed).to(dev)
    ctx = ctx.replace(model=model, example=example, change="; ".join(changes) or "copied")
    if o.int_shapes:
        ctx = ctx.note(f"int shapes: feature-map sizes for {h}x{w} are constants in the graph; the file is "
                       "valid only at that size" + (" (batch stays dynamic)" if o.dynamic == "batch" else ""))
    if o.training:
        ctx = ctx.note("training mode: BatchNormalization uses batch statistics (training_mode=1); this is not "
                       "an inference graph, and its outputs depend on the whole batch")
    return ctx
