"""Numerical parity of an ONNX file against its PyTorch model on onnxruntime providers.

For every input (never the capture example) the truth is the source model's float64 forward on the
CPU; the file passes when its error against that truth is within a small multiple of PyTorch fp32's own
error (see :mod:`exporter.parity.compare`). ``--atol/--rtol`` replace that rule by an explicit
element-wise tolerance against PyTorch fp32. The provider that really ran is read from the session: a
CUDA request that fell back to CPU is reported as not run, never as a pass.

Modules: ``inputs`` (shapes and images), ``reference`` (the PyTorch forwards), ``runtime`` (onnxruntime
sessions), ``compare`` (the rule), ``detections`` (NMS agreement, information only), ``divergence``
(the first layer that stands out), ``report`` (types and rendering).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ConfigError, InputError
from exporter.options import ParityOptions
from exporter.parity.compare import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    K_MAX,
    K_Q,
    compare_floor,
    compare_tolerance,
    whole,
    yolo_groups,
)
from exporter.parity.inputs import default_shapes, image_files, letterbox, make_inputs
from exporter.parity.reference import (
    Reference,
    build_reference,
    exported_forwards,
    file_precision,
    fused_copy,
    reference_model,
)
from exporter.parity.report import CaseParity, GroupParity, OutputParity, ParityReport, ProviderParity
from exporter.parity.runtime import open_session

__all__ = [
    "CaseParity", "GroupParity", "OutputParity", "ParityReport", "ProviderParity", "Reference",
    "build_reference", "check_parity", "compare_floor", "compare_tolerance", "compare_with", "default_shapes",
    "file_precision",
    "fused_copy", "image_files", "letterbox", "make_inputs", "open_session", "reference_model",
]

def floor_rule(floor: str = "PyTorch fp32") -> str:
    return (f"error against float64 <= {K_Q:g}x {floor}'s own at the 99.9th percentile and <= {K_MAX:g}x at the "
            "maximum, per output and column group")


def _tolerance_text(atol: float, rtol: float, output_atol: dict[str, float]) -> str:
    tol = f"|onnx - torch| <= {atol:g} + {rtol:g} * |torch|"
    if output_atol:
        tol += f" ({', '.join(f'{k}: atol {v:g}' for k, v in output_atol.items())})"
    return tol


def compare_with(onnx_model: Any, ref: Reference, *, providers: tuple[str, ...] | list[str] = ("cpu",),
                 require: tuple[str, ...] | list[str] = (), atol: float | None = None, rtol: float | None = None,
                 output_atol: dict[str, float] | None = None, model: Any = None, detections: bool = True,
                 repeat: int = 1, strict: bool = False) -> ParityReport:
    """Run ``onnx_model`` on each provider for every reference input and compare.

    Without ``atol``/``rtol`` the noise-floor rule judges (where the reference has a float64 truth);
    with them, or per output in ``output_atol``, the explicit tolerance does. With ``model`` (the PyTorch
    model of ``ref``) a failing provider also names the first layer whose error stands out. An output
    that is constant on every input is reported as degenerate (``strict``: a failure)."""
    from exporter import progress
    from exporter.parity.runtime import run

    opened = _open(onnx_model)
    data, proto = opened.data, opened.proto
    output_atol = dict(output_atol or {})
    out_names = [o.name for o in proto.graph.output]
    unknown = sorted(set(output_atol) - set(out_names))
    if unknown:
        raise ConfigError(f"--atol {unknown[0]}=...: the file has no output {unknown[0]!r} "
                          f"(outputs: {', '.join(out_names)})")
    if repeat < 1:
        raise ConfigError("--repeat must be at least 1")
    explicit = atol is not None or rtol is not None
    a = DEFAULT_ATOL if atol is None else atol
    r = DEFAULT_RTOL if rtol is None else rtol
    has_truth = all(c.f64 is not None for c in ref.cases)
    notes = list(ref.notes)
    if explicit:
        rule = _tolerance_text(a, r, output_atol)
    elif has_truth:
        rule = floor_rule(ref.floor) + (f"; tolerance for {', '.join(output_atol)}: {_tolerance_text(a, r, output_atol)}"
                             if output_atol else "")
    else:
        rule = _tolerance_text(a, r, output_atol)
        notes.append(f"no float64 truth ({ref.no_f64}): judged by the fixed tolerance instead")
    report = ParityReport(ref.mode, [], ref.description, rule, "float64" if has_truth else "none", notes,
                          "fp16" if ref.precision == "float16" else "fp32")
    runs: dict[str, list[list[np.ndarray]]] = {}
    for requested in dict.fromkeys([*providers, *require]):
        sess, result = open_session(data, requested)
        result.required = requested in require
        report.providers.append(result)
        if sess is None or not result.ran:
            continue
        runs[requested] = []
        floors = _pooled_floors(ref, requested)
        for k, case in enumerate(ref.cases, 1):
            progress.step(f"parity {requested}: input", k, len(ref.cases), kind="parity")
            outs = run(sess, proto, case.feeds, requested)
            if len(outs) != len(case.fp32):
                raise InputError(f"the ONNX file has {len(outs)} outputs but the model gives {len(case.fp32)}: "
                                 "is it the model this file was exported from?")
            runs[requested].append(outs)
            result.cases.append(_case(case, outs, out_names, ref, explicit, has_truth, a, r, output_atol, detections,
                                      requested, floors))
        if repeat > 1 and ref.cases:
            first = runs[requested][0]
            spread = 0.0
            for _ in range(repeat - 1):
                again = run(sess, proto, ref.cases[0].feeds, requested)
                spread = max([spread, *(_max_abs(x, y) for x, y in zip(first, again, strict=True))])
            result.repeat_max_abs = spread
        failing = next((i for i, c in enumerate(result.cases) if not c.passed), None)
        if failing is not None and model is not None and has_truth and not explicit and not ref.cases[failing].more:
            from exporter.parity.divergence import locate

            found = locate(proto, model, ref.cases[failing].x, provider=result.provider,
                           training=ref.mode == "train", head=ref.head)
            result.divergence = str(found)
    if ref.exported_later is not None:
        _sources_on_failure(report, ref, runs, out_names, explicit, has_truth, a, r, output_atol, detections)
    report.degenerate = degenerate_outputs(out_names, ref)
    report.strict = strict
    if "cpu" in runs:
        for p in report.providers:
            if p.requested != "cpu" and p.requested in runs:
                p.vs_cpu_max_abs = max((_max_abs(x, y) for xs, ys in zip(runs[p.requested], runs["cpu"], strict=True)
                                        for x, y in zip(xs, ys, strict=True)), default=0.0)
    return report


def _sources_on_failure(report: ParityReport, ref: Reference, runs: dict[str, list[list[np.ndarray]]],
                        out_names: list[str], explicit: bool, has_truth: bool, atol: float, rtol: float,
                        output_atol: dict[str, float], detections: bool) -> None:
    """The capture and fusion figures of a fused file checked on its own, made only when a provider failed
    (the fused copy and its forward on the first input); on a pass, a note says they were not measured."""
    if all(c.passed for p in report.providers for c in p.cases):
        report.notes.append("capture and fusion figures not measured: nothing failed (--sources measures them)")
        return
    later, ref.exported_later = ref.exported_later, None
    assert later is not None
    for case, ye in zip(ref.cases, later(), strict=True):
        case.exported = ye
    for p in report.providers:
        floors = _pooled_floors(ref, p.requested)
        for k, (case, outs) in enumerate(zip(ref.cases, runs.get(p.requested, []), strict=False)):
            if case.exported is not None:
                p.cases[k] = _case(case, outs, out_names, ref, explicit, has_truth, atol, rtol, output_atol,
                                   detections, p.requested, floors)


def degenerate_outputs(names: list[str], ref: Reference) -> list[str]:
    """Outputs whose reference is empty, or one constant value on every input: a comparison of those says
    nothing about the graph (a zero-initialised head, no detections at this threshold, a dead branch)."""
    out = []
    for i, name in enumerate(names):
        values = [c.f64[i] if c.f64 is not None else c.fp32[i] for c in ref.cases if i < len(c.fp32)]
        if not values:
            continue
        if all(v.size == 0 for v in values):
            out.append(f"{name} is empty on every input (shape {list(values[0].shape)}): nothing was compared")
            continue
        flat = np.concatenate([v.ravel() for v in values if v.size])
        lo, hi = float(flat.min()), float(flat.max())
        if lo == hi:
            hint = "a zero-initialised head or a dead branch?" if lo == 0 else "a constant output?"
            out.append(f"{name} is {lo:g} everywhere on every input: the comparison says nothing ({hint} "
                       "try trained weights or --images)")
    return out


def _max_abs(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape != y.shape:
        return float("inf")
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.size else 0.0


def _groups(ref: Reference, case: Any, i: int, shape: tuple[int, ...]) -> list[Any]:
    """The column groups of output ``i`` for this case (decoded YOLO boxes), or the output as a whole."""
    groups = None
    if ref.layout is not None and case.x.ndim == 4:
        groups = yolo_groups(ref.layout, shape, case.x.shape[2], case.x.shape[3])
    return groups or whole()


def _pooled_floors(ref: Reference, provider: str) -> Any:
    """``floors(i)``: PyTorch's error per group of output ``i`` pooled over every input, computed once."""
    from functools import cache

    from exporter.parity.compare import floor_stats

    @cache
    def floors(i: int) -> dict[str, tuple[float, float]]:
        return floor_stats([(c.noise_for(provider)[i], c.f64[i], _groups(ref, c, i, c.f64[i].shape))
                            for c in ref.cases if c.f64 is not None])
    return floors


