"""Per-layer profile: parameters, GFLOPs, forward and backward time, input and output shapes.

Each YAML layer runs standalone on the inputs it received in one forward pass of the whole model on a
seeded synthetic image, so a layer's time is its own. Everything runs in eval mode (BatchNorm uses
running statistics); backward is the time of ``autograd.backward`` from the layer's outputs (with
ones as gradients) to its parameters and inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from exporter.analysis.summary import shapes_of
from exporter.errors import ConfigError

DEFAULT_RUNS = 3
CSV_COLUMNS = ("index", "from", "module", "params", "gflops", "forward_ms", "backward_ms", "input_shape",
               "output_shape")

Progress = Callable[[int, int, str], None]  # (layers done, layers in all, what runs now)


@dataclass
class LayerProfile:
    """One YAML layer. Times are medians over the runs, in milliseconds."""

    index: int
    source: int | list[int]  # the layer's 'from'
    module: str
    params: int
    gflops: float
    forward_ms: float
    backward_ms: float | None  # None when nothing in the layer needs a gradient
    input_shape: Any
    output_shape: Any

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "from": self.source, "module": self.module, "params": self.params,
                "gflops": self.gflops, "forward_ms": self.forward_ms, "backward_ms": self.backward_ms,
                "input_shape": self.input_shape, "output_shape": self.output_shape}


@dataclass
class ProfileReport:
    """Result of :func:`profile_model`; ``totals`` sums the layers."""

    layers: list[LayerProfile]
    device: str
    img: list[int]
    runs: int
    warmup: int
    totals: dict[str, Any] = field(init=False)
    inputs: list[str] = field(default_factory=list)  # the example inputs (module profiles)
    whole_gflops: float | None = None  # the whole model's count (module profiles: parents' own code included)

    def __post_init__(self) -> None:
        bw = [r.backward_ms for r in self.layers if r.backward_ms is not None]
        self.totals = {
            "params": sum(r.params for r in self.layers),
            "gflops": sum(r.gflops for r in self.layers),
            "forward_ms": sum(r.forward_ms for r in self.layers),
            "backward_ms": sum(bw) if bw else None,
        }

    def to_dict(self) -> dict[str, Any]:
        out = {"device": self.device, "img": self.img, "runs": self.runs, "warmup": self.warmup,
               "layers": [r.to_dict() for r in self.layers], "totals": self.totals}
        if self.inputs:
            out.update(inputs=self.inputs, whole_gflops=self.whole_gflops)
        return out


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu`` or ``cuda[:N]``; a ConfigError when CUDA is asked for and is not usable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{device}': CUDA is not usable here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"device '{device}': give cpu or cuda")
    return dev


def _has_layers(model: nn.Module) -> bool:
    seq = getattr(model, "model", None)
    return (isinstance(seq, nn.Sequential) and all(hasattr(m, "f") and hasattr(m, "i") for m in seq)) or \
        isinstance(model, nn.Sequential)


def _yaml_layers(model: nn.Module) -> list[Any]:
    """The YAML layers (``model.model`` with ``.i``/``.f``/``.type``), or an nn.Sequential's children
    as a chain."""
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and all(hasattr(m, "f") and hasattr(m, "i") for m in seq):
        return list(seq)
    if isinstance(model, nn.Sequential):
        for i, m in enumerate(model):
            if not hasattr(m, "f"):
                m.i, m.f, m.type = i, -1, type(m).__name__  # type: ignore[assignment]
        return list(model)
    raise ConfigError(f"profile needs a YOLOv5 model or an nn.Sequential, not {type(model).__name__}")


def _tensors(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, (list, tuple)):
        return [t for x in y for t in _tensors(x)]
    return []


def _fresh(x: Any, grad: bool) -> Any:
    """A new list around the same tensors (Detect rebinds its input list), detached leaves with ``grad``."""
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(grad) if grad and x.is_floating_point() else x.detach()
    return [_fresh(t, grad) for t in x]


def profile_model(
    model: nn.Module,
    img: int | tuple[int, int] = 640,
    *,
    device: str | torch.device = "cpu",
    runs: int = DEFAULT_RUNS,
    warmup: int = 1,
    backward: bool = True,
    inputs: torch.Tensor | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    input_specs: Any = (),
) -> ProfileReport:
    """Profile every YAML layer of ``model`` (a copy runs on ``device``; the caller's model is untouched).

    GFLOPs are counted with torch.utils.flop_counter on each layer's real input, so they add up to the
    exact whole-model count. ``inputs`` replaces the seeded synthetic image. Any other model (or one
    given ``input_specs``, --input-shape) is profiled module by module (:func:`profile_modules`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from exporter.models.weights import synthetic_images

    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    dev = resolve_device(device)
    hw = (img, img) if isinstance(img, int) else (int(img[0]), int(img[1]))
    if input_specs or not _has_layers(model):
        from exporter.analysis.generic import example_specs

        return profile_modules(model, example_specs(tuple(input_specs or ()), hw), device=dev, runs=runs,
                               warmup=warmup, backward=backward, seed=seed, progress=progress)
    model = deepcopy(model).to(dev).eval()
    layers = _yaml_layers(model)
    x: Any = (inputs if inputs is not None else synthetic_images(1, hw, seed)).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    total = len(layers)
    # one forward pass of the whole model, layer by layer: each layer's input and FLOPs
    layer_inputs: list[Any] = []
    flops: list[int] = []
    outputs: list[Any] = []
    with torch.no_grad():
        for m in layers:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            layer_inputs.append(x)
            with FlopCounterMode(display=False) as fc:
                x = m(_fresh(x, False))
            flops.append(int(fc.get_total_flops()))
            outputs.append(x)

    def timed(fn: Callable[[], float]) -> float:
        for _ in range(warmup):
            fn()
        return statistics.median(fn() for _ in range(runs)) * 1e3

    rows: list[LayerProfile] = []
    for k, (m, inp, out) in enumerate(zip(layers, layer_inputs, outputs, strict=True)):
        if progress:
            progress(k, total, f"{m.i} {m.type}")

        def fwd(m: nn.Module = m, inp: Any = inp) -> float:
            a = _fresh(inp, False)
            with torch.no_grad():
                sync()
                t0 = time.perf_counter()
                m(a)
                sync()
                return time.perf_counter() - t0

        def bwd(m: nn.Module = m, inp: Any = inp, k: int = k) -> float:
            ys = [t for t in _tensors(m(_fresh(inp, k > 0))) if t.requires_grad]
            if not ys:
                return 0.0
            grads = [torch.ones_like(t) for t in ys]
            sync()
            t0 = time.perf_counter()
            torch.autograd.backward(ys, grads)
            sync()
            dt = time.perf_counter() - t0
            m.zero_grad(set_to_none=True)
            return dt

        forward_ms = timed(fwd)
        needs_grad = k > 0 or any(p.requires_grad for p in m.parameters())
        backward_ms = timed(bwd) if backward and needs_grad else None
        rows.append(LayerProfile(
            index=int(m.i), source=m.f, module=str(m.type), params=sum(p.numel() for p in m.parameters()),
            gflops=flops[k] / 1e9, forward_ms=forward_ms, backward_ms=backward_ms,
            input_shape=shapes_of(inp), output_shape=shapes_of(out),
        ))
    if progress:
        progress(total, total, "done")
    return ProfileReport(rows, str(dev), list(hw), runs, warmup)


# ------------------------------------------------------------------------------ any nn.Module, by hooks


@dataclass
class _Call:
    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    calls_children: bool = False


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x) if not hasattr(x, "_fields") else type(x)(*(_detached(v) for v in x))
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _leaf_tensors(y: Any) -> list[torch.Tensor]:
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in _leaf_tensors(v)]
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in _leaf_tensors(v)]
    return []


