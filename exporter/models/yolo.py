"""Build YOLOv5 models from YAML configs (v5.0 and v6.0+ generations, P5 and P6)."""

from __future__ import annotations

import inspect
import math
import reprlib
from copy import deepcopy
from typing import Any

import torch
from torch import nn

from exporter.errors import ModelError
from exporter.models.common import CHANNEL_MODULES, MODULES, REPEAT_MODULES, Concat, Conv, Detect

STRIDE_PROBE = 256  # strides are found by one forward pass of a zero 1x3x256x256 image
# Bounds on what a config may ask for, checked before anything is allocated. The largest official
# model (yolov5x6) has 141M parameters, 1280 channels, n <= 12 and 80 classes.
MAX_NC = 100_000
MAX_MULTIPLE = 16.0  # depth_multiple, width_multiple
MAX_LAYERS = 1000
MAX_REPEATS = 100  # 'number' after depth scaling
MAX_CHANNELS = 8192  # channels of any layer's output
MAX_PARAMS = 300_000_000
MAX_UPSAMPLE = 16


def make_divisible(x: float, divisor: int = 8) -> int:
    return math.ceil(x / divisor) * divisor


def _layer_name(i: int, n_backbone: int) -> str:
    return f"layer {i} (backbone[{i}])" if i < n_backbone else f"layer {i} (head[{i - n_backbone}])"