def _case(case: Any, outs: list[np.ndarray], names: list[str], ref: Reference, explicit: bool, has_truth: bool,
          atol: float, rtol: float, output_atol: dict[str, float], detections: bool, provider: str,
          floors: Any = None) -> CaseParity:
    # the capture figure: against the exact module exported, where its forward ran (a fused file's first
    # input); the source's fp32 forward is that module for an unfused file
    captured = case.exported if case.exported is not None else None if ref.fused else case.fp32
    results: list[OutputParity] = []
    for i, (name, out) in enumerate(zip(names, outs, strict=True)):
        floor = case.noise_for(provider)[i]
        if explicit or not has_truth or name in output_atol:
            results.append(compare_tolerance(name, out, floor, output_atol.get(name, atol), rtol,
                                             captured[i] if captured else None))
            continue
        results.append(compare_floor(name, out, floor, case.f64[i], _groups(ref, case, i, out.shape),
                                     captured[i] if captured else None, floors(i)))
    fusion = None
    if case.exported is not None:
        fusion = max((_max_abs(x, y) for x, y in zip(case.exported, case.fp32, strict=True)), default=0.0)
    dets = None
    if detections and ref.layout is not None and has_truth and len(outs) == 1 and results[0].groups \
            and results[0].groups[0].name == "xy":
        from exporter.parity.detections import compare_detections

        dets = compare_detections(outs[0], case.noise_for(provider)[0], case.f64[0], baseline=ref.floor)
    return CaseParity(list(case.x.shape), case.label, results, fusion, dets)


