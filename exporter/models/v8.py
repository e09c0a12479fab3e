"""YOLOv8 and YOLO11 detection models (the Ultralytics anchor-free family), built from their YAML.

Module and attribute names follow the published architecture, so the state_dict keys of a checkpoint
saved by Ultralytics load unchanged (``model.2.cv1.conv.weight``, ``model.22.dfl.conv.weight`` ...):

- ``Conv`` (Conv2d without bias + BatchNorm2d + SiLU; YOLOv5's), ``DWConv`` (a Conv with
  ``gcd(c1, c2)`` groups), ``Concat``, ``nn.Upsample``;
- ``Bottleneck(c1, c2, shortcut, g, k=(3, 3), e=0.5)``: two convs with kernels ``k``, residual add when
  ``shortcut`` and ``c1 == c2``;
- ``C2f``: ``cv1`` to ``2c`` channels, split in two halves, ``n`` Bottlenecks chained on the second half,
  every intermediate concatenated (``(2 + n) c`` channels) into ``cv2``;
- ``C3k2``: a C2f whose inner blocks are Bottlenecks, or ``C3k`` (a C3 with ``k x k`` Bottlenecks) when
  ``c3k``; the YAML's ``m``/``l``/``x`` scales force ``c3k``;
- ``SPPF``: one 5x5 max-pool applied three times in sequence, the four maps concatenated;
- ``C2PSA``: ``cv1`` split in two halves, ``PSABlock``s (multi-head attention over the pixels with a
  depth-wise positional conv, then a 2x feed-forward of convs, both residual) on the second half, ``cv2``;
- ``Detect``: per level a box branch (two 3x3 Convs and a 1x1 conv to ``4 * reg_max`` channels) and a
  class branch (v8: two 3x3 Convs; YOLO11: depth-wise + point-wise pairs) to ``nc``; the box
  distributions are reduced by ``DFL`` (softmax over ``reg_max`` bins, expectation by a fixed 1x1 conv),
  decoded around cell-centre anchors to ``xywh`` in pixels, and concatenated with the class
  sigmoids: the export output ``(bs, 4 + nc, N)``.

The config scales depth and width as Ultralytics does: ``scales: {n: [depth, width, max_channels]}``
with the chosen ``scale`` (a checkpoint stores it), ``n -> max(round(n * depth), 1)`` for ``n > 1``,
output channels ``make_divisible(min(c2, max_channels) * width, 8)``.

The file is a little over 400 lines on purpose: the blocks are not split from the config parser into
a module of their own because a class's module path is part of what dynamo writes into the file (each
node's ``pkg.torch.onnx.class_hierarchy``: ``exporter.models.v8.C2f``), so moving them would change
the exported files.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any, cast

import torch
from torch import nn

from exporter.errors import ModelError
from exporter.models.common import Concat, Conv
from exporter.models.yolo import LayeredModel, make_divisible

__all__ = ["C2PSA", "C3k2", "DFL", "SPPF", "Bottleneck", "C2f", "C3k", "Detect", "DetectionModel",
           "is_ultralytics_config"]


class DWConv(Conv):
    """Depth-wise convolution: a Conv with ``gcd(c1, c2)`` groups."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class Bottleneck(nn.Module):
    """Two convs with kernels ``k`` (hidden ``int(c2 * e)``); residual add when ``shortcut`` and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple[int, int] = (3, 3),
                 e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two halves: every block output of the second half is kept and concatenated."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), 1)  # one Split in the graph
        ys = [a, b]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class C3(nn.Module):
    """YOLOv5's CSP block with the Bottleneck kernels as given (the base of C3k)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(1, 3), e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(C3):
    """A C3 whose Bottlenecks have ``k x k`` kernels in both convs."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5, k: int = 3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))


class C3k2(C2f):
    """YOLO11's C2f: its inner blocks are Bottlenecks (hidden c/2), or C3k blocks when ``c3k``."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, attn: bool = False,
                 g: int = 1, shortcut: bool = True):
        super().__init__(c1, c2, n, shortcut, g, e)
        if attn:
            raise ModelError("C3k2 with attention (a YOLO26 block) is not supported")
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut, g) if c3k else Bottleneck(self.c, self.c, shortcut, g)
                               for _ in range(n))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: one ``k x k`` max-pool applied ``n`` times, all maps concatenated.
    (``cv1_act``: whether ``cv1`` has its SiLU, as in every released YOLOv8/YOLO11 checkpoint; a
    checkpoint's own activations are applied when it is loaded.)"""

    def __init__(self, c1: int, c2: int, k: int = 5, n: int = 3, shortcut: bool = False, cv1_act: bool = True):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1, act=cv1_act)
        self.cv2 = Conv(c_ * (n + 1), c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.n = n
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(self.n):
            ys.append(self.m(ys[-1]))
        y = self.cv2(torch.cat(ys, 1))
        return y + x if self.add else y


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, from one 1x1 qkv conv; a depth-wise 3x3 conv of the
    values is added as positional encoding, then a 1x1 projection."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        per_head = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = per_head.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        weights = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (b, heads, hw, hw)
        out = (v @ weights.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """Attention then a 2x feed-forward of 1x1 convs, each residual when ``shortcut``."""

    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4, shortcut: bool = True):
        super().__init__()
        self.attn = Attention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(Conv(c, c * 2, 1), Conv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x) if self.add else self.attn(x)
        return x + self.ffn(x) if self.add else self.ffn(x)


class C2PSA(nn.Module):
    """``cv1`` split in two halves; PSABlocks on the second; both concatenated into ``cv2``."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5):
        super().__init__()
        if c1 != c2:
            raise ModelError(f"C2PSA needs equal input and output channels (got {c1} and {c2})")
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=max(self.c // 64, 1)) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``c1`` bins per box side, then the expected bin
    (a fixed 1x1 conv with weights 0..c1-1)."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def cell_anchors(feats: list[torch.Tensor], strides: torch.Tensor, offset: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre anchor points ``(2, N)`` in grid units and their strides ``(1, N)``, level by level."""
    points, steps = [], []
    for i, f in enumerate(feats):
        h, w = f.shape[2:]
        sx = torch.arange(w, dtype=f.dtype) + offset
        sy = torch.arange(h, dtype=f.dtype) + offset
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        steps.append(strides[i].to(f.dtype).expand(h * w, 1))  # a tensor op: no Python float in the trace
    return torch.cat(points).transpose(0, 1), torch.cat(steps).transpose(0, 1)


def ltrb_to_xywh(distance: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Distances (left, top, right, bottom) from the anchors, along dim 1, to centre x, y, width, height."""
    lt, rb = distance.chunk(2, 1)
    x1y1, x2y2 = anchors - lt, anchors + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1)


def _head_bias(branch: nn.Module) -> torch.Tensor:
    """The bias of a Detect branch's final 1x1 conv (the branch is an ``nn.Sequential`` ending in an
    ``nn.Conv2d`` built with a bias)."""
    bias = cast(nn.Conv2d, cast(nn.Sequential, branch)[-1]).bias
    assert bias is not None
    return bias


class Detect(nn.Module):
    """Anchor-free detection head. In eval mode it returns the decoded ``(bs, 4 + nc, N)``: boxes as
    ``xywh`` pixels, then class probabilities; in train mode the per-level raw maps."""

    legacy = True  # v8's class branch; YOLO11 (legacy=False) uses depth-wise + point-wise pairs
    stride: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, nc: int = 80, reg_max: int = 16, end2end: bool = False, ch: tuple[int, ...] | list[int] = (),
                 legacy: bool = True):
        super().__init__()
        if end2end:
            raise ModelError("an end-to-end (NMS-free, one-to-one) Detect head is not supported")
        self.nc, self.nl, self.reg_max = nc, len(ch), reg_max
        self.no = nc + 4 * reg_max
        self.legacy = legacy
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        else:
            self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(DWConv(x, x, 3), Conv(x, c3, 1)),
                                                   nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                                                   nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if self.training:
            return [torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1) for i in range(self.nl)]
        bs = x[0].shape[0]
        boxes = torch.cat([self.cv2[i](x[i]).view(bs, 4 * self.reg_max, -1) for i in range(self.nl)], -1)
        scores = torch.cat([self.cv3[i](x[i]).view(bs, self.nc, -1) for i in range(self.nl)], -1)
        anchors, strides = cell_anchors(x, self.stride)
        xywh = ltrb_to_xywh(self.dfl(boxes), anchors.unsqueeze(0)) * strides
        return torch.cat((xywh, scores.sigmoid()), 1)

    def bias_init(self) -> None:
        """Box biases 2.0; class biases for about 0.01 objects per cell at 640 (needs the strides)."""
        with torch.no_grad():
            for a, b, s in zip(self.cv2, self.cv3, self.stride.tolist(), strict=True):
                _head_bias(a).fill_(2.0)
                _head_bias(b)[: self.nc].fill_(math.log(5 / self.nc / (640 / s) ** 2))


MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv, "DWConv": DWConv, "Bottleneck": Bottleneck, "C2f": C2f, "C3": C3, "C3k2": C3k2, "SPPF": SPPF,
    "C2PSA": C2PSA, "Concat": Concat, "Detect": Detect, "nn.Upsample": nn.Upsample,
}
_SCALED = {Conv, DWConv, Bottleneck, SPPF, C2f, C3, C3k2, C2PSA}  # output channels scale with width
_REPEATED = {C2f, C3, C3k2, C2PSA}  # ``n`` is their argument, not a number of copies


def is_ultralytics_config(cfg: Any) -> bool:
    """A YOLOv8/YOLO11 config: a ``scales`` table, or a Detect without YOLOv5's ``anchors``."""
    if not isinstance(cfg, dict):
        return False
    if "scales" in cfg:
        return True
    head = cfg.get("head")
    last = head[-1] if isinstance(head, list) and head else None
    return "anchors" not in cfg and isinstance(last, list) and len(last) == 4 and last[2] == "Detect"


def _scale(d: dict[str, Any]) -> tuple[str, float, float, float]:
    scales = d.get("scales")
    if not scales:
        return "", float(d.get("depth_multiple", 1.0)), float(d.get("width_multiple", 1.0)), float("inf")
    if not isinstance(scales, dict):
        raise ModelError("'scales' must map a scale letter to [depth, width, max_channels]")
    scale = d.get("scale") or next(iter(scales))
    if scale not in scales:
        raise ModelError(f"scale {scale!r} is not in the config's scales ({', '.join(map(str, scales))})")
    try:
        depth, width, max_channels = (float(v) for v in scales[scale])
    except (TypeError, ValueError):
        raise ModelError(f"scales[{scale!r}] must be [depth, width, max_channels]") from None
    return str(scale), depth, width, max_channels


def _arg(a: Any, nc: int) -> Any:
    if a == "nc":
        return nc
    if a == "None":
        return None
    if a in ("True", "False"):
        return a == "True"
    return a


def parse_model(d: dict[str, Any], ch: int) -> tuple[nn.Sequential, list[int]]:
    """The layers of config ``d`` (see the module doc) and the indices whose outputs later layers read."""
    scale, depth, width, max_channels = _scale(d)
    nc = int(d["nc"])
    chs: list[int] = [ch]
    layers: list[nn.Module] = []
    save: list[int] = []
    legacy = True
    rows = list(d.get("backbone") or []) + list(d.get("head") or [])
    if not rows:
        raise ModelError("the config has no 'backbone'/'head' layers")
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4):
            raise ModelError(f"layer {i}: expected [from, number, module, args], got {row!r}")
        f, n, name, args = row
        if name not in MODULES:
            raise ModelError(f"layer {i}: module {name!r} is not one yexport can build for YOLOv8/YOLO11 "
                             f"(known: {', '.join(sorted(MODULES))})")
        m = MODULES[name]
        args = [_arg(a, nc) for a in (args or [])]
        n = max(round(n * depth), 1) if n > 1 else n
        prev = (lambda j: chs[j + 1] if j >= 0 else chs[j])  # noqa: E731 - index into the channel list
        if m in _SCALED:
            c1, c2 = prev(f), args[0]
            c2 = make_divisible(min(c2, max_channels) * width, 8)
            args = [c1, c2, *args[1:]]
            if m in _REPEATED:
                args.insert(2, n)
                n = 1
            if m is C3k2:
                legacy = False
                if scale in ("m", "l", "x"):
                    args[3:4] = [True]
        elif m is Concat:
            c2 = sum(prev(x) for x in f)
        elif m is Detect:
            args = [args[0] if args else nc, int(d.get("reg_max", 16)), bool(d.get("end2end", False)),
                    [prev(x) for x in f], legacy]
            c2 = 0
        else:
            c2 = prev(f)
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f, module.type = i, f, name  # type: ignore[assignment]
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        chs.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


