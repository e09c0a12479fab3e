"""--half: float16 weights and compute, float16 or float32 I/O, with dynamic axes and BatchNorm kept, judged
against PyTorch's float16 noise; faults in a float16 file still fail."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from exporter.parity import build_reference, compare_with, default_shapes, fused_copy
from tests.faults import broken, faults
from tests.pipeline.conftest import Exported, builtin, export_cli, one_line_error, yexport

F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


def io_types(m: onnx.ModelProto) -> tuple[int, int]:
    return m.graph.input[0].type.tensor_type.elem_type, m.graph.output[0].type.tensor_type.elem_type


@pytest.fixture(scope="module")
def h256(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return export_cli(tmp_path_factory.mktemp("half"), "yolov5n", "--img", "256", "--half", name="yolov5n-half")


def test_half_file_is_float16_and_passes(h256: Exported, tmp_path: Path) -> None:
    m = h256.model
    f32 = {t.name for t in m.graph.initializer if t.data_type == F32}
    # every float initializer is float16 but Resize's scales, which ONNX requires in float32
    assert {n.op_type for n in m.graph.node if set(n.input) & f32} == {"Resize"}
    assert sum(t.data_type == F16 for t in m.graph.initializer) > 60
    assert io_types(m) == (F16, F16)
    assert h256.parity["passed"] is True and h256.parity["precision"] == "fp16"
    assert "float16" in h256.parity["tolerance"]
    # parity before and after the half stage: the float32 graph it converted, judged as float32
    before = h256.manifest["parity_before_half"]
    assert before["passed"] is True and before["precision"] == "fp32" and h256.manifest["parity_before_simplify"] is None
    stage = next(s for s in h256.manifest["stages"] if s["name"] == "parity")
    assert stage["changed"].startswith("before half: ") and "; after: " in stage["changed"]
    full = export_cli(tmp_path, "yolov5n", "--img", "256", "--no-check", name="fp32")
    assert 0.45 < h256.path.stat().st_size / full.path.stat().st_size < 0.55
    # Resize stays float32 (its scales must be float32): one Cast on each side of each of the two
    assert sum(n.op_type == "Cast" for n in m.graph.node) == 4
    stage = next(s for s in h256.manifest["stages"] if s["name"] == "half")
    assert "Resize kept float32" in stage["changed"]
    # --half is graph identity (yexport diff compares it); a float32 graph's identity does not mention it
    graph_opts = [json.loads(p.value) for f in (m, full.model) for p in f.metadata_props
                  if p.key == "yexport.graph_options"]
    assert graph_opts[0]["half"] is True and graph_opts[0]["half_io"] == "float16"
    assert "half" not in graph_opts[1] and "half_io" not in graph_opts[1]


def test_half_checks_again_with_yexport_check(h256: Exported) -> None:
    r = yexport("check", h256.path)
    assert r.exit_code == 0, r.output
    assert "fp16 q99.9" in r.stdout and "float16" in r.stdout


@pytest.mark.slow
def test_half_with_float32_io_and_dynamic_all_and_keep_bn(tmp_path: Path) -> None:
    e = export_cli(tmp_path, "yolov5n", "--img", "128", "--half", "--half-io", "float32", "--dynamic", "all",
                   "--keep-bn", name="h")
    assert io_types(e.model) == (F32, F32)
    assert e.ops.get("BatchNormalization", 0) == 57
    assert e.parity["passed"] is True
    assert len({tuple(c["shape"]) for c in e.parity["providers"][0]["cases"]}) == 3


# float16 noise is ~5000x fp32's: a 1% change of one middle conv is below it (and x1.001 is erased by
# float16 rounding of the weight itself), so a float16 check sees only faults of that noise's size or larger
@pytest.mark.parametrize("fault", ["first conv x1.01", *(pytest.param(f, marks=pytest.mark.slow) for f in (
    "middle conv x1.1", "detect conv x1.1", "middle conv channels 0/1 swapped", "anchor +1 px")), "stride doubled (P3)"])
def test_faults_in_a_float16_file_fail(h256: Exported, fault: str) -> None:
    ref = _half_reference(h256)
    assert compare_with(h256.model, ref, detections=False)
    bad = broken(h256.model, faults(h256.model)[fault])
    assert not compare_with(bad, ref, detections=False)


_REFS: dict[str, object] = {}


def _half_reference(e: Exported):
    if "ref" not in _REFS:
        model = builtin("yolov5n").model
        _REFS["ref"] = build_reference(model, default_shapes(e.model), exported=fused_copy(model), precision="float16")
    return _REFS["ref"]


def test_half_refusals(tmp_path: Path) -> None:
    one_line_error(yexport("export", "yolov5n", "--half", "--training-mode", "-o", tmp_path), "--half with --training-mode")
    one_line_error(yexport("export", "yolov5n", "--half-io", "float32", "-o", tmp_path), "--half-io only applies")


def test_the_caller_model_stays_float32(h256: Exported) -> None:
    import torch

    assert {p.dtype for p in builtin("yolov5n").model.parameters()} == {torch.float32}
