"""Pruning view of a YOLOv5 model: which convs can lose output channels, BN gamma statistics, sparsity.

A ``Conv`` (Conv2d + BatchNorm2d + SiLU) can be channel-pruned when its output channels are its own:
dropping a channel means dropping a conv filter and the matching BN entries, and slicing the input of
whatever reads it (concats only re-index). A residual add ties channels of several convs together:
the conv on the residual branch (``Bottleneck.cv2`` with shortcut) and every conv whose output is the
identity branch (``C3.cv1`` in front of shortcut Bottlenecks) cannot be pruned alone. Detect convs
have no BatchNorm and produce the fixed ``na * (nc + 5)`` output channels.

The file is a little over 400 lines on purpose: its two halves (the YOLOv5 layer walk, and the graph
walk for any other model) share the report's types and :func:`prune_report` dispatches between them,
so split in two they would import each other.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from exporter.errors import ConfigError

# |gamma| below this counts as a near-zero channel: the usual cut-off after sparsity (L1 on gamma) training.
DEFAULT_GAMMA_THRESHOLD = 0.01

PRUNABLE = "BN output feeds no residual add"
RESIDUAL = "BN output feeds a residual add (Bottleneck shortcut)"
DETECT = "no BatchNorm: Detect output conv"
FUSED = "no BatchNorm (fused): no gamma to rank channels"
NO_BN = "plain Conv2d without its own BatchNorm (no gamma to rank channels)"


@dataclass
class ConvPruneInfo:
    """One conv of the model. Gamma figures are over |gamma| of its BatchNorm (None without one)."""

    name: str  # qualified name of the Conv unit ('model.2.cv2') or of a plain Conv2d ('model.24.m.0')
    layer: int | None  # YAML layer index
    role: str  # e.g. 'C3.cv2', 'Bottleneck.cv2', 'Detect.m.0'
    out_channels: int
    weights: int
    zero_weights: int
    prunable: bool
    reason: str
    gamma_min: float | None
    gamma_median: float | None
    gamma_below: float | None  # share of channels with |gamma| < threshold
    channels_below: int | None

    @property
    def sparsity(self) -> float:
        return self.zero_weights / self.weights if self.weights else 0.0


@dataclass
class PruneReport:
    """Result of :func:`prune_report`."""

    convs: list[ConvPruneInfo]
    threshold: float
    method: str = "YOLOv5 layers"  # how channel coupling was found: YOLO layers, torch.fx, torch.export, or not

    @property
    def zero_weights(self) -> int:
        return sum(c.zero_weights for c in self.convs)

    @property
    def total_weights(self) -> int:
        return sum(c.weights for c in self.convs)

    @property
    def sparsity(self) -> float:
        """Share of exactly-zero weights over all Conv2d weights."""
        return self.zero_weights / self.total_weights if self.total_weights else 0.0

    @property
    def prunable(self) -> list[ConvPruneInfo]:
        return [c for c in self.convs if c.prunable]

    def summary(self) -> dict[str, Any]:
        p = self.prunable
        return {
            "convs": len(self.convs),
            "prunable": len(p),
            "prunable_channels": sum(c.out_channels for c in p),
            "channels_below_threshold": sum(c.channels_below or 0 for c in p),
            "threshold": self.threshold,
            "weights": self.total_weights,
            "zero_weights": self.zero_weights,
            "sparsity": self.sparsity,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "layers": [{**asdict(c), "sparsity": c.sparsity} for c in self.convs]}


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero weights over all Conv2d weights of ``model``."""
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / total if total else 0.0


def _layers(model: nn.Module) -> list[Any]:
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and all(hasattr(m, "f") for m in seq):
        return list(seq)
    raise ConfigError(f"prune-report needs a YOLOv5 model (with YAML layers), not {type(model).__name__}")


def _output_convs(m: nn.Module, name: str) -> list[str] | None:
    """The Conv units whose output is the output of module ``m`` (None: passes its input through)."""
    from exporter.models.common import C3, SPP, SPPF, BottleneckCSP, Conv, Focus

    if isinstance(m, Conv):
        return [name]
    if isinstance(m, Focus):
        return [f"{name}.conv"]
    if isinstance(m, C3):
        return [f"{name}.cv3"]
    if isinstance(m, BottleneckCSP):
        return [f"{name}.cv4"]
    if isinstance(m, (SPP, SPPF)):
        return [f"{name}.cv2"]
    return None


