"""Faults are caught: broken copies of a good export fail the check (each seeded fault of
tests/faults.py), the report names the output and where the error arises, and a value the tracer baked
in from the capture example fails the export's own check with its TracerWarning shown."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from exporter.parity import build_reference, compare_with, default_shapes, fused_copy
from tests.faults import broken, faults
from tests.pipeline.conftest import Exported, builtin, yexport


@pytest.fixture(scope="module")
def good(n320: Exported):
    """The good file and one reference (fp32, float64, fused copy) shared by every fault."""
    model = builtin("yolov5n").model
    ref = build_reference(model, default_shapes(n320.model), exported=fused_copy(model))
    return n320.model, ref


def slow(*faults: str) -> list:
    """Larger factors of a fault the fast set already fails at x1.001: run in make test only."""
    return [pytest.param(f, marks=pytest.mark.slow) for f in faults]


def test_the_good_file_passes(good) -> None:
    proto, ref = good
    assert compare_with(proto, ref)


@pytest.mark.parametrize("fault", [
    "first conv x1.001", *slow("first conv x1.01", "first conv x1.1"),
    "middle conv x1.001", *slow("middle conv x1.01", "middle conv x1.1"),
    "detect conv x1.001", *slow("detect conv x1.01", "detect conv x1.1"),
    "middle conv channels 0/1 swapped", "anchor +1 px", "stride doubled (P3)", "fp16-rounded weights",
])
def test_every_seeded_fault_fails(good, fault: str) -> None:
    proto, ref = good
    report = compare_with(broken(proto, faults(proto)[fault]), ref, detections=False)
    assert not report, report.format()
    (worst,) = report.providers[0].worst()
    assert worst.name == "output0" and not worst.passed and worst.ratio > 10, (fault, worst.ratio)
    assert "output0 FAIL at" in report.format()


@pytest.mark.slow
def test_check_cli_fails_a_broken_file_and_names_the_layer(good, tmp_path: Path) -> None:
    proto, _ = good
    bad = broken(proto, faults(proto)["middle conv x1.001"])
    path = tmp_path / "bad.onnx"
    onnx.save(bad, str(path))
    r = yexport("check", path, "--json")
    assert r.exit_code == 1, r.output
    cpu = json.loads(r.stdout)["providers"][0]
    assert cpu["passed"] is False and cpu["outputs"][0]["name"] == "output0"
    middle = int(faults_layer(proto, "middle"))
    assert cpu["divergence"].startswith(f"first diverging layer: {middle} ("), cpu["divergence"]
    text = yexport("check", path)
    assert text.exit_code == 1 and "first diverging layer" in text.stdout and "=> FAIL" in text.stdout


def test_a_failing_check_measures_where_the_error_comes_from(good, tmp_path: Path) -> None:
    """check_parity of a fused file makes the fused copy only when a provider fails: the failure then has
    its capture and fusion figures on the first input, as the export's own check has."""
    from exporter.parity import check_parity

    proto, _ = good
    path = tmp_path / "bad.onnx"
    onnx.save(broken(proto, faults(proto)["middle conv x1.001"]), str(path))
    report = check_parity(path, builtin("yolov5n").model, detections=False)
    assert not report
    first, second = report.providers[0].cases
    # the fault is in the file, not in the fusion: ONNX is further from the fused module than fused from unfused
    assert first.fusion_max_abs is not None and first.fusion_max_abs > 0
    assert first.outputs[0].capture_max_abs is not None and first.outputs[0].capture_max_abs > 3 * first.fusion_max_abs
    assert second.fusion_max_abs is None and second.outputs[0].capture_max_abs is None
    assert not any("not measured" in n for n in report.notes)
    assert "capture" in report.format() and "fusion" in report.format()
    never = check_parity(path, builtin("yolov5n").model, detections=False, sources=False)
    assert not never and never.providers[0].cases[0].fusion_max_abs is None


def faults_layer(proto: onnx.ModelProto, where: str) -> str:
    from tests.faults import pick_convs

    name = pick_convs(proto)[where]  # e.g. model.8.cv1.conv.weight
    return name.split(".")[1]


def test_a_detect_fault_is_placed_in_the_last_layer(good) -> None:
    proto, ref = good
    report = compare_with(broken(proto, faults(proto)["anchor +1 px"]), ref, model=builtin("yolov5n").model,
                          detections=False)
    assert not report
    assert "within their fp32 noise" in report.providers[0].divergence
    assert "Detect head" in report.providers[0].divergence


def test_an_honest_file_names_no_layer(good) -> None:
    proto, ref = good
    report = compare_with(proto, ref, model=builtin("yolov5n").model)
    assert report and report.providers[0].divergence == ""


class BakesPixel(torch.nn.Module):
    """Multiplies by the traced input's first pixel: the tracer turns it into a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float(x[0, 0, 0, 0])


def test_a_value_baked_in_by_the_tracer_fails_and_is_shown(tmp_path: Path) -> None:
    from exporter.api import export

    torch.manual_seed(0)
    (res,) = export(BakesPixel().eval(), out_dir=tmp_path, name="bakes", img=(64, 64))
    assert not res.ok and res.parity is not None and not res.parity
    assert any("Converting a tensor to a Python float" in w for w in res.tracer_warnings), res.tracer_warnings
    manifest = json.loads(res.path.with_suffix(".json").read_text())
    assert manifest["tracer_warnings"] == list(res.tracer_warnings)
    assert res.path.name == "bakes.parity-failed.onnx"


def test_an_honest_yolo_export_has_no_tracer_warnings(n320: Exported) -> None:
    assert n320.manifest["tracer_warnings"] == []