def parse_model(d: dict[str, Any], ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Turn a config dict into ``nn.Sequential`` layers plus the indices whose outputs are kept."""
    nc, anchors, gd, gw = _check_config(d)
    na = len(anchors[0]) // 2
    no = na * (nc + 5)
    rows = list(d["backbone"] or []) + list(d["head"] or [])
    n_backbone = len(d["backbone"] or [])
    total_params = 0
    names = {"nc": nc, "anchors": anchors, "None": None}
    layers: list[nn.Module] = []
    save: list[int] = []
    c2 = ch[-1]
    for i, row in enumerate(rows):
        where = _layer_name(i, n_backbone)
        if not isinstance(row, list) or len(row) != 4:
            raise ModelError(f"{where}: expected [from, number, module, args], got {_short(row)}")
        f, n, mname, args = row
        if not isinstance(mname, str) or mname not in MODULES:
            known = ", ".join(sorted(MODULES))
            raise ModelError(f"{where}: unknown module {_short(mname)} (known: {known})")
        m = MODULES[mname]
        if not isinstance(args, list):
            raise ModelError(f"{where}: args must be a list, got {_short(args)}")
        args = [names.get(a, a) if isinstance(a, str) else a for a in args]
        for src in [f] if isinstance(f, int) else (f if isinstance(f, list) else [None]):
            if not isinstance(src, int) or not (src == -1 or 0 <= src < i):
                raise ModelError(
                    f"{where}: bad 'from' {_short(f)}: each source must be -1 (previous layer) or the index of an "
                    f"earlier layer (0..{i - 1})"
                )
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ModelError(f"{where}: 'number' must be a positive integer, got {_short(n)}")
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        if n > MAX_REPEATS:
            raise ModelError(f"{where}: 'number' {row[1]} x depth_multiple {gd:g} = {n} repeats; at most {MAX_REPEATS}")
        if m in CHANNEL_MODULES:
            if not isinstance(f, int):
                raise ModelError(f"{where}: {mname} takes one input, 'from' must be one index")
            if not args or not isinstance(args[0], int) or isinstance(args[0], bool) or args[0] < 1:
                raise ModelError(f"{where}: {mname} needs output channels (a positive integer) as its first argument")
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in REPEAT_MODULES:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            if not isinstance(f, list):
                raise ModelError(f"{where}: Concat needs a list of sources in 'from'")
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            if not isinstance(f, list):
                raise ModelError(f"{where}: Detect needs a list of sources in 'from', one per level")
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):
                args[1] = [list(range(args[1] * 2))] * len(f)
            if len(args[1]) != len(f):
                raise ModelError(f"{where}: Detect has {len(f)} inputs but {len(args[1])} anchor levels")
        else:
            c2 = ch[f] if isinstance(f, int) else ch[f[0]]
            if m is nn.Upsample:
                _check_upsample(args, where)
        if c2 > MAX_CHANNELS:
            raise ModelError(f"{where}: {c2} output channels; at most {MAX_CHANNELS}")
        try:
            inspect.signature(m).bind(*args)
            total_params += _meta_params(m, args, n)  # counted without allocating
            if total_params > MAX_PARAMS:
                raise ModelError(f"{where}: the model would have over {total_params:,} parameters; "
                                 f"at most {MAX_PARAMS:,}")
            m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        except TypeError as exc:
            raise ModelError(f"{where}: wrong arguments for {mname}: {_cut(str(exc))}") from None
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            raise ModelError(f"{where}: cannot build {mname}{_short(tuple(args))}: {_cut(str(exc))}") from None
        m_.i, m_.f, m_.type, m_.np = i, f, mname, sum(p.numel() for p in m_.parameters())  # type: ignore[assignment]
        m_.args, m_.n = args, n_  # type: ignore[assignment]
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    if not layers or not isinstance(layers[-1], Detect):
        raise ModelError("the last layer of the head must be Detect")
    return nn.Sequential(*layers), sorted(set(save))


def _short(v: Any, limit: int = 60) -> str:
    """``repr`` of a config value, cut short (a crafted value must not print for pages)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 40, 40
    return _cut(r.repr(v), limit)


def _cut(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(d: dict[str, Any], key: str) -> float:
    v = d.get(key, 1.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= MAX_MULTIPLE:
        raise ModelError(f"'{key}' must be a number above 0 and at most {MAX_MULTIPLE:g} (multiples are numbers like 0.33), "
                         f"got {_short(v)}")
    return float(v)


def _check_config(d: dict[str, Any]) -> tuple[int, list, float, float]:
    """The top-level keys of a config, checked: ``(nc, anchors, depth_multiple, width_multiple)``."""
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in d:
            raise ModelError(f"config has no '{key}' key (a YOLOv5 config needs nc, anchors, backbone, head)")
    nc = d["nc"]
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= MAX_NC:
        raise ModelError(f"'nc' (the number of classes) must be an integer from 1 to {MAX_NC:,}, got {_short(nc)}")
    gd, gw = _number(d, "depth_multiple"), _number(d, "width_multiple")
    for key in ("backbone", "head"):
        if d[key] is not None and not isinstance(d[key], list):
            raise ModelError(f"'{key}' must be a list of [from, number, module, args] rows, got {_short(d[key])}")
    if len(d["backbone"] or []) + len(d["head"] or []) > MAX_LAYERS:
        raise ModelError(f"more than {MAX_LAYERS} layers in backbone and head")
    anchors = d["anchors"]
    if not isinstance(anchors, list) or not anchors or not all(isinstance(a, list) and a and len(a) % 2 == 0 for a in anchors):
        raise ModelError("'anchors' must be a list of per-level lists of pixel pairs, e.g. [[10,13, 16,30, 33,23], ...]")
    if any(len(a) != len(anchors[0]) for a in anchors):
        raise ModelError("'anchors': every level needs the same number of anchors")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1e6
               for a in anchors for v in a):
        raise ModelError("'anchors' must hold positive pixel sizes")
    return nc, anchors, gd, gw


def _check_upsample(args: list, where: str) -> None:
    scale = args[1] if len(args) > 1 else None
    if isinstance(scale, bool) or (scale is not None and not (isinstance(scale, (int, float))
                                                               and 0 < scale <= MAX_UPSAMPLE)):
        raise ModelError(f"{where}: Upsample scale factor must be a number above 0 and at most {MAX_UPSAMPLE}, "
                         f"got {_short(scale)}")
    if args and args[0] is not None:
        raise ModelError(f"{where}: Upsample takes [None, scale, mode]: give a scale factor, not a size")


def _meta_params(m: type[nn.Module], args: list, n: int) -> int:
    """Parameters of ``n`` x ``m(*args)``, built on the meta device (no memory, no initialisation)."""
    try:
        with torch.device("meta"):
            return n * sum(p.numel() for p in m(*args).parameters())
    except NotImplementedError:  # cannot be built on meta: the real build below reports any error
        return 0


def initialize_weights(model: nn.Module) -> None:
    """The official build-time settings: BatchNorm eps 1e-3, momentum 0.03; in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def check_anchor_order(m: Detect) -> None:
    """Anchor order (by area) must follow stride order; reverse it when it does not."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da = a[-1] - a[0]
    assert m.stride is not None
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        m.anchors[:] = m.anchors.flip(0)


class LayeredModel(nn.Module):
    """A model that is a list of layers, each with ``f`` (where its input comes from: -1, an index or a
    list) and ``i`` (its index), keeping the outputs that later layers read (``save``): the YOLOv5 and
    YOLOv8/11 families alike."""

    model: nn.Sequential
    save: list[int]

    def forward(self, x: torch.Tensor):
        y: list[torch.Tensor | None] = []
        m: Any
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]  # type: ignore[assignment]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self):  # -> Self
        """Fold every Conv's BatchNorm into the conv weights (in place); returns self."""
        from exporter.models.fuse import fuse_conv_bn

        for m in self.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_bn(m.conv, m.bn)
                delattr(m, "bn")
        return self


class Model(LayeredModel):
    """A YOLOv5 detection model built from a config dict (``.yaml``), with ``.stride`` and ``.names``."""

    def __init__(self, cfg: dict[str, Any], ch: int = 3, nc: int | None = None, anchors: list | None = None):
        super().__init__()
        self.yaml = deepcopy(cfg)
        if nc is not None and nc != self.yaml.get("nc"):
            self.yaml["nc"] = int(nc)
        if anchors is not None:
            self.yaml["anchors"] = anchors
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.nc = int(self.yaml["nc"])
        self.names = [str(i) for i in range(self.nc)]
        m = self.detect
        m.output = "raw"
        feats = self._probe(ch)
        m.output = "auto"
        m.stride = torch.tensor([STRIDE_PROBE / x.shape[-3] for x in feats])
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)
        self.stride = m.stride
        m.initialize_biases()
        initialize_weights(self)

    def _probe(self, ch: int) -> list[torch.Tensor]:
        """The stride probe forward pass; a layer that cannot run on it is a config error naming that layer."""
        seen: list[int] = []
        hooks = [m.register_forward_pre_hook(lambda mod, _: seen.append(mod.i)) for m in self.model]
        try:
            with torch.no_grad():
                return self.forward(torch.zeros(1, ch, STRIDE_PROBE, STRIDE_PROBE))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            where = _layer_name(seen[-1], len(self.yaml["backbone"] or [])) if seen else "the model"
            msg = " ".join(str(exc).split())[:200]
            raise ModelError(f"{where}: fails on a zero 1x{ch}x{STRIDE_PROBE}x{STRIDE_PROBE} image: {msg}") from None
        finally:
            for h in hooks:
                h.remove()

    @property
    def detect(self) -> Detect:
        return self.model[-1]  # type: ignore[return-value]


    @property
    def generation(self) -> str:
        """'v5.0' for a Focus stem, 'v6+' otherwise."""
        return "v5.0" if any(isinstance(m, MODULES["Focus"]) for m in self.model) else "v6+"
