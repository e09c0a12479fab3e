"""Conv + BatchNorm fusion check: per-pair error of our fusion and of torch's, and the whole model
fused vs unfused.

Each pair is checked on its real input: one forward pass of the model on a seeded synthetic image,
with a hook capturing what each pair's conv receives.
"""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from exporter.errors import ModelError
from exporter.options import InputSpec
from exporter.parity.compare import DEFAULT_ATOL, DEFAULT_RTOL

DEFAULT_THRESHOLD = 1e-5  # fp32 fusion lands around 3e-7 relative error with real statistics
# the explicit parity tolerance's defaults (one place: exporter.parity.compare)
PARITY_ATOL, PARITY_RTOL = DEFAULT_ATOL, DEFAULT_RTOL


@dataclass
class PairResult:
    """One Conv2d + BatchNorm2d pair. Errors are ``||y_unfused - y_fused|| / ||y_unfused||``."""

    conv: str  # qualified module name of the conv
    bn: str
    input_shape: list[int]
    rel_error: float  # our fusion (exporter.models.fuse.fuse_conv_bn)
    rel_error_torch: float  # torch.nn.utils.fusion.fuse_conv_bn_eval
    fusions_max_diff: float  # max |y_ours - y_torch|
    fusions_rel_diff: float  # ||y_ours - y_torch|| / ||y_unfused||
    weights_rel_diff: float  # max |w_ours - w_torch| / max |w_torch|, over fused weight and bias
    passed: bool


@dataclass
class ModelParity:
    """The whole model, fused vs unfused, on the same input. ``max_rel`` is taken over the elements
    whose reference magnitude exceeds ``atol`` (near-zero elements make element-wise ratios meaningless)."""

    max_abs: float
    max_rel: float
    rel_norm: float
    atol: float
    rtol: float
    within_tolerance: bool  # |a - b| <= atol + rtol * |ref| everywhere
    tolerance_used: float  # max of |a - b| / (atol + rtol * |ref|): at most 1 when within tolerance
    outputs: int  # number of output tensors compared
    per_output: list[dict[str, Any]]  # shape, max_abs, max_ref (largest |ref|), tolerance_used per output
    fused_with: str  # 'Model.fuse' or 'module replacement'


@dataclass
class FuseReport:
    """Result of :func:`fuse_check`; truthy when every pair is within the threshold and the whole model
    is within the parity tolerance."""

    pairs: list[PairResult]
    model: ModelParity | None
    threshold: float
    img: list[int]
    method: str  # how pairs were found: 'yolov5 Conv' or 'torch.fx'
    skipped: list[str] = field(default_factory=list)  # pairs found but not checked, with why
    inputs: list[list[int]] = field(default_factory=list)  # the shape of each input of the forward

    def __bool__(self) -> bool:
        return all(p.passed for p in self.pairs) and (self.model is None or self.model.within_tolerance)

    @property
    def worst(self) -> PairResult | None:
        return max(self.pairs, key=lambda p: p.rel_error) if self.pairs else None

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "passed": bool(self),
            "threshold": self.threshold,
            "img": self.img,
            "inputs": self.inputs,
            "method": self.method,
            "n_pairs": len(self.pairs),
            "worst_pair": worst.conv if worst else None,
            "max_rel_error": worst.rel_error if worst else None,
            "max_rel_error_torch": max((p.rel_error_torch for p in self.pairs), default=None),
            "max_fusions_diff": max((p.fusions_max_diff for p in self.pairs), default=None),
            "max_fusions_rel_diff": max((p.fusions_rel_diff for p in self.pairs), default=None),
            "max_weights_rel_diff": max((p.weights_rel_diff for p in self.pairs), default=None),
            "whole_model": asdict(self.model) if self.model else None,
            "pairs": [asdict(p) for p in self.pairs],
            "skipped": self.skipped,
        }


def _is_yolov5(model: nn.Module) -> bool:
    from exporter.models.common import Conv

    return any(isinstance(m, Conv) for m in model.modules())


