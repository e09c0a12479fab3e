"""Parity: the default fp32 tolerance rule, the figures reported, checks on your own images, per-output
tolerances, and the train-mode reference of a --training-mode file."""

from __future__ import annotations

import json
import math
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.parity import check_parity, compare, open_session
from tests.pipeline.conftest import Exported, TrainingExport, builtin, one_line_error, yexport

ATOL = RTOL = 1e-3


# ---------------------------------------------------------------------------- the tolerance rule


def test_rule_is_elementwise_atol_plus_rtol_times_reference() -> None:
    ref = np.array([0.0, 0.5, 1.0, 100.0, -640.0], dtype=np.float32)
    allowed = ATOL + RTOL * np.abs(ref.astype(np.float64))
    inside = compare("out", ref, (ref + 0.99 * allowed).astype(np.float32), ATOL, RTOL)
    assert inside.passed
    # at 100 the allowance is 0.101: an error of 0.1 passes there but would fail at 0 (allowance 0.001)
    assert compare("out", ref, ref + np.array([0, 0, 0, 0.1, 0], np.float32), ATOL, RTOL).passed
    assert not compare("out", ref, ref + np.array([0.1, 0, 0, 0, 0], np.float32), ATOL, RTOL).passed
    for i in range(ref.size):  # any one element just over its own allowance fails the whole output
        bump = np.zeros_like(ref, dtype=np.float64)
        bump[i] = 1.01 * allowed[i]
        r = compare("out", ref, (ref + bump).astype(np.float32), ATOL, RTOL)
        assert not r.passed and r.worst.startswith(f"[{i}]"), (i, r.worst)


def test_figures_max_abs_and_max_rel() -> None:
    ref = np.array([[0.0, 2.0], [-4.0, 1e-5]], dtype=np.float32)
    out = ref + np.array([[5e-4, 1e-3], [-2e-3, 5e-4]], dtype=np.float32)
    r = compare("out", ref, out, ATOL, RTOL)
    assert r.max_abs == pytest.approx(2e-3, rel=1e-4)
    # relative error only where |ref| > atol (near zero it says nothing): max(1e-3/2, 2e-3/4)
    assert r.max_rel == pytest.approx(5e-4, rel=1e-3)
    assert r.passed and r.shape == [2, 2] and r.cosine == pytest.approx(1.0, abs=1e-6)


def test_nan_and_shape_mismatch_fail() -> None:
    ref = np.ones(4, np.float32)
    assert not compare("o", ref, np.array([1, 1, np.nan, 1], np.float32), ATOL, RTOL).passed
    bad = compare("o", ref, np.ones(5, np.float32), ATOL, RTOL)
    assert not bad.passed and bad.max_abs == math.inf and "shape" in bad.worst


def test_s640_parity_recomputed_independently(s640: Exported) -> None:
    """Run the written file on onnxruntime ourselves against our own eval forward: the rule holds
    element-wise and the reported max abs / max rel are what we measure."""
    import onnxruntime as ort

    from exporter.models.weights import synthetic_images

    ref_model = deepcopy(builtin("yolov5s").model).eval()
    ref_model.model[-1].output = "decode"
    x = synthetic_images(1, (640, 640), 0)
    with torch.no_grad():
        ref = ref_model(x).numpy().astype(np.float64)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(s640.path), so, providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"images": x.numpy()})
    diff = np.abs(out.astype(np.float64) - ref)
    assert (diff <= ATOL + RTOL * np.abs(ref)).all()
    big = np.abs(ref) > ATOL
    reported = s640.parity["providers"][0]["outputs"][0]
    assert reported["max_abs"] == pytest.approx(diff.max(), rel=0.1, abs=1e-6)
    assert reported["max_rel"] == pytest.approx((diff[big] / np.abs(ref[big])).max(), rel=0.1, abs=1e-9)
    assert (reported["atol"], reported["rtol"]) == (ATOL, RTOL)
    assert s640.parity["tolerance"] == "|onnx - torch| <= 0.001 + 0.001 * |torch|"