def _walk_bottlenecks(seq: nn.Module, name: str, inputs: list[str], coupled: dict[str, str]) -> list[str]:
    """Mark the convs tied by residual adds along a chain of Bottlenecks whose input comes from the convs
    ``inputs``; returns the convs whose outputs make up the chain's output."""
    from exporter.models.common import Bottleneck

    prev = list(inputs)
    for j, b in enumerate(seq.children() if isinstance(seq, nn.Sequential) else [seq]):
        bname = f"{name}.{j}" if isinstance(seq, nn.Sequential) else name
        if not isinstance(b, Bottleneck):
            prev = _output_convs(b, bname) or prev
            continue
        if b.add:
            for c in prev:
                coupled.setdefault(c, f"output is the identity branch of a residual add ({bname} shortcut)")
            coupled[f"{bname}.cv2"] = RESIDUAL
            prev = [*prev, f"{bname}.cv2"]
        else:
            prev = [f"{bname}.cv2"]
    return prev


def residual_coupled(model: nn.Module) -> dict[str, str]:
    """Conv unit name -> why its output channels are tied to a residual add."""
    from exporter.models.common import C3, Bottleneck, BottleneckCSP, Detect

    coupled: dict[str, str] = {}
    produced: list[list[str]] = []  # per YAML layer: the convs whose outputs make up its output
    for m in _layers(model):
        i, f = int(m.i), m.f
        srcs = [f] if isinstance(f, int) else list(f)
        inputs = [c for s in srcs for c in (produced[s if s != -1 else i - 1] if i > 0 else [])]
        name = f"model.{i}"
        if isinstance(m, Detect):
            out: list[str] = []
        elif isinstance(m, (C3, BottleneckCSP)):
            _walk_bottlenecks(m.m, f"{name}.m", [f"{name}.cv1"], coupled)
            out = _output_convs(m, name) or []
        elif isinstance(m, Bottleneck) or (isinstance(m, nn.Sequential) and any(isinstance(b, Bottleneck) for b in m)):
            out = _walk_bottlenecks(m, name, inputs, coupled)
        elif isinstance(m, nn.Sequential):  # a repeated module: the last one's output
            out = _output_convs(m[-1], f"{name}.{len(m) - 1}") or inputs
            for j, b in enumerate(m):
                if isinstance(b, (C3, BottleneckCSP)):
                    _walk_bottlenecks(b.m, f"{name}.{j}.m", [f"{name}.{j}.cv1"], coupled)
        else:
            own = _output_convs(m, name)
            out = inputs if own is None else own
        produced.append(out)
    return coupled


def _role(model: nn.Module, name: str) -> str:
    """'C3.cv2' for model.2.cv2, 'Detect.m.0' for model.24.m.0, 'Conv' for a top-level Conv."""
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        parent = model.get_submodule(".".join(parts[:k]))
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            return ".".join([type(parent).__name__, *parts[k:]])
    return type(model.get_submodule(name)).__name__


def prune_report(model: nn.Module, threshold: float = DEFAULT_GAMMA_THRESHOLD, input_specs: Any = ()) -> PruneReport:
    """Every conv of a YOLOv5 model: channel-prunable or why not, BN gamma statistics, weight sparsity.
    Any other model: from its traced graph (:func:`graph_prune_report`)."""
    from exporter.models.common import Conv, Detect

    if threshold < 0:
        raise ConfigError(f"threshold must be >= 0, got {threshold}")
    seq = getattr(model, "model", None)
    if not (isinstance(seq, nn.Sequential) and all(hasattr(m, "f") for m in seq)):
        return graph_prune_report(model, threshold, input_specs)
    coupled = residual_coupled(model)
    detect_convs = {id(c) for m in model.modules() if isinstance(m, Detect) for c in m.m}
    in_conv_unit = {id(m.conv) for m in model.modules() if isinstance(m, Conv)}
    rows: list[ConvPruneInfo] = []
    for name, m in model.named_modules():
        if isinstance(m, Conv):
            conv, bn = m.conv, getattr(m, "bn", None)
        elif isinstance(m, nn.Conv2d) and id(m) not in in_conv_unit:
            conv, bn = m, None
        else:
            continue
        if bn is not None:
            prunable, reason = (False, coupled[name]) if name in coupled else (True, PRUNABLE)
        else:
            prunable = False
            reason = DETECT if id(conv) in detect_convs else FUSED if isinstance(m, Conv) else NO_BN
        g_min = g_med = g_below = None
        n_below = None
        if bn is not None:
            g = bn.weight.detach().abs().float()
            g_min, g_med = float(g.min()), float(g.median())
            n_below = int((g < threshold).sum())
            g_below = n_below / g.numel()
        parts = name.split(".")
        layer = int(parts[1]) if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() else None
        rows.append(ConvPruneInfo(
            name=name, layer=layer, role=_role(model, name), out_channels=conv.out_channels,
            weights=conv.weight.numel(), zero_weights=int((conv.weight == 0).sum()), prunable=prunable,
            reason=reason, gamma_min=g_min, gamma_median=g_med, gamma_below=g_below, channels_below=n_below,
        ))
    return PruneReport(rows, threshold)