def _fusable(conv: nn.Module, bn: nn.Module) -> str | None:
    """None when ``bn(conv(x))`` can be folded, else why not."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return "not a Conv2d + BatchNorm2d"
    if bn.num_features != conv.out_channels:
        return f"BatchNorm2d has {bn.num_features} features for {conv.out_channels} conv channels"
    if bn.running_mean is None or bn.running_var is None:
        return "BatchNorm2d keeps no running statistics (normalises with batch statistics)"
    return None


def find_conv_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """Qualified names of (conv, bn) pairs and how they were found.

    YOLOv5 models: every ``Conv`` module that still has its ``bn`` (a standalone BatchNorm after a
    concat, as in BottleneckCSP, is not a pair). Any other module: traced with torch.fx, a Conv2d
    whose only user is a BatchNorm2d taking it as input.
    """
    if _is_yolov5(model):
        from exporter.models.common import Conv

        units = [(f"{name}.conv", f"{name}.bn") for name, m in model.named_modules()
                 if isinstance(m, Conv) and hasattr(m, "bn")]
        return units, "yolov5 Conv"
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise ModelError(f"cannot find Conv+BN pairs: torch.fx could not trace {type(model).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        user = users[0]
        if (user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.BatchNorm2d)
                and user.args and user.args[0] is node and node.target not in seen):
            pairs.append((str(node.target), str(user.target)))
            seen.add(str(node.target))
    return pairs, "torch.fx"


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    n = float(ref.double().norm())
    d = float(diff.double().norm())
    return d / n if n > 0 else (0.0 if d == 0 else math.inf)


def _tensors(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (list, tuple)):
        return [t for x in y for t in _tensors(x)]
    if isinstance(y, dict):
        return [t for x in y.values() for t in _tensors(x)]
    return []


def _fuse_model(model: nn.Module, pairs: list[tuple[str, str]]) -> tuple[nn.Module, str]:
    """A fused copy: ``Model.fuse`` for YOLOv5 models, else each conv replaced by the fused conv and its
    BN by Identity."""
    from exporter.models.fuse import fuse_conv_bn
    from exporter.models.yolo import Model

    fused = deepcopy(model)
    if isinstance(fused, Model):
        return fused.fuse().eval(), "Model.fuse"
    for conv_name, bn_name in pairs:
        conv: Any = fused.get_submodule(conv_name)
        bn: Any = fused.get_submodule(bn_name)
        fused.set_submodule(conv_name, fuse_conv_bn(conv, bn))
        fused.set_submodule(bn_name, nn.Identity())
    return fused.eval(), "module replacement"


def compare_outputs(ref: Any, out: Any, atol: float = PARITY_ATOL, rtol: float = PARITY_RTOL) -> dict[str, Any]:
    """max abs, max rel (over |ref| > atol), relative norm and the element-wise tolerance verdict
    ``|a - b| <= atol + rtol * |ref|`` (with the share of the tolerance used by the worst element)."""
    r, o = _tensors(ref), _tensors(out)
    if len(r) != len(o) or any(a.shape != b.shape for a, b in zip(r, o, strict=False)):
        raise ModelError("fused model returns outputs of other shapes than the unfused model")
    max_abs = max_rel = used = 0.0
    num = den = 0.0
    per_output = []
    for a, b in zip(r, o, strict=True):
        a64, b64 = a.detach().double(), b.detach().double()
        d = (a64 - b64).abs()
        entry: dict[str, Any] = {"shape": list(a.shape), "max_abs": 0.0, "max_ref": 0.0, "tolerance_used": 0.0}
        if d.numel():
            max_abs = max(max_abs, float(d.max()))
            big = a64.abs() > atol
            if big.any():
                max_rel = max(max_rel, float((d[big] / a64.abs()[big]).max()))
            tol = atol + rtol * a64.abs()
            ratio = torch.where(tol > 0, d / tol.clamp_min(1e-300), torch.where(d > 0, math.inf, 0.0))
            used = max(used, float(ratio.max()))
            entry.update(max_abs=float(d.max()), max_ref=float(a64.abs().max()), tolerance_used=float(ratio.max()))
        per_output.append(entry)
        num += float((d**2).sum())
        den += float((a64**2).sum())
    rel_norm = math.sqrt(num / den) if den > 0 else 0.0
    return {"max_abs": max_abs, "max_rel": max_rel, "rel_norm": rel_norm, "atol": atol, "rtol": rtol,
            "within_tolerance": used <= 1.0, "tolerance_used": used, "outputs": len(r),
            "per_output": per_output}


@torch.no_grad()
def fuse_check(
    model: nn.Module,
    img: int | tuple[int, int] = 640,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    seed: int = 0,
    whole_model: bool = True,
    input_specs: tuple[InputSpec, ...] = (),
) -> FuseReport:
    """Check Conv+BN fusion pair by pair (ours and torch's) and for the whole model.

    ``inputs`` (a tensor, or a tuple: the forward's positional arguments) or ``input_specs``
    (``--input-shape``: seeded inputs of those shapes and dtypes) replace the seeded synthetic image
    (``exporter.models.weights.synthetic_images``) for models that do not take one 3-channel image. The
    caller's model is not modified.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from exporter.models.fuse import fuse_conv_bn
    from exporter.models.weights import synthetic_images

    hw = (img, img) if isinstance(img, int) else (int(img[0]), int(img[1]))
    ref_model = deepcopy(model).eval()
    pairs, method = find_conv_bn_pairs(ref_model)
    p = next(ref_model.parameters(), None)
    if inputs is None and input_specs:
        from exporter.analysis.generic import example_args

        inputs = example_args(ref_model, tuple(input_specs), seed)
    args = inputs if isinstance(inputs, tuple) else (synthetic_images(1, hw, seed) if inputs is None else inputs,)
    if p is not None:
        args = tuple(a.to(device=p.device, dtype=p.dtype if a.is_floating_point() else a.dtype) for a in args)

    captured: dict[str, torch.Tensor] = {}
    handles = []
    for conv_name, _ in pairs:
        def hook(_m: nn.Module, args: tuple, name: str = conv_name) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                captured[name] = args[0].detach().clone()
        handles.append(ref_model.get_submodule(conv_name).register_forward_pre_hook(hook))
    try:
        y_ref = ref_model(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is reported in one line
        shapes = ", ".join("x".join(map(str, a.shape)) for a in args)
        raise ModelError(f"{type(model).__name__}'s forward failed on the seeded input {shapes}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                         "(give the model's inputs with --input-shape)") from None
    finally:
        for h in handles:
            h.remove()

    results: list[PairResult] = []
    skipped: list[str] = []
    for conv_name, bn_name in pairs:
        conv: Any = ref_model.get_submodule(conv_name)
        bn: Any = ref_model.get_submodule(bn_name)
        why = _fusable(conv, bn)
        if why is None and conv_name not in captured:
            why = "never called in the forward pass"
        if why is not None:
            skipped.append(f"{conv_name}: {why}")
            continue
        x = captured[conv_name]
        y = bn(conv(x))
        ours, theirs = fuse_conv_bn(conv, bn), fuse_conv_bn_eval(conv, bn)
        y_ours, y_torch = ours(x), theirs(x)
        w_diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                     for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)))
        rel = _rel(y - y_ours, y)
        results.append(PairResult(
            conv=conv_name, bn=bn_name, input_shape=list(x.shape), rel_error=rel,
            rel_error_torch=_rel(y - y_torch, y),
            fusions_max_diff=float((y_ours - y_torch).abs().max()) if y.numel() else 0.0,
            fusions_rel_diff=_rel(y_ours - y_torch, y), weights_rel_diff=w_diff,
            passed=rel <= threshold,
        ))

    parity = None
    if whole_model:
        fused, how = _fuse_model(ref_model, pairs)
        parity = ModelParity(**compare_outputs(y_ref, fused(*args)), fused_with=how)
    return FuseReport(results, parity, threshold, list(hw), method, skipped, [list(a.shape) for a in args])
