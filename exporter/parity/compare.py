"""The parity rule: an ONNX output is judged against a float64 forward of the same model, with
PyTorch's own fp32 error against that forward as the noise floor.

Why not a fixed tolerance: fp32 rounding grows through a deep detector, and how much depends on the
model (yolov5x's decoded boxes differ from float64 by several pixels in fp32 PyTorch itself, yolov5n's by
hundredths), while a broken graph can differ by less than that. ``|onnx - torch| <= atol + rtol*|torch|``
cannot tell the two apart; the ratio of the file's error to PyTorch fp32's own error can.

The rule, per output and per column group (see :func:`yolo_groups`):

    pass  when  q99.9(err_onnx) <= K_Q   * q99.9(err_fp32) + eps
           and  max(err_onnx)   <= K_MAX * max(err_fp32)   + eps

with ``err = |x - float64|``, normalised per group. The constants come from measuring the whole built-in
zoo (n..x, n6..x6, v5.0, csp; fused and keep-bn; static and dynamic) and seeded faults
(``bench/parity_rule.py``, results in bench/parity_rule_results.md): at 640, honest files (30 zoo files,
30 official-layout checkpoint files, TorchScript and dynamo, static and dynamic) reach at most 1.26x at
the 99.9th percentile and 2.23x at the maximum; the mildest seeded fault (a conv weight scaled by 1.001,
two channels swapped, an anchor off by one pixel, a stride doubled, fp16-rounded weights; batch
statistics and a value baked in by the tracer in the tests) is 134x. K_Q = 3 and K_MAX = 8 sit well
inside that gap on both sides. A float16 file's floor is float16 noise, about 5000x fp32's, so there
only faults of that size are visible (tests/pipeline/test_half.py). The maximum gets a wider margin because one element's
rounding is noisier than a percentile. ``eps`` keeps an exact output (error 0 in fp32 too) from failing
on one rounding step: about one fp32 ulp of the group's typical magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.parity.report import GroupParity, OutputParity

K_Q = 3.0  # allowed multiple of PyTorch fp32's error at the 99.9th percentile
K_MAX = 8.0  # allowed multiple at the maximum (a backstop for a few elements far off)
QUANTILE = 0.999
EPS_ABS = 1e-7  # about one fp32 ulp of a probability near 1
EPS_ULP = 2.0**-22  # two fp32 ulps of the group's 99.9th-percentile magnitude

# The explicit rule, used only where the user asks for it (--atol/--rtol) or no float64 forward ran.
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3


@dataclass(frozen=True)
class Group:
    """Columns ``cols`` (a range of the last axis; None: everything) of an output judged together, their
    errors divided by ``scale`` (broadcast over the selected columns; None: as they are)."""

    name: str
    unit: str
    cols: tuple[int, int] | None = None
    scale: np.ndarray | None = None

    def view(self, a: np.ndarray) -> np.ndarray:
        return a if self.cols is None else a[..., self.cols[0]:self.cols[1]]

    def take(self, e: np.ndarray) -> np.ndarray:
        v = self.view(e)
        return v if self.scale is None else v / self.scale

    def index(self, k: tuple[Any, ...]) -> tuple[int, ...]:
        """An index of the view -> the same element's index in the whole output."""
        k = tuple(int(i) for i in k)
        return k if self.cols is None else (*k[:-1], self.cols[0] + k[-1])


def whole(unit: str = "as output") -> list[Group]:
    return [Group("all", unit)]


