"""Deterministic, realistic weights for built models, so fusion and parity checks mean something.

With default BatchNorm statistics (mean 0, var 1, gamma 1, beta 0) fused and unfused graphs agree
trivially. ``calibrate`` gives every BatchNorm non-trivial affine parameters and real running
statistics, measured by train-mode forward passes over seeded synthetic images.
"""

from __future__ import annotations

import torch
from torch import nn

# Bumped whenever ``calibrate`` changes what it gives: a cache of built-in weights keys on it.
CALIBRATION_VERSION = 2


def synthetic_images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Seeded images in [0, 1] with structure at several scales (not white noise), each with a
    photo-like level and contrast (per-channel mean 0.45, std 0.22), so that images differ in
    content rather than in global colour."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.zeros(n, 3, h, w)
    for cells in (2, 8, 32):
        coarse = torch.rand(n, 3, cells, cells, generator=g)
        img += nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    flat = img.flatten(2)
    img = (img - flat.mean(2)[..., None, None]) / (flat.std(2)[..., None, None] + 1e-6)
    return (img * 0.22 + 0.45).clamp_(0, 1)


@torch.no_grad()
def calibrate(model: nn.Module, seed: int = 0, batch: int = 16, size: int = 256) -> nn.Module:
    """Give ``model`` seeded BatchNorm affine parameters and running statistics; returns it in eval mode.

    The statistics are measured in one eval-mode forward pass over seeded synthetic images: just
    before each BatchNorm runs, its running mean and variance are set to those of its actual input.
    Every layer then sees inputs normalised by the statistics the eval model really uses (train-mode
    passes over small batches underestimate the variance between images, and the error compounds
    with depth), so activations stay at the O(1) scale of a trained network.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def set_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].transpose(0, 1).flatten(1)
        bn.running_mean.copy_(x.mean(1))  # type: ignore[operator]
        bn.running_var.copy_(x.var(1, unbiased=False))  # type: ignore[operator]

    for bn in bns:
        # gamma in [0.5, 1.5), spread around 1 as trained detectors' are. Gammas above 1 make a random
        # network amplify fp32 rounding more; the parity check measures that noise floor instead of
        # assuming it away, so the weights are not chosen to keep any tolerance green.
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.num_batches_tracked.zero_()  # type: ignore[union-attr]
    hooks = [bn.register_forward_pre_hook(set_stats) for bn in bns]
    try:
        model.eval()
        model(synthetic_images(batch, (size, size), seed))
    finally:
        for h in hooks:
            h.remove()
    return model
