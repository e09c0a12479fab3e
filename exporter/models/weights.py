"""Deterministic, realistic weights for built models, so fusion and parity checks mean something.

With default BatchNorm statistics (mean 0, var 1, gamma 1, beta 0) fused and unfused graphs agree
trivially. ``calibrate`` gives every BatchNorm non-trivial affine parameters and real running
statistics, measured by train-mode forward passes over seeded synthetic images.
"""

from __future__ import annotations

import torch
from torch import nn


def synthetic_images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Seeded images in [0, 1] with structure at several scales (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.zeros(n, 3, h, w)
    for cells in (2, 8, 32):
        coarse = torch.rand(n, 3, cells, cells, generator=g)
        img += nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) / 3
    return img.clamp_(0, 1)


@torch.no_grad()
def calibrate(model: nn.Module, seed: int = 0, steps: int = 3, batch: int = 2, size: int = 256) -> nn.Module:
    """Give ``model`` seeded BatchNorm affine parameters and running statistics; returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)  # gamma in [0.5, 1.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration passes
    model.train()
    for step in range(steps):
        model(synthetic_images(batch, (size, size), seed * 1000 + step))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()
