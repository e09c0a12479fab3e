"""Conv + BatchNorm fusion: w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta."""

from __future__ import annotations

import torch
from torch import nn


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` in eval mode. Inputs are not modified."""
    # built on the meta device: a Conv2d's own initialisation (random weights, drawn from torch's global
    # generator) would be thrown away at once; it was most of the time of fusing a model
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=True,
        device="meta",
    )
    with torch.no_grad():
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale.view(-1, 1, 1, 1)
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (b - bn.running_mean) * scale + bn.bias
    fused.weight = nn.Parameter(w.to(conv.weight), requires_grad=False)  # the conv's dtype and device
    fused.bias = nn.Parameter(bias.to(conv.weight), requires_grad=False)
    return fused
