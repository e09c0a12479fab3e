"""The model zoo against the official implementation: parameter counts, BatchNorm layers, strides,
GFLOPs, output shapes of every shipped config, anchor order, build-time settings, seeded weights."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

from exporter.analysis.summary import summarize
from exporter.models import build_model, builtin_names
from exporter.models.common import Conv, Focus
from exporter.models.weights import calibrate
from exporter.models.zoo import builtin_path, read_config

# nc=80, from the official implementation: (parameters, parameters after BN fusion, BatchNorm2d layers)
OFFICIAL_COUNTS: dict[str, tuple[int, int | None, int | None]] = {
    "yolov5n": (1_872_157, 1_867_405, 57),
    "yolov5s": (7_235_389, 7_225_885, 57),
    "yolov5m": (21_190_557, 21_172_173, 79),
    "yolov5l": (46_563_709, 46_533_693, 101),
    "yolov5x": (86_749_405, 86_705_005, 123),
    "yolov5s6": (12_626_620, 12_612_508, 75),
    "yolov5s-v5.0": (7_276_605, 7_266_973, 59),
    "yolov5m-v5.0": (21_375_645, None, None),
    "yolov5l-v5.0": (47_056_765, None, None),
    "yolov5x-v5.0": (87_775_965, None, None),
}
BIG = {"yolov5l", "yolov5x", "yolov5l6", "yolov5x6", "yolov5l-v5.0", "yolov5x-v5.0"}
MEDIUM = {"yolov5m", "yolov5m6", "yolov5m-v5.0"}  # built in make test only, as BIG
CONFIGS = builtin_names()


def test_every_expected_config_ships() -> None:
    assert set(OFFICIAL_COUNTS) <= set(CONFIGS)
    assert {"yolov5n6", "yolov5m6", "yolov5l6", "yolov5x6", "yolov5s-csp"} <= set(CONFIGS)


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in BIG | MEDIUM else n
                                        for n in CONFIGS])
def zoo(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    """Each shipped config built once (pytest groups the tests by this fixture's parameter)."""
    return request.param, build_model(request.param, seed=0).eval()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts(zoo: tuple[str, nn.Module]) -> None:
    name, model = zoo
    params = _count(model)
    fused = _count(deepcopy(model).fuse())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # folding a Conv's BN drops gamma and beta (2C) and adds a conv bias (C)
    assert fused == params - sum(m.bn.num_features for m in model.modules() if isinstance(m, Conv))
    if name in OFFICIAL_COUNTS:
        want_params, want_fused, want_bns = OFFICIAL_COUNTS[name]
        assert params == want_params
        assert want_fused is None or fused == want_fused
        assert want_bns is None or bns == want_bns


def test_forward_shapes(zoo: tuple[str, nn.Module]) -> None:
    name, model = zoo
    strides = [8, 16, 32, 64] if name.endswith("6") else [8, 16, 32]
    assert model.stride.tolist() == strides
    assert model.generation == ("v5.0" if name.endswith(("-v5.0", "-csp")) else "v6+")
    sizes = [(320, 256)] if name in BIG else [(64, 64), (320, 256)]  # big models: one forward
    for h, w in sizes:
        with torch.no_grad():
            decoded, raw = model(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)))
        cells = [(h // s) * (w // s) for s in strides]
        assert decoded.shape == (1, 3 * sum(cells), 85)
        assert [tuple(r.shape) for r in raw] == [(1, 3, h // s, w // s, 85) for s in strides]
        assert torch.isfinite(decoded).all()


def test_yolov5s_gflops_match_the_published_figure() -> None:
    s = summarize(build_model("yolov5s", seed=0), (640, 640), exact=False)
    assert abs(s["gflops"] - 16.5) <= 0.2
    assert s["parameters"] == 7_235_389 and s["parameters_fused"] == 7_225_885 and s["batchnorm_layers"] == 57
    assert s["strides"] == [8, 16, 32]
    assert s["anchors"] == [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                            [[116, 90], [156, 198], [373, 326]]]


def test_v50_uses_focus_and_spp() -> None:
    model = build_model("yolov5s-v5.0", seed=0)
    assert isinstance(model.model[0], Focus)
    assert [m.type for m in model.model][8] == "SPP"


def test_reversed_anchors_are_flipped_into_stride_order() -> None:
    cfg = read_config(builtin_path("yolov5n"))
    normal = build_model(cfg, seed=0).detect
    reversed_cfg = {**cfg, "anchors": list(reversed(cfg["anchors"]))}
    flipped = build_model(reversed_cfg, seed=0).detect
    assert torch.equal(flipped.anchors, normal.anchors)
    pixels = (flipped.anchors * flipped.stride.view(-1, 1, 1)).round().int().tolist()
    assert pixels[0] == [[10, 13], [16, 30], [33, 23]] and pixels[-1][-1] == [373, 326]


def test_batchnorm_build_settings() -> None:
    bns = [m for m in build_model("yolov5n", seed=0).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


def test_nc_override_changes_the_detect_channels() -> None:
    model = build_model("yolov5n", nc=3, seed=0).eval()
    assert model.nc == 3 and model.yaml["nc"] == 3 and model.detect.no == 8
    assert [m.out_channels for m in model.detect.m] == [24, 24, 24]
    with torch.no_grad():
        decoded, _ = model(torch.zeros(1, 3, 64, 64))
    assert decoded.shape == (1, 252, 8)
    assert _count(model) < OFFICIAL_COUNTS["yolov5n"][0]


def test_seeded_builds_are_reproducible() -> None:
    a, b, c = (build_model("yolov5n", seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_calibrate_is_deterministic_and_realistic() -> None:
    base = build_model("yolov5n", seed=0)
    a, b, c = (calibrate(deepcopy(base), seed=s, batch=2, size=128).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    model = calibrate(deepcopy(base), seed=0)  # the defaults
    assert not model.training
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.eps == 1e-3 and bn.momentum == 0.03
        assert bn.running_mean.abs().max() > 1e-3 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