def test_figures_always_in_report_and_json(s640: Exported, n320: Exported) -> None:
    # the manifest and `yexport export --json`
    assert s640.result is not None
    exported = json.loads(s640.result.stdout)[0]["parity"]
    for report in (s640.parity, exported):
        for p in report["providers"]:
            for o in p["outputs"] + [o for c in p["cases"] for o in c["outputs"]]:
                assert isinstance(o["max_abs"], float) and isinstance(o["max_rel"], float)
    # `yexport check --json` and the table of `yexport check`
    r = yexport("check", n320.path, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["providers"][0]["outputs"][0]
    assert out["max_abs"] > 0 and out["max_rel"] > 0 and out["passed"] is True
    table = yexport("check", n320.path)
    assert table.exit_code == 0 and "max_abs" in table.stdout and "max_rel" in table.stdout
    assert f"{out['max_abs']:.2e}" in table.stdout and f"{out['max_rel']:.2e}" in table.stdout


# ------------------------------------------------------------------------------------ own images


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (90, 120), "b.png": (200, 150), "c.png": (64, 64)}.items():
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200
        Image.fromarray((base + rng.integers(0, 55, (h, w, 3))).astype(np.uint8)).save(d / name)
    return d


def test_check_on_own_images(n320: Exported, images: Path) -> None:
    r = yexport("check", n320.path, "--images", images, "--inputs", "3", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert images.name in rep["inputs"] and rep["passed"] is True
    cases = rep["providers"][0]["cases"]
    assert [c["input"] for c in cases] == ["a.png", "b.png", "c.png"]
    assert all(c["passed"] and c["shape"] == [1, 3, 320, 320] for c in cases)


def test_export_checks_on_own_images(tmp_path: Path, images: Path) -> None:
    r = yexport("export", "yolov5n", "--img", "256", "--batch", "1", "--images", images, "--inputs", "2",
                "-o", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    (manifest,) = json.loads(r.stdout)
    assert [c["input"] for c in manifest["parity"]["providers"][0]["cases"]] == ["a.png", "b.png"]
    assert manifest["parity"]["passed"] is True


def test_images_differ_from_synthetic_inputs(n320: Exported, images: Path) -> None:
    """The images really reach the comparison: the outputs differ from the synthetic-input ones."""
    model = builtin("yolov5n").model
    synthetic = check_parity(n320.path, model).providers[0].cases[0].outputs[0]
    own = check_parity(n320.path, model, images=str(images)).providers[0].cases[0].outputs[0]
    assert (own.max_abs, own.mean_abs) != (synthetic.max_abs, synthetic.mean_abs)


# ------------------------------------------------------------------------------- per-output atol


def test_per_output_atol_is_honoured(n320: Exported) -> None:
    r = yexport("check", n320.path, "--atol", "output0=1e-4", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["providers"][0]["outputs"][0]["atol"] == 1e-4
    assert "output0: atol 0.0001" in rep["tolerance"]
    # it decides the result: a tiny global atol fails, the same with a generous output0 atol passes
    tight = ("--atol", "1e-9", "--rtol", "0")
    assert yexport("check", n320.path, *tight).exit_code == 1
    ok = yexport("check", n320.path, *tight, "--atol", "output0=1e-2", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["providers"][0]["outputs"][0]["atol"] == 1e-2
    assert yexport("check", n320.path, *tight, "--atol", "output0=1e-9").exit_code == 1


def test_unknown_output_name(n320: Exported, tmp_path: Path) -> None:
    one_line_error(yexport("check", n320.path, "--atol", "boxes=1e-4"), "the file has no output 'boxes' (outputs: output0)")
    r = yexport("export", "yolov5n", "--img", "256", "--atol", "boxes=1e-4", "-o", tmp_path)
    one_line_error(r, "no output 'boxes'")
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("value", ["output0=abc", "-1", "output0=-1e-3"])
def test_bad_atol(n320: Exported, value: str) -> None:
    r = yexport("check", n320.path, "--atol", value)
    assert r.exit_code == 2 and "--atol" in r.stderr and "Traceback" not in r.output


# ------------------------------------------------------------------- training-mode reference


def test_training_file_needs_the_train_reference(n320_training: TrainingExport) -> None:
    e, model = n320_training.exported, builtin("yolov5n").model
    auto = check_parity(e.path, model)  # picks the train-mode reference from the file's metadata
    assert auto and auto.reference == "train"
    evalref = check_parity(e.path, model, training=False)
    assert not evalref and evalref.reference == "eval"
    train_abs = auto.providers[0].cases[0].outputs[0].max_abs
    eval_abs = evalref.providers[0].cases[0].outputs[0].max_abs
    assert eval_abs > 100 * train_abs and eval_abs > 1.0, (train_abs, eval_abs)


def test_cpu_session_reports_what_ran(n320: Exported) -> None:
    sess, result = open_session(n320.path.read_bytes(), "cpu")
    assert sess is not None and result.ran and result.ran_on == ["CPUExecutionProvider"]
