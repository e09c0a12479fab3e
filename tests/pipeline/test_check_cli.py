"""`yexport check`: providers that did not really run, required providers, the reference picked from
the file's metadata, and its usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from tests.pipeline.conftest import Exported, TrainingExport, one_line_error, yexport


def cuda_really_usable() -> bool:
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cuda_fallback(n320: Exported) -> tuple:
    if cuda_really_usable():
        pytest.skip("CUDA is usable here: the fallback cannot be observed")
    text = yexport("check", n320.path, "--providers", "cpu,cuda")
    js = yexport("check", n320.path, "--providers", "cpu,cuda", "--json")
    return text, js


def test_cuda_not_run_is_reported_not_failed(cuda_fallback: tuple) -> None:
    text, js = cuda_fallback
    assert text.exit_code == 0, text.output
    row = next(ln for ln in text.stdout.splitlines() if ln.strip().startswith("cuda"))
    assert "not available:" in row and len(row.split("not available:")[1].strip()) > 10
    assert "=> PASS" in text.stdout
    assert js.exit_code == 0
    rep = json.loads(js.stdout)
    cpu, cuda = rep["providers"]
    assert (cpu["requested"], cpu["ran"], cpu["passed"]) == ("cpu", True, True)
    assert (cuda["requested"], cuda["ran"], cuda["passed"], cuda["required"]) == ("cuda", False, None, False)
    assert cuda["reason"] and cuda["cases"] == []
    assert rep["passed"] is True


def test_cuda_fallback_reason_names_what_ran(cuda_fallback: tuple) -> None:
    import onnxruntime as ort

    cuda = json.loads(cuda_fallback[1].stdout)["providers"][1]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # onnxruntime-gpu without usable CUDA: listed, then the session runs on CPU
        assert cuda["ran_on"][0] == "CPUExecutionProvider"
        assert "listed but the session fell back to CPUExecutionProvider" in cuda["reason"]
    else:
        assert "has no CUDAExecutionProvider" in cuda["reason"]
    assert "/usr/" not in cuda["reason"] and "/site-packages/" not in cuda["reason"]


@pytest.mark.slow
def test_require_cuda_fails_when_it_did_not_run(n320: Exported) -> None:
    if cuda_really_usable():
        pytest.skip("CUDA is usable here")
    r = yexport("check", n320.path, "--require", "cuda")
    assert r.exit_code == 1, r.output
    assert "(required: FAIL)" in r.stdout and "=> FAIL" in r.stdout
    js = yexport("check", n320.path, "--require", "cuda", "--json")
    assert js.exit_code == 1
    rep = json.loads(js.stdout)
    cuda = next(p for p in rep["providers"] if p["requested"] == "cuda")
    assert (cuda["ran"], cuda["required"], rep["passed"]) == (False, True, False)


@pytest.mark.gpu
def test_cuda_really_runs_on_a_gpu_machine(n320: Exported) -> None:
    r = yexport("check", n320.path, "--providers", "cpu,cuda", "--require", "cuda", "--json")
    rep = json.loads(r.stdout)
    cuda = next(p for p in rep["providers"] if p["requested"] == "cuda")
    assert cuda["ran"] is True and cuda["ran_on"][0] == "CUDAExecutionProvider" and cuda["reason"] == ""
    assert cuda["required"] is True and len(cuda["cases"]) == 2
    out = cuda["outputs"][0]
    assert out["max_abs"] >= 0 and out["max_rel"] >= 0 and out["ratio"] is not None
    assert cuda["vs_cpu_max_abs"] is not None and cuda["vs_cpu_max_abs"] >= 0  # the provider figure
    # the exit status follows the comparison (on GPUs with TF32 convolutions it may legitimately fail)
    assert r.exit_code == (0 if rep["passed"] else 1), r.output


@pytest.mark.slow
def test_training_file_checked_against_train_reference(n320_training: TrainingExport) -> None:
    path = n320_training.exported.path
    r = yexport("check", path, "--json")  # no --against, no flag: the metadata says yolov5n, train mode
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["against"], rep["reference"], rep["passed"]) == ("yolov5n", "train", True)
    text = yexport("check", path)
    assert "(train reference, truth: float64)" in text.stdout and text.exit_code == 0


@pytest.mark.slow
def test_eval_reference_would_fail_the_training_file(n320_training: TrainingExport, tmp_path: Path) -> None:
    """The same file with its training flag removed from the metadata is checked against an eval forward,
    and fails: the train-mode reference is what makes the check above pass."""
    m = onnx.load(str(n320_training.exported.path))
    for p in m.metadata_props:
        if p.key == "yexport.training":
            p.value = "0"
    path = tmp_path / "relabelled.onnx"
    onnx.save(m, str(path))
    r = yexport("check", path, "--json")
    assert r.exit_code == 1, r.output
    rep = json.loads(r.stdout)
    assert rep["reference"] == "eval" and rep["passed"] is False
    train = json.loads(yexport("check", n320_training.exported.path, "--json").stdout)
    eval_abs = rep["providers"][0]["outputs"][0]["max_abs"]
    train_abs = train["providers"][0]["outputs"][0]["max_abs"]
    assert eval_abs > 100 * train_abs, (eval_abs, train_abs)


# ------------------------------------------------------------------------------------ usage errors


def test_unknown_provider(n320: Exported) -> None:
    one_line_error(yexport("check", n320.path, "--providers", "cpu,npu"), "unknown provider 'npu'")


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(yexport("check", tmp_path / "gone.onnx", "--against", "yolov5n"), "gone.onnx")


def test_file_without_model_metadata(n320: Exported, tmp_path: Path) -> None:
    m = onnx.load(str(n320.path))
    del m.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(m, str(path))
    one_line_error(yexport("check", path), "give --against MODEL")


@pytest.mark.slow
def test_against_another_model(n320: Exported, tmp_path: Path) -> None:
    path = tmp_path / "copy.onnx"
    shutil.copy(n320.path, path)
    r = yexport("check", path, "--against", "yolov5n", "--seed", "1")  # other weights: a parity failure
    assert r.exit_code == 1, r.output
    assert "=> FAIL" in r.stdout
