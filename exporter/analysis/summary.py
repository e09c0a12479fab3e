"""Model summary: layers, parameters, gradients, GFLOPs (two ways), strides, anchors, output shapes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from exporter.models.common import Conv, Detect

# Modules whose forward does no matrix arithmetic besides their own Conv2d/Linear children: for a
# model made only of these, hooks on Conv2d/Linear count what torch.utils.flop_counter counts, without
# the dispatch mode (which imports torch._dynamo: seconds on a first call).
_PLAIN = (nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Hardswish, nn.Sigmoid, nn.Identity, nn.MaxPool2d,
          nn.Upsample, nn.Sequential, nn.ModuleList, nn.Dropout)


def _hookable(model: nn.Module) -> bool:
    from exporter.models import common
    from exporter.models.yolo import Model

    ours = tuple(v for v in vars(common).values() if isinstance(v, type) and issubclass(v, nn.Module)
                 and v.__module__ == common.__name__)
    return all(type(m) in (nn.Conv2d, nn.Linear, *_PLAIN, Model, *ours) for m in model.modules())


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Exact FLOPs of one forward pass at ``shape`` as torch.utils.flop_counter counts them (2 per
    multiply-add of convolutions and matrix products). For models built of plain layers and yexport's
    YOLOv5 modules the Conv2d/Linear layers are counted by forward hooks, which gives the same figure."""
    p = next(model.parameters())
    x = torch.zeros(shape, device=p.device, dtype=p.dtype)
    if not _hookable(model):
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
        return int(fc.get_total_flops())
    total = [0]

    def conv(m: Any, _inp: Any, out: torch.Tensor) -> None:
        total[0] += 2 * out.numel() * m.weight[0].numel()  # (c_in / groups) * kh * kw per output element

    def linear(m: Any, _inp: Any, out: torch.Tensor) -> None:
        total[0] += 2 * out.numel() * int(m.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def shapes_of(x: Any) -> Any:
    """Shapes of a tensor or a nested list/tuple of tensors, as lists."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        return [shapes_of(t) for t in x]
    return None


def layer_rows(model: nn.Module) -> list[dict[str, Any]]:
    """One row per YAML layer: index, from, n, params, module, arguments."""
    rows = []
    for m in getattr(model, "model", []):
        args = [a for a in getattr(m, "args", []) if not isinstance(a, nn.Module)]
        if isinstance(m, Detect):
            args = [m.nc, m.anchors.shape[0] * [m.na], args[-1] if args else None]
        rows.append({"index": m.i, "from": m.f, "n": getattr(m, "n", 1), "params": sum(p.numel() for p in m.parameters()),
                     "module": m.type, "arguments": args})
    return rows


def output_shapes(model: nn.Module, img: tuple[int, int]) -> Any:
    """Output shapes of a YOLOv5 model at ``img`` worked out from its Detect layer (no forward), or None.

    Decoded: ``(1, sum(na * ny * nx), no)``; raw: ``(1, na, ny, nx, no)`` per level, with ``ny = h / stride``
    as the model computes it (each stride-2 step rounds up; a size that is a multiple of the largest
    stride divides exactly, and other sizes are left to ``--exact``)."""
    det = getattr(model, "detect", None)
    if not isinstance(det, Detect) or det.stride is None:
        return None
    strides = [int(s) for s in det.stride.tolist()]
    if any(img[0] % s or img[1] % s for s in strides):
        return None
    raw = [[1, det.na, img[0] // s, img[1] // s, det.no] for s in strides]
    decoded = [1, sum(r[1] * r[2] * r[3] for r in raw), det.no]
    out = getattr(det, "output", "decode")
    if out == "raw":
        return raw
    if out == "decode":
        return decoded
    return {"decoded": decoded, "raw": raw}


def summarize(model: nn.Module, img: tuple[int, int] = (640, 640), exact: bool = False) -> dict[str, Any]:
    """The ``yexport info`` figures. GFLOPs by the reference method (one forward at a stride-sized input,
    scaled by ``(img / stride)^2``); with ``exact``, also a full-size count (``gflops_exact``) and the
    output shapes from that forward. Without it the output shapes of a YOLOv5 model are worked out from
    its Detect layer. ``model`` is not changed (its train/eval mode is restored)."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conv_bn = [m for m in model.modules() if isinstance(m, Conv) and hasattr(m, "bn")]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # fusing a Conv's BN removes gamma and beta (2C) and adds a conv bias (C)
    params_fused = params - sum(m.bn.num_features for m in conv_bn)
    stride = getattr(model, "stride", None)
    smax = max(int(stride.max()), 32) if stride is not None else 32
    was_training = model.training
    model.eval()  # an eval forward under no_grad changes nothing in the model: no copy needed
    try:
        gflops_stride = count_flops(model, (1, 3, smax, smax)) / 1e9 * (img[0] / smax) * (img[1] / smax)
        out: dict[str, Any] = {
            "layers": len(list(model.modules())),
            "parameters": params,
            "gradients": grads,
            "parameters_fused": params_fused,
            "batchnorm_layers": len(bns),
            "img": list(img),
            "gflops": round(gflops_stride, 3),
            "gflops_method": f"stride-sized input {smax}x{smax} scaled by (img/stride)^2",
        }
        det = getattr(model, "detect", None)
        if isinstance(det, Detect) and det.stride is not None:
            out["strides"] = [int(s) for s in det.stride.tolist()]
            out["anchors"] = (det.anchors * det.stride.view(-1, 1, 1)).round().int().tolist()
            out["nc"] = det.nc
        if exact:
            from torch.utils.flop_counter import FlopCounterMode

            p = next(model.parameters())
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                y = model(torch.zeros((1, 3, *img), device=p.device, dtype=p.dtype))
            out["gflops_exact"] = round(fc.get_total_flops() / 1e9, 3)
            if isinstance(y, tuple) and len(y) == 2:
                out["outputs"] = {"decoded": shapes_of(y[0]), "raw": shapes_of(y[1])}
            else:
                out["outputs"] = shapes_of(y)
        else:
            shapes = output_shapes(model, img)
            if shapes is not None:
                out["outputs"] = shapes
        out["layer_rows"] = layer_rows(model)
    finally:
        model.train(was_training)
    return out
