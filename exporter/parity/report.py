"""Parity report types and their rendering (text table, one-line summary, JSON-ready dict).

A report is truthy when every provider that ran passed and every required provider ran.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class GroupParity:
    """One column group of one output (e.g. decoded boxes' ``xy``), errors against the float64 truth.

    Errors are normalised as the group says (``xy`` by the level's stride, ``wh`` by the anchor size in
    pixels, scores and logits as they are). ``onnx_*`` is the file's error, ``torch_*`` PyTorch fp32's own
    error: the noise floor the file is judged against.
    """

    name: str
    unit: str
    onnx_q: float  # 99.9th percentile of the ONNX error
    onnx_max: float
    torch_q: float  # the same for PyTorch fp32
    torch_max: float
    allowed_q: float
    allowed_max: float
    passed: bool

    @property
    def ratio(self) -> float:
        """The ONNX error at the 99.9th percentile as a multiple of PyTorch fp32's (inf when that is 0)."""
        return _ratio(self.onnx_q, self.torch_q)

    @property
    def ratio_max(self) -> float:
        return _ratio(self.onnx_max, self.torch_max)


def _ratio(a: float, b: float) -> float:
    if math.isnan(a):
        return math.nan
    if b > 0:
        return a / b
    return 0.0 if a == 0 else math.inf


@dataclass
class OutputParity:
    """One output of one input on one provider."""

    name: str
    shape: list[int]
    rule: str  # 'noise-floor' | 'tolerance'
    passed: bool
    max_abs: float  # |onnx - torch fp32|, the familiar figure (what the tolerance rule judges)
    max_rel: float  # over elements with |torch| > 1e-3 (relative error near zero says nothing)
    mean_abs: float
    cosine: float
    groups: list[GroupParity] = field(default_factory=list)  # noise-floor rule: the verdict per group
    atol: float | None = None  # tolerance rule only
    rtol: float | None = None
    capture_max_abs: float | None = None  # |onnx - the exact module exported (the fused copy when fused)|
    worst: str = ""  # where it is worst, e.g. "xy [0, 1234, 1]: onnx 51.66 vs float64 51.60"

    @property
    def ratio(self) -> float:
        """The largest group ratio (ONNX error / PyTorch fp32 error at the 99.9th percentile)."""
        return max((g.ratio for g in self.groups), default=math.nan)

    @property
    def ratio_max(self) -> float:
        return max((g.ratio_max for g in self.groups), default=math.nan)


@dataclass
class CaseParity:
    """One input (shape, label) on one provider."""

    shape: list[int]
    input: str
    outputs: list[OutputParity]
    fusion_max_abs: float | None = None  # |fused - unfused PyTorch fp32| (max over outputs), when fused
    detections: Any = None  # exporter.parity.detections.DetectionReport, for decoded YOLO outputs

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class ProviderParity:
    requested: str
    provider: str  # the onnxruntime provider asked for
    ran: bool
    ran_on: list[str]  # session.get_providers()
    reason: str = ""  # why it did not run
    cases: list[CaseParity] = field(default_factory=list)
    required: bool = False
    divergence: str = ""  # on failure: the first layer whose error stands out from its own fp32 noise
    vs_cpu_max_abs: float | None = None  # provider figure: |this provider - CPU| over every output and input
    repeat_max_abs: float | None = None  # run-to-run spread with --repeat (0 on a deterministic provider)

    @property
    def passed(self) -> bool | None:
        """True/False when it ran; None when it did not."""
        return all(c.passed for c in self.cases) if self.ran else None

    def worst(self) -> list[OutputParity]:
        """Per output, its worst case (a failure first, else the largest ratio or max abs), with the capture
        figure of whichever input measured it (the exported module's forward runs on the first only)."""
        by_name: dict[str, OutputParity] = {}
        capture: dict[str, float] = {}
        for c in self.cases:
            for o in c.outputs:
                cur = by_name.get(o.name)
                if cur is None or _badness(o) > _badness(cur):
                    by_name[o.name] = o
                if o.capture_max_abs is not None:
                    capture[o.name] = max(o.capture_max_abs, capture.get(o.name, 0.0))
        return [o if o.capture_max_abs is not None or o.name not in capture else replace(o, capture_max_abs=capture[o.name])
                for o in by_name.values()]


def _badness(o: OutputParity) -> tuple[bool, float]:
    r = o.ratio
    return (not o.passed, o.max_abs if math.isnan(r) else r)


@dataclass
class ParityReport:
    """Truthy when every provider that ran passed and every required provider ran."""

    reference: str  # 'eval' or 'train'
    providers: list[ProviderParity]
    inputs: str
    tolerance: str  # the rule in words
    truth: str = "float64"  # 'float64' or why there is none (then the tolerance rule judged)
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"  # the file's: fp32 or fp16 (its noise floor is PyTorch in that precision)
    degenerate: list[str] = field(default_factory=list)  # outputs whose comparison says nothing
    strict: bool = False  # degenerate outputs fail the check

    @property
    def passed(self) -> bool:
        ran = [p for p in self.providers if p.ran]
        if not ran:
            return False
        if any(p.required and not p.ran for p in self.providers):
            return False
        if self.strict and self.degenerate:
            return False
        return all(p.passed for p in ran)

    def __bool__(self) -> bool:
        return self.passed

    # ------------------------------------------------------------------------------ rendering

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "reference": self.reference, "inputs": self.inputs,
                               "tolerance": self.tolerance, "truth": self.truth, "precision": self.precision,
                               "notes": list(self.notes), "degenerate": list(self.degenerate),
                               "strict": self.strict, "providers": []}
        for p in self.providers:
            out["providers"].append({
                "requested": p.requested, "provider": p.provider, "ran": p.ran, "ran_on": p.ran_on,
                "reason": p.reason, "passed": p.passed, "required": p.required, "divergence": p.divergence,
                "vs_cpu_max_abs": p.vs_cpu_max_abs, "repeat_max_abs": p.repeat_max_abs,
                "outputs": [_output_dict(o) for o in p.worst()],
                "cases": [{"shape": c.shape, "input": c.input, "passed": c.passed,
                           "fusion_max_abs": c.fusion_max_abs,
                           "detections": c.detections.to_dict() if c.detections is not None else None,
                           "outputs": [_output_dict(o) for o in c.outputs]} for c in p.cases],
            })
        return out

    def summary(self) -> str:
        """One short cell per provider, e.g. 'cpu: pass (1.1x fp32 noise)' or 'cuda: not available'.
        The ratio is the file's error against float64 as a multiple of PyTorch's own in the file's precision."""
        cells = []
        for p in self.providers:
            if not p.ran:
                cells.append(f"{p.requested}: not available" + (" (required)" if p.required else ""))
                continue
            outs = [o for c in p.cases for o in c.outputs]
            verdict = "pass" if p.passed else "FAIL"
            ratios = [o.ratio for o in outs if o.groups and not math.isnan(o.ratio)]
            if ratios:
                cells.append(f"{p.requested}: {verdict} ({_times(max(ratios))} {self.precision} noise)")
            else:
                worst = max((o.max_abs for o in outs), default=0.0)
                cells.append(f"{p.requested}: {verdict} (max abs {worst:.1e})")
        if self.degenerate:
            cells.append("warning: degenerate output" + (" (strict: FAIL)" if self.strict else ""))
        return "; ".join(cells)

    def format(self, color: bool = False, width: int | None = None) -> str:
        """A readable table: one row per provider, input, output and column group, then the sources of
        error, the detections, and why a provider did not run. ``color``/``width``: see
        :func:`exporter.tables.render` (the CLI sets them for a terminal)."""
        from exporter.tables import render

        lines = [f"parity against PyTorch ({self.reference} reference, truth: {self.truth}), {self.inputs}",
                 f"  rule: {self.tolerance}"]
        columns = ("provider", "input", "output", "max_abs", "err q99.9", f"{self.precision} q99.9", "ratio",
                   "max ratio", "result")
        rows: list[tuple[str, ...]] = []
        for p in self.providers:
            if not p.ran:
                continue
            for c in p.cases:
                for o in c.outputs:
                    if o.groups:
                        for j, g in enumerate(o.groups):
                            rows.append((p.requested, c.input, f"{o.name}[{g.name}]",
                                         f"{o.max_abs:.2e}" if j == 0 else "", f"{g.onnx_q:.2e}", f"{g.torch_q:.2e}",
                                         _times(g.ratio), _times(g.ratio_max), "pass" if g.passed else "FAIL"))
                    else:
                        tol = f" atol {o.atol:g} rtol {o.rtol:g}" if o.atol is not None else ""
                        rows.append((p.requested, c.input, o.name, f"{o.max_abs:.2e}", "", "", "", "",
                                     ("pass" if o.passed else "FAIL") + tol))
        if rows:
            table = render(columns, rows, right=columns[3:8], color=color, width=width and width - 2)
            lines.extend("  " + ln if ln else ln for ln in table.rstrip("\n").splitlines())
        for p in self.providers:
            if p.ran:
                lines.extend(_provider_lines(p))
        lines.extend(f"  note: {n}" for n in self.notes)
        tag = " (--strict: FAIL)" if self.strict else ""
        lines.extend(f"  warning: degenerate comparison: {d}{tag}" for d in self.degenerate)
        for p in self.providers:
            if not p.ran:
                tag = " (required: FAIL)" if p.required else ""
                lines.append(f"  {p.requested}: not available{tag}: {p.reason}")
        lines.append(f"  => {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _provider_lines(p: ProviderParity) -> list[str]:
    lines = []
    cap = [o.capture_max_abs for c in p.cases for o in c.outputs if o.capture_max_abs is not None]
    fus = [c.fusion_max_abs for c in p.cases if c.fusion_max_abs is not None]
    parts = []
    if cap:
        parts.append(f"capture {max(cap):.2e} (ONNX vs the module exported)")
    if fus:
        parts.append(f"fusion {max(fus):.2e} (fused vs unfused PyTorch)")
    if p.vs_cpu_max_abs is not None:
        parts.append(f"provider {p.vs_cpu_max_abs:.2e} ({p.requested} vs cpu)")
    if p.repeat_max_abs is not None:
        parts.append(f"run-to-run {p.repeat_max_abs:.2e}" + (" (not deterministic)" if p.repeat_max_abs else ""))
    if parts:
        lines.append(f"  {p.requested}: max abs by source: " + "; ".join(parts))
    for c in p.cases:
        if c.detections is not None:
            lines.append(f"  {p.requested} {_clip(c.input, 24)}: {c.detections.line()}")
    worst = [o for o in p.worst() if not o.passed and o.worst]
    lines.extend(f"  {p.requested}: {o.name} FAIL at {o.worst}" for o in worst)
    if p.divergence:
        lines.append(f"  {p.requested}: {p.divergence}")
    return lines


def _output_dict(o: OutputParity) -> dict[str, Any]:
    d = asdict(o)
    d["ratio"] = _json_num(o.ratio)
    d["ratio_max"] = _json_num(o.ratio_max)
    for g, gd in zip(o.groups, d["groups"], strict=True):
        gd["ratio"], gd["ratio_max"] = _json_num(g.ratio), _json_num(g.ratio_max)
    return d


def _json_num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _times(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"
