"""Reference forwards reused across variants in one process (exporter.parity.cache)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import exporter.parity.cache as cache
from exporter.models import load_model
from exporter.models.zoo import builtin_path
from exporter.parity import build_reference, fused_copy


@pytest.fixture
def tiny(tmp_path: Path):
    cfg = yaml.safe_load(builtin_path("yolov5n").read_text())
    cfg["width_multiple"] = 0.0625
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_model(p)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    cache.clear()
    calls: list[int] = []

    def counting(*a, **k):
        calls.append(1)
        return build_reference(*a, **k)

    monkeypatch.setattr(cache, "build_reference", counting)
    yield calls
    cache.clear()


def _equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


SHAPES = [(1, 3, 64, 64), (2, 3, 64, 64)]


def test_cached_equals_built_and_builds_once(tiny, builds: list[int]) -> None:
    model = tiny.model
    fused = fused_copy(model)
    want = build_reference(model, SHAPES, exported=fused)
    got = cache.cached_reference(model, SHAPES, exported=fused)
    again = cache.cached_reference(model, SHAPES, exported=fused_copy(model))  # an equal copy: same forwards
    plain = cache.cached_reference(model, SHAPES)  # keep-bn: no exported forward
    assert len(builds) == 1
    for r in (got, again):
        assert r.fused and r.description == want.description
        for c, w in zip(r.cases, want.cases, strict=True):
            assert np.array_equal(c.x, w.x) and _equal(c.fp32, w.fp32) and _equal(c.f64, w.f64)
            assert _equal(c.exported, w.exported)
        # the exported module's forward (capture and fusion figures) runs on the first input only
        assert r.cases[0].exported is not None and all(c.exported is None for c in r.cases[1:])
    assert not plain.fused and all(c.exported is None for c in plain.cases)
    assert got.cases[0] is not again.cases[0]  # fresh cases: a caller may set fields without touching the cache


def test_other_arguments_or_a_changed_model_rebuild(tiny, builds: list[int]) -> None:
    model = tiny.model
    cache.cached_reference(model, SHAPES)
    cache.cached_reference(model, SHAPES, seed=1)
    cache.cached_reference(model, SHAPES[:1])
    assert len(builds) == 3
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # changed in place: the content differs
    r = cache.cached_reference(model, SHAPES[:1])
    assert len(builds) == 4
    assert _equal(r.cases[0].fp32, build_reference(model, SHAPES[:1]).cases[0].fp32)
    assert len(cache._CACHE) <= cache.MAX_ENTRIES


def test_variants_share_one_reference(tiny, builds: list[int], tmp_path: Path) -> None:
    from exporter.api import export

    results = export(tiny, variants=["fused", "keep-bn"], out_dir=tmp_path, img=(64, 64))
    assert [bool(r.parity) for r in results] == [True, True]
    assert len(builds) == 1


class _NoFloat64(torch.nn.Module):
    """A conv whose forward has no float64 kernel (as some ops lack one): the truth cannot be computed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Double\'')
        return self.conv(x)


def test_a_model_without_float64_is_judged_by_the_tolerance_and_says_why() -> None:
    from exporter.parity import check_parity

    model = _NoFloat64().eval()
    ref = build_reference(model, [(1, 3, 16, 16)])
    assert ref.no_f64.startswith("the model cannot run in float64: ") and "Double" in ref.no_f64
    assert all(c.f64 is None for c in ref.cases) and all(c.fp32 is not None for c in ref.cases)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice: not what this test is about
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), buf, dynamo=False, opset_version=18)
    report = check_parity(buf.getvalue(), model, shapes=[(1, 3, 16, 16)])
    assert report and report.truth == "none"
    assert any("no float64 truth (the model cannot run in float64" in n for n in report.notes)