_DEFAULT = ParityOptions()  # check_parity's defaults: the parity options' own


def check_parity(
    onnx_model: Any,
    model: Any,
    *,
    providers: Sequence[str] = _DEFAULT.providers,
    require: Sequence[str] = _DEFAULT.require,
    shapes: list[tuple[int, ...]] | None = None,
    inputs: int | None = _DEFAULT.inputs,
    images: str | None = _DEFAULT.images,
    atol: float | None = _DEFAULT.atol,
    rtol: float | None = _DEFAULT.rtol,
    output_atol: Mapping[str, float] | None = None,
    training: bool | None = None,
    head: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    detections: bool = _DEFAULT.detections,
    repeat: int = 1,
    exported: Any = None,
    strict: bool = _DEFAULT.strict,
    sources: bool | None = None,
) -> ParityReport:
    """Compare ``onnx_model`` (path, bytes or ModelProto) with the PyTorch ``model``.

    The parity keywords are :class:`~exporter.options.ParityOptions`' fields, with its defaults and
    its validation (``output_atol`` None: none). ``training``/``head``/``shapes`` default to what the
    file's yexport metadata says (a training-mode file is compared with a train-mode forward on a copy;
    a fused file's capture error is measured against a fused copy). ``sources``: whether that fused copy
    is made and run for the capture and fusion figures (on the first input): True always, False never, None
    (the default) only when a provider fails, where they say where the error comes from; the verdict never
    depends on them. Returns a :class:`ParityReport` (truthy on pass)."""
    o = ParityOptions(providers=tuple(providers), require=tuple(require), atol=atol, rtol=rtol,
                      output_atol=dict(output_atol or {}), inputs=inputs, images=images, strict=strict,
                      detections=detections).validate()
    opened = _open(onnx_model)
    proto = opened.proto
    meta = {p.key: p.value for p in proto.metadata_props}
    if training is None:
        training = meta.get("yexport.training") == "1"
    if head is None:
        head = meta.get("yexport.head", "decode")
    # a fused file: the module exported is a fused copy of the model, made here (and run as it is)
    fused = exported is None and meta.get("yexport.keep_bn") == "0" and hasattr(model, "fuse")
    own = fused and bool(sources)
    if own:
        exported = fused_copy(model)
    explicit = o.atol is not None or o.rtol is not None
    ref = build_reference(model, shapes or default_shapes(proto), inputs=o.inputs, images=o.images, training=training,
                          head=head, seed=seed, device=device, exported=exported, truth=not explicit,
                          precision=file_precision(proto), cuda_floor="cuda" in (*o.providers, *o.require),
                          own_exported=own)
    if fused and not sources:
        ref.fused = True  # the capture figure is against the fused copy, never the unfused forward
        if sources is None:
            ref.exported_later = lambda: exported_forwards(fused_copy(model), ref, head=head, training=training,
                                                           device=device, copy=False)
    return compare_with(opened, ref, providers=o.providers, require=o.require, atol=o.atol, rtol=o.rtol,
                        output_atol=o.output_atol, model=model, detections=o.detections, repeat=repeat,
                        strict=o.strict)


@dataclass(frozen=True)
class _Opened:
    """A graph as onnxruntime opens it (``data``: bytes, or the path of a file whose weights are external
    data: onnxruntime reads those itself, one protobuf could not hold them) and its parsed structure
    (``proto``; without the external weights): parsed once, however many comparisons use it."""

    data: bytes | str
    proto: Any


def _open(model: Any) -> _Opened:
    """``model`` (bytes, path or ModelProto) parsed once; a path goes through the guarded loader (missing,
    FIFO, directory, corrupt: one-line input errors; every external reference checked: folder, sizes)."""
    if isinstance(model, _Opened):
        return model
    if isinstance(model, bytes):
        from exporter.graph.onnx_pb import messages  # the message classes; no import of onnx itself

        return _Opened(model, messages().ModelProto.FromString(model))
    if isinstance(model, (str, Path)):
        from exporter.graph.load import load_with_bytes

        proto, data = load_with_bytes(model)
        return _Opened(data if data is not None else str(model), proto)
    return _Opened(model.SerializeToString(), model)
