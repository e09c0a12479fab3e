"""Model summary: layers, parameters, gradients, GFLOPs (two ways), strides, anchors, output shapes."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn

from exporter.models.common import Conv, Detect


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Exact FLOPs of one forward pass at ``shape`` (torch.utils.flop_counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(shape, device=p.device, dtype=p.dtype))
    return int(fc.get_total_flops())


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


def summarize(model: nn.Module, img: tuple[int, int] = (640, 640), exact: bool = True) -> dict[str, Any]:
    """The ``yexport info`` figures. GFLOPs: the reference method (a stride-sized input, scaled by
    ``(img / stride)^2``) and, with ``exact``, a full-size count."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conv_bn = [m for m in model.modules() if isinstance(m, Conv) and hasattr(m, "bn")]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # fusing a Conv's BN removes gamma and beta (2C) and adds a conv bias (C)
    params_fused = params - sum(m.bn.num_features for m in conv_bn)
    stride = getattr(model, "stride", None)
    smax = max(int(stride.max()), 32) if stride is not None else 32
    model = deepcopy(model).eval()
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
    out["layer_rows"] = layer_rows(model)
    return out
