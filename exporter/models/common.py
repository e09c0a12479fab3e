"""YOLOv5 building blocks. Module and attribute names match the official implementation, so
state_dict keys of official checkpoints load unchanged (``model.2.cv1.conv.weight`` ...)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _deliberate_constant() -> Iterator[None]:
    """The tracer warns whenever a tensor becomes a Python number. Detect does that on purpose in two
    places (int shapes: sizes baked by choice; its stride buffer: a constant of the model), so those
    warnings are not news; any other TracerWarning of a capture is recorded and shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def model_strides(model: nn.Module) -> list[int] | None:
    """A YOLO model's strides (``model.stride``, a tensor set when it is built), or None for any other
    module (an ``nn.Conv2d`` has a ``stride`` tuple of its own, which is not a model stride)."""
    stride = getattr(model, "stride", None)
    return [int(s) for s in stride.tolist()] if isinstance(stride, torch.Tensor) else None


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for an odd kernel."""
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU. After fusion ``bn`` is gone and ``conv`` has a bias."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x)


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv; residual add only when ``shortcut`` and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class BottleneckCSP(nn.Module):
    """CSP Bottleneck (https://github.com/WongKinYiu/CrossStagePartialNetworks)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)  # applied to cat(cv2, cv3)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP Bottleneck with 3 convolutions: cv1 -> n Bottlenecks, cv2 in parallel, concat, cv3."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: max-pools 5/9/13 concatenated."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] | list[int] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """SPP-Fast: one k x k max-pool applied three times in sequence (same result as SPP(5, 9, 13))."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth of 4 pixel slices, then Conv (the v5.0 stem)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(
            torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
        )


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """Detection head: one 1x1 conv with bias per level, ``na * (nc + 5)`` channels, reshaped to
    ``(bs, na, ny, nx, nc + 5)``.

    ``output`` picks what forward returns: ``"raw"`` the per-level maps, ``"decode"`` the decoded
    ``(bs, N, nc + 5)`` tensor (xywh in pixels, sigmoid scores), ``"auto"`` the official behaviour
    (raw maps in training, ``(decoded, maps)`` in eval). ``int_shapes`` reads map sizes as Python
    ints and uses -1 for the batch, so an exported graph has no Shape/Gather chain (sizes baked in).
    """

    stride: torch.Tensor | None = None
    anchors: torch.Tensor  # (nl, na, 2) in stride units; a buffer

    def __init__(self, nc: int = 80, anchors: list[list[float]] | tuple = (), ch: list[int] | tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.output = "auto"
        self.int_shapes = False

    def forward(self, x: list[torch.Tensor]):
        decode = self.output == "decode" or (self.output == "auto" and not self.training)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            if self.int_shapes:
                with _deliberate_constant():
                    _, _, ny, nx = map(int, x[i].shape)
                bs = -1
            else:
                bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if decode:
                grid, anchor_grid = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                # (2 xy + grid) * stride and (2 wh)^2 * anchor, rearranged so constants fold; strides
                # are powers of two, so the products round exactly as the textbook form does
                s = self._stride(i)
                xy = xy * (2 * s) + grid * s
                wh = wh * wh * (4 * anchor_grid)
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.output == "raw" or not decode:
            return x
        if self.output == "decode":
            return torch.cat(z, 1)
        return torch.cat(z, 1), x

    def _stride(self, i: int) -> float:
        # a Python float, so tracing and torch.export see a constant rather than a tensor read
        assert self.stride is not None, "Detect.stride is set when the model is built"
        with _deliberate_constant():
            return float(self.stride.tolist()[i])

    def _make_grid(self, nx, ny, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (1, 1, ny, nx, 2) and anchor sizes in pixels (1, na, 1, 1, 2); both broadcast."""
        d, t = self.anchors.device, self.anchors.dtype
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
        anchor_grid = (self.anchors[i] * self._stride(i)).view(1, self.na, 1, 1, 2)
        return grid, anchor_grid

    def initialize_biases(self) -> None:
        """Objectness and class priors (https://arxiv.org/abs/1708.02002 section 3.3)."""
        assert self.stride is not None
        for mi, s in zip(self.m, self.stride, strict=True):
            assert isinstance(mi, nn.Conv2d) and mi.bias is not None
            b = mi.bias.view(self.na, -1)
            b.data[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            b.data[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)


# The names a YAML config may use, and nothing else: no eval() of config strings.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Focus": Focus,
    "Bottleneck": Bottleneck,
    "BottleneckCSP": BottleneckCSP,
    "C3": C3,
    "SPP": SPP,
    "SPPF": SPPF,
    "Concat": Concat,
    "Detect": Detect,
    "nn.Upsample": nn.Upsample,
    "nn.BatchNorm2d": nn.BatchNorm2d,
    "nn.Conv2d": nn.Conv2d,
    "nn.MaxPool2d": nn.MaxPool2d,
    "nn.Identity": nn.Identity,
}
# channel-changing modules whose first arg is c2 (scaled by width_multiple)
CHANNEL_MODULES = (Conv, Focus, Bottleneck, BottleneckCSP, C3, SPP, SPPF)
REPEAT_MODULES = (BottleneckCSP, C3)  # take ``n`` as their third argument