class DetectionModel(LayeredModel):
    """A YOLOv8/YOLO11 detector built from its config dict; ``forward`` in eval mode gives the decoded
    ``(bs, 4 + nc, N)`` that Ultralytics exports."""

    def __init__(self, cfg: dict[str, Any], ch: int = 3, nc: int | None = None):
        super().__init__()
        self.yaml = deepcopy(cfg)
        if nc is not None and nc != self.yaml.get("nc"):
            self.yaml["nc"] = nc
        if "nc" not in self.yaml:
            raise ModelError("config has no 'nc' key")
        try:
            self.model, self.save = parse_model(deepcopy(self.yaml), ch)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ModelError(f"the config cannot be built: {type(exc).__name__}: {exc}") from None
        self.nc = int(self.yaml["nc"])
        self.names = [str(i) for i in range(self.nc)]
        det = self.model[-1]
        if not isinstance(det, Detect):
            raise ModelError("the last layer must be Detect")
        feats = self._probe(ch)
        det.stride = torch.tensor([256 / f.shape[-2] for f in feats])
        self.stride = det.stride
        det.bias_init()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def _probe(self, ch: int) -> list[torch.Tensor]:
        det = self.model[-1]
        was = self.training
        self.train()
        try:
            with torch.no_grad():
                out = self.forward(torch.zeros(1, ch, 256, 256))
        finally:
            self.train(was)
        if not isinstance(out, list) or len(out) != det.nl:
            raise ModelError("Detect did not receive one feature map per level")
        return out

    @property
    def detect(self) -> Detect:
        return self.model[-1]  # type: ignore[return-value]

    @property
    def generation(self) -> str:
        """'yolo11' when the config uses C3k2/C2PSA, else 'yolov8'."""
        return "yolo11" if any(isinstance(m, (C3k2, C2PSA)) for m in self.model) else "yolov8"
