"""``f32_text`` (the float attributes of snapshot text) prints what numpy's ``str(np.float32(x))`` prints,
without importing numpy: the snapshot goldens were written with numpy's text."""

from __future__ import annotations

import numpy as np

from exporter.graph.dtypes import f32_text

EDGES = [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 1e39, -1e39,
         float("inf"), -float("inf"), float("nan"), -float("nan"), 0.1, 0.2, 0.3, 0.5, -0.75, 1.0, 2.5, 10.0,
         100.0, 9.999999e-5, 1e-4, 0.0001234, 0.001, 65504.0, 999999.0, 999999.9, 1e6, 1000001.0, 1234567.0,
         16777216.0, 123456789.0, 1e16, 1e-5, 1e-7, 1048576.25, 0.0010000000474974513]


def _runs(centers: list[float], width: int) -> np.ndarray:
    """Every float32 within ``width`` steps of each center (both signs)."""
    out = []
    for c in centers:
        b = int(np.array([c], np.float32).view(np.uint32)[0])
        run = np.arange(max(b - width, 1), b + width, dtype=np.uint32).view(np.float32)
        out += [run, -run]
    return np.concatenate(out)


def test_f32_text_is_numpys_float32_text() -> None:
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # the positional/scientific switch, the subnormal boundary, powers of two (uneven rounding intervals)
    # and 2**20 + k/8, where two 8-digit decimals can tie for nearest
    dense = _runs([1e-4, 1e6, 2.0**-126, 2.0**-100, 1.0, 2.0**20, 2.0**24, 1e-38], 300)
    # every power of two: the float32 below is half a step nearer, so the interval that reads back as it
    # is uneven
    powers = [float(np.float32(2.0) ** k) for k in range(-149, 128)]
    values = [*EDGES, *powers, *(-p for p in powers), *map(float, random_bits), *map(float, dense)]
    with np.errstate(over="ignore"):  # 1e39 and -1e39: numpy's float32 overflows to inf, as f32_text does
        wrong = [(v, str(np.float32(v)), f32_text(v)) for v in values if f32_text(v) != str(np.float32(v))]
    assert not wrong, wrong[:5]
