"""Conv + BatchNorm folding (exporter.models.fuse)."""

from __future__ import annotations

import torch
from torch import nn

from exporter.models.fuse import fuse_conv_bn


def _pair(dtype: torch.dtype, bias: bool) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias).to(dtype)
    bn = nn.BatchNorm2d(6).to(dtype).eval()
    with torch.no_grad():
        for t in (conv.weight, bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=gen, dtype=dtype))
        bn.running_var.copy_(torch.rand(6, generator=gen, dtype=dtype) + 0.5)
    return conv, bn


def test_the_folded_conv_computes_bn_of_conv_and_leaves_its_inputs_alone() -> None:
    for bias in (False, True):
        conv, bn = _pair(torch.float64, bias)
        before = {k: v.clone() for k, v in [*conv.state_dict().items(), *bn.state_dict().items()]}
        fused = fuse_conv_bn(conv, bn)
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.allclose(fused(x), bn(conv(x)), rtol=1e-12, atol=1e-12)
        after = {k: v for k, v in [*conv.state_dict().items(), *bn.state_dict().items()]}
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert fused.weight.dtype == torch.float64 and fused.weight.device == conv.weight.device
        assert fused.bias is not None and not fused.weight.requires_grad and not fused.bias.requires_grad
        assert (fused.stride, fused.padding, fused.groups) == (conv.stride, conv.padding, conv.groups)


def test_folding_draws_nothing_from_torchs_global_generator() -> None:
    """The folded conv is built without an initialisation of its own: the random stream that seeded
    code after a fusion sees is the one it would see without it."""
    conv, bn = _pair(torch.float32, False)
    torch.manual_seed(123)
    fuse_conv_bn(conv, bn)
    after_fusion = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(4), after_fusion)
