"""Per-layer profile: totals agree with the model summary, shapes, progress kept off stdout, CSV/JSON,
device errors."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

from exporter.analysis.profile import CSV_COLUMNS, profile_model
from exporter.analysis.summary import count_flops, summarize
from exporter.errors import ConfigError


@pytest.mark.slow
def test_yolov5s_totals_agree_with_summary(yolov5s: nn.Module) -> None:
    report = profile_model(yolov5s, 640, runs=1, warmup=0, backward=False)
    s = summarize(yolov5s, (640, 640), exact=False)
    assert report.totals["params"] == s["parameters"] == 7235389
    assert report.totals["gflops"] == pytest.approx(s["gflops"], rel=0.01)
    assert [r.index for r in report.layers] == list(range(25))
    assert report.layers[0].input_shape == [1, 3, 640, 640] and report.layers[0].output_shape == [1, 32, 320, 320]
    assert report.layers[12].module == "Concat" and report.layers[12].source == [-1, 6]
    assert report.layers[12].input_shape == [[1, 256, 40, 40], [1, 256, 40, 40]]
    assert report.layers[-1].module == "Detect"
    assert report.layers[-1].output_shape[0] == [1, 25200, 85]
    assert all(r.backward_ms is None for r in report.layers) and report.totals["backward_ms"] is None


def test_yolov5n_layers(yolov5n: nn.Module) -> None:
    calls: list[tuple[int, int, str]] = []
    report = profile_model(yolov5n, (96, 128), runs=2, progress=lambda *a: calls.append(a))
    assert report.img == [96, 128] and report.runs == 2 and report.device == "cpu"
    assert report.totals["gflops"] == pytest.approx(count_flops(yolov5n, (1, 3, 96, 128)) / 1e9, rel=1e-9)
    assert report.totals["params"] == sum(p.numel() for p in yolov5n.parameters())
    assert all(r.forward_ms > 0 for r in report.layers)
    assert all(r.backward_ms is not None and r.backward_ms >= 0 for r in report.layers)
    assert report.totals["forward_ms"] == pytest.approx(sum(r.forward_ms for r in report.layers))
    assert calls[0][:2] == (0, 25) and calls[-1][:2] == (25, 25)
    assert yolov5n.training is False and next(yolov5n.parameters()).grad is None  # ran on a copy


def test_sequential_module() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    report = profile_model(model, 32, runs=1)
    assert [r.module for r in report.layers] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert report.layers[-1].output_shape == [1, 4, 16, 16]
    assert report.totals["params"] == sum(p.numel() for p in model.parameters())


def test_any_module_and_runs() -> None:
    rows = profile_model(nn.Conv2d(3, 3, 1), 32)  # any module: profiled per module by forward hooks
    assert rows
    with pytest.raises(ConfigError, match="at least 1"):
        profile_model(nn.Sequential(nn.ReLU()), 32, runs=0)


def test_cli_json_agrees_with_info(invoke) -> None:
    r = invoke("profile", "yolov5n", "--img", "128", "--runs", "1", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)  # stdout holds the JSON alone; progress went to stderr
    assert "profiling" not in r.stderr  # progress only on a terminal (CliRunner's stderr is not one)
    info = json.loads(invoke("info", "yolov5n", "--img", "128", "--json", "--exact").stdout)
    assert d["totals"]["params"] == info["parameters"]
    assert d["totals"]["gflops"] == pytest.approx(info["gflops"], rel=0.01)
    assert d["totals"]["gflops"] == pytest.approx(info["gflops_exact"], rel=0.01)
    assert len(d["layers"]) == 25 and d["runs"] == 1 and d["model"]["name"] == "yolov5n"
    assert set(d["layers"][0]) == set(CSV_COLUMNS)


def test_cli_csv(invoke) -> None:
    r = invoke("profile", "yolov5n", "--img", "64", "--runs", "1", "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1 + 25 + 1
    assert rows[1][:3] == ["0", "-1", "Conv"] and rows[1][7] == "1x3x64x64"
    total = rows[-1]
    assert total[0] == "total" and int(total[3]) == sum(int(x[3]) for x in rows[1:-1])
    assert float(total[4]) == pytest.approx(sum(float(x[4]) for x in rows[1:-1]), rel=1e-4)


def test_cli_table(invoke) -> None:
    r = invoke("profile", "yolov5n", "--img", "64", "--runs", "1", "--no-backward")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("yolov5n on cpu, 1x3x64x64")
    assert lines[-1].split()[0] == "total" and lines[-1].split()[-1] == "-"  # no backward timings
    assert "profiling" not in r.stdout


def test_cli_default_runs_match_library() -> None:
    from exporter.analysis.profile import DEFAULT_RUNS
    from exporter.cli.profile import profile

    assert next(p for p in profile.params if p.name == "runs").default == DEFAULT_RUNS


def test_cli_json_and_csv_exclude_each_other(invoke, one_line_error) -> None:
    one_line_error(invoke("profile", "yolov5n", "--json", "--csv"), "exclude each other")


def test_cli_cuda_without_cuda(invoke, one_line_error, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(invoke("profile", "yolov5n", "--device", "cuda"), "CUDA is not usable")


@pytest.mark.gpu
def test_cuda_profile(yolov5n: nn.Module) -> None:
    report = profile_model(yolov5n, 128, device="cuda", runs=2)
    assert report.device.startswith("cuda") and all(r.forward_ms > 0 for r in report.layers)
    assert report.totals["params"] == sum(p.numel() for p in yolov5n.parameters())


def test_cli_bad_model(invoke, bad_model, one_line_error) -> None:
    arg, needle = bad_model
    one_line_error(invoke("profile", arg, "--img", "64"), needle)