@dataclass(frozen=True)
class YoloLayout:
    """What the decoded YOLOv5 output's rows are: per level, ``na * ny * nx`` rows with stride ``s``."""

    strides: tuple[float, ...]
    anchors_px: tuple[tuple[tuple[float, float], ...], ...]  # per level, per anchor: (w, h) in pixels
    no: int

    def rows(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per output row: its stride, anchor width and anchor height (pixels)."""
        st, aw, ah = [], [], []
        for s, anchors in zip(self.strides, self.anchors_px, strict=True):
            cells = (h // int(s)) * (w // int(s))
            for a_w, a_h in anchors:
                st.append(np.full(cells, s))
                aw.append(np.full(cells, a_w))
                ah.append(np.full(cells, a_h))
        return np.concatenate(st), np.concatenate(aw), np.concatenate(ah)


def yolo_groups(layout: YoloLayout, shape: tuple[int, ...], h: int, w: int) -> list[Group] | None:
    """Column groups of a decoded ``(bs, N, 5 + nc)`` output: xy in grid cells (error / stride), wh in
    anchors (error / anchor size), objectness and class scores as probabilities. None when the output
    does not have the layout's shape (then it is judged as a whole)."""
    stride, aw, ah = layout.rows(h, w)
    if len(shape) != 3 or shape[1] != stride.size or shape[2] != layout.no:
        return None
    return [
        Group("xy", "grid cells", (0, 2), stride[None, :, None]),
        Group("wh", "anchors", (2, 4), np.stack((aw, ah), -1)[None]),
        Group("obj", "probability", (4, 5)),
        Group("cls", "probability", (5, layout.no)),
    ]


#: from this many float64 elements on, :func:`_q` selects the top of the array before it partitions
SELECT_MIN = 1 << 15


def _q(a: np.ndarray) -> float:
    """The 99.9th percentile, exactly ``np.quantile(a, QUANTILE)`` (numpy's linear rule); NaN when ``a``
    holds one (numpy's quantile says so too).

    It depends only on the two order statistics at ranks ``lo = floor(0.999 * (n - 1))`` and ``lo + 1``,
    both in the top 0.1% of the array. A large float64 array is cut to the elements at or above a
    threshold read off a strided sample (a few times the top 0.1% pass it), and only that part is
    partitioned; numpy's own interpolation of the two values (a two-element quantile at the same
    fraction) gives the same bits. When the sample misleads (fewer elements pass than the top needs),
    the whole array goes to numpy."""
    n = a.size
    if n == 0:
        return 0.0
    if n < SELECT_MIN or a.dtype != np.float64:
        return float(np.quantile(a, QUANTILE))
    flat = a.reshape(-1)
    if math.isnan(flat.max()):  # NaN sorts last: numpy's quantile is NaN then
        return math.nan
    virtual = (n - 1) * QUANTILE  # numpy's virtual index, its floor and the fraction between the two ranks
    lo = math.floor(virtual)
    need = n - lo  # the elements at ranks lo .. n - 1
    sample = flat[::max(1, n // 8192)]
    r = max(0, sample.size - 8 - 4 * math.ceil(need * sample.size / n))
    top = flat[flat >= np.partition(sample, r)[r]]
    if top.size < need:
        return float(np.quantile(flat, QUANTILE))
    j = lo - (n - top.size)  # rank lo of the array is rank j of its top
    pair = np.partition(top, (j, j + 1))[j:j + 2]
    return float(np.quantile(pair, virtual - lo))


def _max(a: np.ndarray) -> float:
    """The maximum; NaN when ``a`` holds one (``max`` propagates it)."""
    return float(a.max()) if a.size else 0.0


def _figures(name: str, out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    """max abs, max rel (where |ref| > 1e-3), mean abs and cosine of ``out`` against ``ref``."""
    diff = np.abs(out - ref)
    if diff.size == 0:
        return 0.0, 0.0, 0.0, 1.0
    aref = np.abs(ref)
    big = aref > 1e-3
    # diff / |ref| where |ref| > 1e-3 (0 elsewhere; never below the largest ratio, which is >= 0)
    max_rel = float(np.divide(diff, aref, out=np.zeros_like(diff), where=big).max()) if big.any() else 0.0
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.dot(ref.ravel(), out.ravel()) / denom) if denom else float(np.array_equal(ref, out))
    return _max(diff), max_rel, float(np.mean(diff)), cosine


def _where(idx: tuple[Any, ...], out: np.ndarray, ref: np.ndarray, against: str) -> str:
    return f"{list(map(int, idx))}: onnx {out[idx]:.6g} vs {against} {ref[idx]:.6g}"


def shape_mismatch(name: str, out: np.ndarray, ref: np.ndarray) -> OutputParity:
    return OutputParity(name, list(out.shape), "shape", False, math.inf, math.inf, math.inf, 0.0,
                        worst=f"shape {list(out.shape)} != reference {list(ref.shape)}")


def floor_stats(pairs: list[tuple[np.ndarray, np.ndarray, list[Group]]]) -> dict[str, tuple[float, float]]:
    """PyTorch's own error per group, pooled over every input: ``(q99.9, max)`` of ``|fp32 - f64|`` for
    each ``(fp32, f64, groups)`` of one output. The floor is a property of the model and the precision,
    not of one input; pooling makes it steadier for small outputs (a classifier's few logits), where the
    maximum of a handful of rounding errors is itself noise."""
    errs: dict[str, list[np.ndarray]] = {}
    for fp32, f64, groups in pairs:
        if fp32.shape != f64.shape:
            continue
        e = np.abs(fp32.astype(np.float64) - f64)
        for g in groups:
            errs.setdefault(g.name, []).append(g.take(e).ravel())
    return {k: (_q(np.concatenate(v)), _max(np.concatenate(v))) for k, v in errs.items()}


def compare_floor(name: str, out: np.ndarray, fp32: np.ndarray, f64: np.ndarray, groups: list[Group],
                  capture: np.ndarray | None = None,
                  floor: dict[str, tuple[float, float]] | None = None) -> OutputParity:
    """The noise-floor rule: ``out`` (ONNX) and ``fp32`` (PyTorch) both against ``f64`` (the truth).
    ``floor``: PyTorch's error per group pooled over every input (:func:`floor_stats`); without it, this
    input's own."""
    if out.shape != f64.shape:
        return shape_mismatch(name, out, f64)
    out64, t32 = out.astype(np.float64), fp32.astype(np.float64)
    e_onnx = np.abs(out64 - f64)
    mag = np.abs(f64)
    results, worst_text, worst_score = [], "", -math.inf
    for g in groups:
        eo = g.take(e_onnx)
        eps = EPS_ABS + EPS_ULP * _q(g.take(mag))
        oq, om = _q(eo), _max(eo)
        if floor and g.name in floor:
            tq, tm = floor[g.name]
        else:
            et = g.take(np.abs(t32 - f64))
            tq, tm = _q(et), _max(et)
        allowed_q, allowed_max = K_Q * tq + eps, K_MAX * tm + eps
        ok = not (math.isnan(oq) or math.isnan(om)) and oq <= allowed_q and om <= allowed_max
        results.append(GroupParity(g.name, g.unit, oq, om, tq, tm, allowed_q, allowed_max, ok))
        score = math.inf if math.isnan(om) else om / allowed_max
        if eo.size and score > worst_score:  # the element that comes nearest its allowance (or is furthest past)
            worst_score = score
            worst = np.nan_to_num(eo, nan=np.inf) if math.isnan(om) else eo  # a NaN counts as the worst
            k = g.index(np.unravel_index(int(np.argmax(worst)), eo.shape))
            worst_text = (f"{g.name} {list(k)}: onnx {out64[k]:.6g}, float64 {f64[k]:.6g}, "
                          f"PyTorch {t32[k]:.6g}")
    max_abs, max_rel, mean_abs, cosine = _figures(name, out64, t32)
    cap = _max(np.abs(out64 - capture.astype(np.float64))) if capture is not None and capture.shape == out.shape \
        else None
    return OutputParity(name, list(out.shape), "noise-floor", all(r.passed for r in results), max_abs, max_rel,
                        mean_abs, cosine, results, capture_max_abs=cap, worst=worst_text)


def compare_tolerance(name: str, out: np.ndarray, ref: np.ndarray, atol: float, rtol: float,
                      capture: np.ndarray | None = None) -> OutputParity:
    """The explicit rule, element-wise as ``numpy.allclose(out, ref, rtol, atol)``: ``|out - ref| <=
    atol + rtol * |ref|`` everywhere (NaN fails)."""
    if ref.shape != out.shape:
        return shape_mismatch(name, out, ref)
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out64 - ref64)
    bad = ~(diff <= atol + rtol * np.abs(ref64))
    max_abs, max_rel, mean_abs, cosine = _figures(name, out64, ref64)
    worst = ""
    if diff.size:
        pick = np.where(bad, np.nan_to_num(diff, nan=np.inf), -1.0) if bad.any() else diff
        idx = np.unravel_index(int(np.argmax(pick)), diff.shape)
        worst = _where(idx, out64, ref64, "torch")
    cap = _max(np.abs(out64 - capture.astype(np.float64))) if capture is not None and capture.shape == out.shape \
        else None
    return OutputParity(name, list(out.shape), "tolerance", not bad.any(), max_abs, max_rel, mean_abs, cosine,
                        atol=atol, rtol=rtol, capture_max_abs=cap, worst=worst)