def l1_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of ``model`` with the ``amount`` share of smallest-magnitude weights of every Conv2d set to
    zero (torch.nn.utils.prune.l1_unstructured, made permanent with prune.remove)."""
    from torch.nn.utils import prune

    if not 0.0 <= amount <= 1.0:
        raise ConfigError(f"--l1-unstructured takes a share between 0 and 1, got {amount}")
    pruned = deepcopy(model)
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, nn.Conv2d):
                prune.l1_unstructured(m, "weight", amount=amount)
                prune.remove(m, "weight")
    return pruned


# ------------------------------------------------------------------------ any nn.Module, from its graph

# Ops through which a conv's output channels pass unchanged (elementwise on one tensor, per-channel
# normalisation, pooling, resizing): the channel question is asked again at their users.
_PASS_MODULES = ("BatchNorm", "ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh",
                 "LeakyReLU", "ELU", "Mish", "PReLU", "Identity", "Dropout", "DropPath", "MaxPool", "AvgPool",
                 "AdaptiveAvgPool", "AdaptiveMaxPool", "Upsample", "SelectAdaptivePool2d", "GroupNorm")
_PASS_FUNCS = {"relu", "relu_", "relu6", "silu", "silu_", "gelu", "hardswish", "hardswish_", "hardsigmoid",
               "sigmoid", "tanh", "leaky_relu", "elu", "mish", "dropout", "contiguous", "clone", "clamp",
               "clamp_", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate",
               "max_pool2d_with_indices", "_native_batch_norm_legit_no_training", "batch_norm", "getitem",
               "detach", "to", "float", "hardtanh", "hardtanh_", "alias", "dropout_", "native_dropout"}
_TIE_FUNCS = {"add", "add_", "iadd", "sub", "sub_", "mul", "mul_", "imul", "div", "truediv"}
_STOP_FUNCS = {"linear", "addmm", "mm", "matmul", "flatten", "view", "reshape", "mean", "sum", "amax"}
TIED = "output feeds a residual add (or a multiply) with another branch: its channels are tied to it"


def _fn_name(target: Any) -> str:
    """'add' for operator.add, torch.add, the method 'add' and aten.add.Tensor alike."""
    if isinstance(target, str):
        return target
    return str(getattr(target, "__name__", target)).split(".")[0]


def _trace(model: nn.Module, input_specs: Any) -> tuple[Any, str, dict[str, str]]:
    """(graph, method, conv node name -> module name): torch.fx first, torch.export second; raises
    ConfigError naming both failures when neither can trace."""
    from torch import fx

    errors = []
    try:
        gm = fx.symbolic_trace(model)
        return gm.graph, "torch.fx", {n.name: str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    except Exception as exc:  # noqa: BLE001 - fx raises anything on untraceable code
        from exporter.errors import first_line

        errors.append(f"torch.fx: {first_line(exc)[:140]}")
    from exporter.analysis.generic import example_args, example_specs
    from exporter.stages.capture_attempts import _mha_fastpath_off

    try:
        with _mha_fastpath_off():
            ep = torch.export.export(model.eval(), example_args(model, example_specs(tuple(input_specs or ()))),
                                     strict=False)
    except Exception as exc:  # noqa: BLE001
        from exporter.errors import first_line

        errors.append(f"torch.export: {first_line(exc)[:140]}")
        raise ConfigError("prune-report cannot see how channels flow in this model: " + "; ".join(errors)) from None
    names = {}
    for n in ep.graph.nodes:
        if n.op == "call_function" and "convolution" in str(n.target):
            stack = n.meta.get("nn_module_stack") or {}
            if stack:
                names[n.name] = str(list(stack.values())[-1][0])
    return ep.graph, "torch.export", names


def _channel_fate(node: Any, modules: dict[str, nn.Module], convs: set[str], depth: int = 0) -> str | None:
    """Why the channels reaching ``node``'s users cannot be pruned alone, or None when every path ends
    in a consumer that just slices its input (a conv, a linear layer, a flatten or a reduction)."""
    if depth > 200:
        return "the graph is too deep to follow"
    for user in node.users:
        if user.op == "output":
            return "a model output: its channels are the output's"
        if user.op == "call_module":
            m = modules.get(str(user.target))
            kind = type(m).__name__ if m is not None else str(user.target)
            if isinstance(m, nn.Conv2d):
                if m.groups > 1 and m.groups == m.in_channels:  # depthwise: pruned together, channels pass on
                    why = _channel_fate(user, modules, convs, depth + 1)
                    if why:
                        return why
                continue
            if isinstance(m, nn.Linear):
                continue
            if any(kind.startswith(p) for p in _PASS_MODULES):
                why = _channel_fate(user, modules, convs, depth + 1)
                if why:
                    return why
                continue
            return f"feeds a {kind}, which this report does not follow"
        name = _fn_name(user.target) if user.op in ("call_function", "call_method") else user.op
        if user.op == "call_function" and "convolution" in name:
            groups = user.args[-1] if user.args else 1
            if isinstance(groups, int) and groups > 1:
                why = _channel_fate(user, modules, convs, depth + 1)
                if why:
                    return why
            continue
        if name in ("cat", "concat", "concatenate"):
            why = _channel_fate(user, modules, convs, depth + 1)  # channels re-indexed; their fate is the concat's
            if why:
                return why if why != TIED else "concatenated, and the concat feeds a residual add or multiply"
            continue
        if name in _TIE_FUNCS:
            others = [a for a in user.args if hasattr(a, "op") and a is not node]
            if others:
                return TIED
            why = _channel_fate(user, modules, convs, depth + 1)  # x * 2: elementwise with a constant
            if why:
                return why
            continue
        if name in _STOP_FUNCS:
            continue
        if name in _PASS_FUNCS:
            why = _channel_fate(user, modules, convs, depth + 1)
            if why:
                return why
            continue
        return f"feeds {name}, which this report does not follow"
    return None


def graph_prune_report(model: nn.Module, threshold: float = DEFAULT_GAMMA_THRESHOLD, input_specs: Any = ()) -> PruneReport:
    """Every Conv2d of any model: channel-prunable or why not, from its traced graph (torch.fx, or
    torch.export where fx cannot trace): a conv whose output, through BatchNorm, activations and pooling,
    reaches an add or multiply with another branch (a residual, squeeze-excitation) or a model output is
    tied; one that only reaches convs, linear layers and concats is prunable. Gamma figures come from the
    BatchNorm right after the conv."""
    graph, method, conv_names = _trace(deepcopy(model).eval(), input_specs)
    modules = dict(model.named_modules())
    nodes_of: dict[str, Any] = {}
    for n in graph.nodes:
        if n.name in conv_names and isinstance(modules.get(conv_names[n.name]), nn.Conv2d):
            nodes_of.setdefault(conv_names[n.name], n)
    bn_after: dict[str, nn.modules.batchnorm._BatchNorm] = {}
    for cname, n in nodes_of.items():
        for u in n.users:
            target = modules.get(str(u.target)) if u.op == "call_module" else None
            if isinstance(target, nn.modules.batchnorm._BatchNorm):
                bn_after[cname] = target
            elif u.op == "call_function" and "batch_norm" in str(u.target) and len(u.args) > 1:
                w = u.args[1]
                stack = u.meta.get("nn_module_stack") or {}
                if stack and hasattr(w, "op"):
                    bn = modules.get(str(list(stack.values())[-1][0]))
                    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                        bn_after[cname] = bn
    rows: list[ConvPruneInfo] = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        node = nodes_of.get(name)
        if node is None:
            prunable, reason = False, f"not in the {method} graph (not called, or called inside a fused kernel)"
        elif m.groups > 1 and m.groups == m.in_channels:
            prunable, reason = False, "depthwise: its channels are its input's (pruned with the conv before it)"
        else:
            why = _channel_fate(node, modules, set(nodes_of))
            prunable, reason = (why is None), (why or "output only feeds convs, linear layers, concats or pooling")
        bn = bn_after.get(name)
        g_min = g_med = g_below = None
        n_below = None
        if bn is not None and getattr(bn, "weight", None) is not None:
            g = bn.weight.detach().abs().float()
            g_min, g_med = float(g.min()), float(g.median())
            n_below = int((g < threshold).sum())
            g_below = n_below / g.numel()
        elif prunable:
            reason += "; no BatchNorm after it: no gamma to rank channels"
        rows.append(ConvPruneInfo(
            name=name, layer=None, role=_role(model, name) if "." in name else type(m).__name__,
            out_channels=m.out_channels, weights=m.weight.numel(), zero_weights=int((m.weight == 0).sum()),
            prunable=prunable, reason=reason, gamma_min=g_min, gamma_median=g_med, gamma_below=g_below,
            channels_below=n_below,
        ))
    return PruneReport(rows, threshold, method)