def _with_grad(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(True) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_with_grad(v) for v in x)
    if isinstance(x, dict):
        return {k: _with_grad(v) for k, v in x.items()}
    return x


def module_calls(model: nn.Module, args: tuple[Any, ...]) -> list[_Call]:
    """Every module call of one forward of ``model`` on ``args``, in the order the calls start, with its
    real inputs and output (forward hooks); ``calls_children`` marks a call inside which another module
    ran (a container, or a block that delegates)."""
    calls: list[_Call] = []
    stack: list[_Call] = []
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[str, int] = {}

    def pre(m: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        for c in stack:
            c.calls_children = True
        name = names.get(id(m), type(m).__name__) or type(m).__name__
        k = seen.get(name, 0)
        seen[name] = k + 1
        call = _Call(name if k == 0 else f"{name}#{k + 1}", m, _detached(a), _detached(kw))
        calls.append(call)
        stack.append(call)

    def post(m: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
        if stack:
            stack.pop().output = _detached(out)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return calls


def profile_modules(model: nn.Module, specs: Any, *, device: str | torch.device = "cpu", runs: int = DEFAULT_RUNS,
                    warmup: int = 1, backward: bool = True, seed: int = 0,
                    progress: Progress | None = None) -> ProfileReport:
    """Profile any ``nn.Module`` by forward hooks: one row per module that computes itself (a leaf, or a
    module such as nn.MultiheadAttention that calls none of its children), timed standalone on the
    inputs it got in one forward on seeded example inputs (``specs``: InputSpec). Rows are in call order;
    ``whole_gflops`` is the whole model's count, which also holds what parents compute in their own code."""
    from torch.utils.flop_counter import FlopCounterMode

    from exporter.analysis.generic import example_args
    from exporter.stages.capture_attempts import _mha_fastpath_off

    if runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    dev = resolve_device(device)
    model = deepcopy(model).to(dev).eval()
    args = example_args(model, tuple(specs), seed)
    with _mha_fastpath_off():  # a fused kernel the flop counter cannot see
        calls = [c for c in module_calls(model, args) if not c.calls_children and c.module is not model] or \
            [c for c in module_calls(model, args) if c.module is model]
        with torch.no_grad(), FlopCounterMode(display=False) as whole:
            model(*args)

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        def timed(fn: Callable[[], float]) -> float:
            for _ in range(warmup):
                fn()
            return statistics.median(fn() for _ in range(runs)) * 1e3

        rows: list[LayerProfile] = []
        for k, c in enumerate(calls):
            if progress:
                progress(k, len(calls), f"{c.name} {type(c.module).__name__}")
            m = c.module
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                m(*c.args, **c.kwargs)

            def fwd(m: nn.Module = m, c: _Call = c) -> float:
                with torch.no_grad():
                    sync()
                    t0 = time.perf_counter()
                    m(*c.args, **c.kwargs)
                    sync()
                    return time.perf_counter() - t0

            def bwd(m: nn.Module = m, c: _Call = c) -> float:
                ys = [t for t in _leaf_tensors(m(*_with_grad(c.args), **_with_grad(c.kwargs))) if t.requires_grad]
                if not ys:
                    return 0.0
                grads = [torch.ones_like(t) for t in ys]
                sync()
                t0 = time.perf_counter()
                torch.autograd.backward(ys, grads)
                sync()
                m.zero_grad(set_to_none=True)
                return time.perf_counter() - t0

            forward_ms = timed(fwd)
            float_in = any(t.is_floating_point() for t in _leaf_tensors([c.args, c.kwargs]))
            needs_grad = float_in or any(p.requires_grad for p in m.parameters())
            backward_ms = timed(bwd) if backward and needs_grad else None
            rows.append(LayerProfile(
                index=k, source=c.name, module=type(m).__name__,  # type: ignore[arg-type]
                params=sum(p.numel() for p in m.parameters()), gflops=fc.get_total_flops() / 1e9,
                forward_ms=forward_ms, backward_ms=backward_ms,
                input_shape=shapes_of([t for t in c.args if isinstance(t, torch.Tensor)] or
                                      [t for t in c.kwargs.values() if isinstance(t, torch.Tensor)]),
                output_shape=shapes_of(_leaf_tensors(c.output)),
            ))
    if progress:
        progress(len(calls), len(calls), "done")
    first: tuple[int, ...] = tuple(specs)[0].shape if specs else ()
    hw = [int(first[-2]), int(first[-1])] if len(first) >= 2 else []
    return ProfileReport(rows, str(dev), hw, runs, warmup, inputs=[s.text() for s in specs],
                         whole_gflops=whole.get_total_flops() / 1e9)
