"""Parity: the noise-floor rule against a float64 truth, the explicit tolerance that replaces it on
request, inputs that are never the capture example, the figures reported, your own images, the train-mode
reference of a --training-mode file, and honest errors."""

from __future__ import annotations

import json
import math
from copy import deepcopy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.errors import ConfigError, InputError, ParityError, first_line
from exporter.parity import (
    build_reference,
    check_parity,
    compare_floor,
    compare_tolerance,
    compare_with,
    open_session,
)
from exporter.parity.compare import K_MAX, K_Q, QUANTILE, SELECT_MIN, YoloLayout, whole, yolo_groups
from exporter.parity.inputs import INPUT_SEED_OFFSET
from tests.pipeline.conftest import Exported, TrainingExport, builtin, one_line_error, yexport

# ------------------------------------------------------------------------------ the noise-floor rule


def _noisy(n: int, scale: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, n)


def test_floor_rule_passes_an_error_like_fp32s_and_fails_a_larger_one() -> None:
    truth = np.linspace(-5, 5, 100_000)
    fp32 = truth + _noisy(truth.size, 1e-5, 0)
    same = truth + _noisy(truth.size, 1e-5, 1)  # another rounding of the same size
    assert compare_floor("o", same, fp32, truth, whole()).passed
    bigger = truth + _noisy(truth.size, (K_Q + 0.5) * 1e-5, 2)  # above K_Q x at the 99.9th percentile
    r = compare_floor("o", bigger, fp32, truth, whole())
    assert not r.passed and r.ratio > K_Q, r.ratio
    (g,) = r.groups
    assert g.onnx_q == pytest.approx(np.quantile(np.abs(bigger - truth), QUANTILE))
    assert g.torch_q == pytest.approx(np.quantile(np.abs(fp32 - truth), QUANTILE))


def test_floor_rule_backstop_on_the_maximum() -> None:
    """A few elements far off stay below the 99.9th percentile: the maximum catches them."""
    truth = np.linspace(-5, 5, 100_000)
    fp32 = truth + _noisy(truth.size, 1e-5, 0)
    out = truth + _noisy(truth.size, 1e-5, 1)
    out[[10, 500, 9000]] += 2 * K_MAX * np.abs(fp32 - truth).max()
    r = compare_floor("o", out, fp32, truth, whole())
    assert not r.passed
    assert r.groups[0].ratio < K_Q < K_MAX < r.groups[0].ratio_max
    assert r.worst.startswith("all [")


def test_floor_rule_exact_outputs_and_nan_and_shape() -> None:
    truth = np.arange(10.0)
    assert compare_floor("o", truth.astype(np.float32), truth.astype(np.float32), truth, whole()).passed
    bad = truth.copy()
    bad[3] = np.nan
    assert not compare_floor("o", bad, truth, truth, whole()).passed
    mismatch = compare_floor("o", np.zeros(11), truth, truth, whole())
    assert not mismatch.passed and math.isinf(mismatch.max_abs) and "shape" in mismatch.worst


def _quantile_cases() -> list[np.ndarray]:
    """Arrays the rule's percentile meets, and some that defeat a strided sample's threshold."""
    rng = np.random.default_rng(0)
    n = 3 * SELECT_MIN + 17
    spiky = rng.random(n)
    spiky[rng.integers(0, n, 60)] = np.inf
    return [
        rng.random(n), np.abs(rng.standard_normal(n)) * 1e-6,  # errors at the scale of fp32 rounding
        rng.integers(0, 4, n).astype(np.float64),  # heavy ties around the percentile
        np.sort(rng.random(n)), np.sort(rng.random(n))[::-1].copy(),  # the sample follows the order
        np.zeros(n), spiky,
        np.tile(rng.random(64), n // 64 + 1)[:n],  # periodic with the sample's step
        np.where(np.arange(n) % (n // 8192) == 0, 0.0, 1.0),  # the sample sees only the smallest value
        rng.random(n) + 10.0 * (np.arange(n) % (n // 8192) == 0),  # only the largest: too few pass (numpy's path)
        rng.random((n // 85 + 1, 85))[..., 5:],  # a column group: a view that is not contiguous
        rng.random(SELECT_MIN - 1), rng.random(n).astype(np.float32),  # numpy's own path
    ]


@pytest.mark.parametrize("k", range(13))
def test_percentile_is_numpys_to_the_bit(k: int) -> None:
    from exporter.parity.compare import _q

    a = _quantile_cases()[k]
    with np.errstate(invalid="ignore"):  # inf - inf in numpy's interpolation of the spiky case
        want = float(np.quantile(a, QUANTILE))
        assert _q(a) == want or (math.isnan(want) and math.isnan(_q(a)))


def test_percentile_with_a_nan_is_nan() -> None:
    from exporter.parity.compare import _q

    a = np.random.default_rng(1).random(4 * SELECT_MIN)
    a[12345] = np.nan
    assert math.isnan(_q(a)) and math.isnan(float(np.quantile(a, QUANTILE)))


def _layout() -> YoloLayout:
    # two levels, one anchor each: strides 8 and 32, anchors 10x20 and 100x200 px; a 64x64 input
    return YoloLayout((8.0, 32.0), (((10.0, 20.0),), ((100.0, 200.0),)), 6)


def test_yolo_groups_normalise_boxes_by_stride_and_anchor() -> None:
    groups = yolo_groups(_layout(), (1, 64 + 4, 6), 64, 64)
    assert groups is not None and [g.name for g in groups] == ["xy", "wh", "obj", "cls"]
    err = np.zeros((1, 68, 6))
    err[0, 0, 0] = 8.0  # one px x 8 at stride 8: one grid cell
    err[0, 64, 0] = 32.0  # 32 px at stride 32: one grid cell too
    err[0, 64, 3] = 200.0  # h off by the anchor's own height: one anchor
    xy, wh = groups[0].take(err), groups[1].take(err)
    assert xy[0, 0, 0] == xy[0, 64, 0] == 1.0
    assert wh[0, 64, 1] == 1.0 and wh.max() == 1.0
    assert groups[2].take(err).shape == (1, 68, 1) and groups[3].take(err).shape == (1, 68, 1)
    assert yolo_groups(_layout(), (1, 67, 6), 64, 64) is None  # not this layout: judged as a whole


def test_a_small_box_error_at_a_coarse_stride_is_judged_in_grid_cells() -> None:
    """The false alarm of the fixed rule: 0.2 px on a box near x=0 at stride 32 is 0.6% of a cell,
    the same relative size as fp32's own error there. It passes."""
    layout = _layout()
    truth = np.random.default_rng(0).uniform(0, 64, (1, 68, 6))
    fp32, out = truth.copy(), truth.copy()
    fp32[0, 64:, 0] += 0.1
    out[0, 64:, 0] += 0.2
    groups = yolo_groups(layout, truth.shape, 64, 64)
    assert groups is not None
    assert compare_floor("o", out, fp32, truth, groups).passed
    assert not compare_tolerance("o", out, fp32, 1e-3, 1e-3).passed  # the old fixed rule fails it


# ------------------------------------------------------------------------------ the explicit rule


def test_tolerance_rule_is_elementwise_atol_plus_rtol_times_reference() -> None:
    atol = rtol = 1e-3
    ref = np.array([0.0, 0.5, 1.0, 100.0, -640.0], dtype=np.float32)
    allowed = atol + rtol * np.abs(ref.astype(np.float64))
    assert compare_tolerance("out", (ref + 0.99 * allowed).astype(np.float32), ref, atol, rtol).passed
    assert not compare_tolerance("out", ref + np.array([0.1, 0, 0, 0, 0], np.float32), ref, atol, rtol).passed
    for i in range(ref.size):  # any one element just over its own allowance fails the whole output
        bump = np.zeros_like(ref, dtype=np.float64)
        bump[i] = 1.01 * allowed[i]
        r = compare_tolerance("out", (ref + bump).astype(np.float32), ref, atol, rtol)
        assert not r.passed and r.worst.startswith(f"[{i}]"), (i, r.worst)


def test_figures_max_abs_and_max_rel() -> None:
    ref = np.array([[0.0, 2.0], [-4.0, 1e-5]], dtype=np.float32)
    out = ref + np.array([[5e-4, 1e-3], [-2e-3, 5e-4]], dtype=np.float32)
    r = compare_tolerance("out", out, ref, 1e-3, 1e-3)
    assert r.max_abs == pytest.approx(2e-3, rel=1e-4)
    assert r.max_rel == pytest.approx(5e-4, rel=1e-3)  # only where |ref| > 1e-3
    assert r.passed and r.shape == [2, 2] and r.cosine == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------ on a real export


def test_reported_figures_recomputed_independently(n320: Exported) -> None:
    """Run the file on onnxruntime ourselves, and the model in fp32 and float64 ourselves, on the parity
    inputs: the reported 99.9th-percentile errors are what we measure (the ONNX error per input, PyTorch's
    own pooled over both inputs: the floor is the model's, not one input's)."""
    import onnxruntime as ort

    from exporter.models.weights import synthetic_images

    cases = n320.parity["providers"][0]["cases"]
    assert [c["input"] for c in cases] == [f"synthetic seed {INPUT_SEED_OFFSET + k}" for k in range(2)]
    model = deepcopy(builtin("yolov5n").model).eval()
    model.model[-1].output = "decode"
    model64 = deepcopy(model).double()
    sess = ort.InferenceSession(str(n320.path), providers=["CPUExecutionProvider"])
    stride = np.concatenate([np.full(3 * (320 // s) ** 2, float(s)) for s in (8, 16, 32)])[None, :, None]
    torch_errors = []
    for k, case in enumerate(cases):
        x = synthetic_images(1, (320, 320), INPUT_SEED_OFFSET + k)
        with torch.no_grad():
            y32 = model(x).numpy().astype(np.float64)
            y64 = model64(x.double()).numpy()
        (out,) = sess.run(None, {"images": x.numpy()})
        xy = case["outputs"][0]["groups"][0]
        assert xy["name"] == "xy"
        want_onnx = np.quantile(np.abs(out[..., :2].astype(np.float64) - y64[..., :2]) / stride, QUANTILE)
        assert xy["onnx_q"] == pytest.approx(want_onnx, rel=1e-6)
        assert case["outputs"][0]["max_abs"] == pytest.approx(np.abs(out - y32).max(), rel=1e-6)
        torch_errors.append((np.abs(y32[..., :2] - y64[..., :2]) / stride).ravel())
    pooled = np.quantile(np.concatenate(torch_errors), QUANTILE)
    assert [c["outputs"][0]["groups"][0]["torch_q"] for c in cases] == [pytest.approx(pooled, rel=1e-6)] * 2


def test_inputs_are_not_the_capture_example(n320: Exported) -> None:
    from exporter.models.weights import synthetic_images

    cases = n320.parity["providers"][0]["cases"]
    assert [c["input"] for c in cases] == [f"synthetic seed {INPUT_SEED_OFFSET + k}" for k in range(2)]
    example = synthetic_images(1, (320, 320), 0)  # what capture traced (seed 0)
    for c in cases:
        seed = int(c["input"].split()[-1])
        assert not torch.equal(synthetic_images(1, (320, 320), seed), example)


def test_report_text_and_json(n320: Exported) -> None:
    r = yexport("check", n320.path, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["truth"] == "float64" and "99.9th percentile" in rep["tolerance"]
    out = rep["providers"][0]["outputs"][0]
    assert [g["name"] for g in out["groups"]] == ["xy", "wh", "obj", "cls"]
    assert out["rule"] == "noise-floor" and 0 < out["ratio"] < K_Q and out["passed"] is True
    case = rep["providers"][0]["cases"][0]
    # a pass has nothing to explain: the fused copy is not made, and a note says so
    assert case["fusion_max_abs"] is None and out["capture_max_abs"] is None
    assert any("capture and fusion figures not measured" in n for n in rep["notes"])
    assert case["detections"]["line"].startswith("detections (conf 0.25, IoU 0.45)")
    rep = json.loads(yexport("check", n320.path, "--json", "--sources").stdout)
    case, out = rep["providers"][0]["cases"][0], rep["providers"][0]["outputs"][0]
    assert case["fusion_max_abs"] > 0 and out["capture_max_abs"] > 0
    later = rep["providers"][0]["cases"][1]  # the fused copy's forward ran on the first input only
    assert later["fusion_max_abs"] is None and later["outputs"][0]["capture_max_abs"] is None
    assert not any("not measured" in n for n in rep["notes"])
    table = yexport("check", n320.path, "--sources")
    assert table.exit_code == 0
    assert "output0[xy]" in table.stdout and "fp32 q99.9" in table.stdout and "detections (conf 0.25" in table.stdout
    assert "fusion" in table.stdout and "=> PASS" in table.stdout
    assert yexport("check", n320.path, "--no-detections", "--json").exit_code == 0


def test_a_fused_file_is_checked_on_two_copies_of_the_model(n320: Exported, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference copy and the fused copy: check_parity runs the fused copy it made as it is (no
    third copy), and the caller's model is untouched."""
    import exporter.parity.reference as reference

    copies: list[str] = []
    real = reference.deepcopy

    def counted(m: object, *a: object) -> object:
        copies.append(type(m).__name__)
        return real(m, *a)

    monkeypatch.setattr(reference, "deepcopy", counted)
    model = builtin("yolov5n").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    det = model.model[-1]
    mode = (det.output, det.int_shapes, model.training)
    rep = check_parity(n320.path, model, detections=False, sources=True)
    assert rep and rep.providers[0].cases[0].fusion_max_abs is not None
    assert copies == [type(model).__name__] * 2
    assert (det.output, det.int_shapes, model.training) == mode
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_repeat_reports_the_run_to_run_spread(n320: Exported) -> None:
    r = yexport("check", n320.path, "--repeat", "3", "--inputs", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["providers"][0]["repeat_max_abs"] == 0.0  # the CPU provider is deterministic


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


def test_check_uses_every_image(n320: Exported, images: Path) -> None:
    r = yexport("check", n320.path, "--images", images, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert images.name in rep["inputs"] and rep["passed"] is True
    cases = rep["providers"][0]["cases"]
    assert [c["input"] for c in cases] == ["a.png", "b.png", "c.png"]
    assert all(c["passed"] and c["shape"] == [1, 3, 320, 320] for c in cases)
    two = json.loads(yexport("check", n320.path, "--images", images, "--inputs", "2", "--json").stdout)
    assert [c["input"] for c in two["providers"][0]["cases"]] == ["a.png", "b.png"]


@pytest.mark.slow
def test_images_reach_the_comparison(n320: Exported, images: Path) -> None:
    model = builtin("yolov5n").model
    synthetic = check_parity(n320.path, model, inputs=1).providers[0].cases[0].outputs[0]
    own = check_parity(n320.path, model, images=str(images), inputs=1).providers[0].cases[0].outputs[0]
    assert (own.max_abs, own.mean_abs) != (synthetic.max_abs, synthetic.mean_abs)


# ------------------------------------------------------------------------- explicit tolerances


def test_explicit_tolerance_replaces_the_rule(n320: Exported) -> None:
    r = yexport("check", n320.path, "--atol", "output0=1e-9", "--rtol", "0", "--json")
    assert r.exit_code == 1  # tighter than fp32's own error: the explicit rule decides, and fails
    rep = json.loads(r.stdout)
    out = rep["providers"][0]["outputs"][0]
    assert out["rule"] == "tolerance" and out["atol"] == 1e-9 and "output0: atol 1e-09" in rep["tolerance"]
    ok = yexport("check", n320.path, "--atol", "1e-9", "--rtol", "0", "--atol", "output0=1", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["providers"][0]["outputs"][0]["atol"] == 1


def test_unknown_output_name(n320: Exported, tmp_path: Path) -> None:
    one_line_error(yexport("check", n320.path, "--atol", "boxes=1e-4"), "the file has no output 'boxes' (outputs: output0)")
    r = yexport("export", "yolov5n", "--img", "256", "--atol", "boxes=1e-4", "-o", tmp_path)
    one_line_error(r, "no output 'boxes'")
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("value", ["output0=abc", "-1", "output0=-1e-3", "nan"])
def test_bad_atol(n320: Exported, value: str) -> None:
    r = yexport("check", n320.path, "--atol", value)
    assert r.exit_code == 2 and "--atol" in r.stderr and "Traceback" not in r.output


# ------------------------------------------------------------------- training-mode reference


@pytest.mark.slow
def test_training_file_needs_the_train_reference(n320_training: TrainingExport) -> None:
    e, model = n320_training.exported, builtin("yolov5n").model
    auto = check_parity(e.path, model)  # picks the train-mode reference from the file's metadata
    assert auto and auto.reference == "train"
    evalref = check_parity(e.path, model, training=False)  # BatchNorm with batch statistics vs the eval model
    assert not evalref and evalref.reference == "eval"
    assert evalref.providers[0].worst()[0].ratio > 100 * auto.providers[0].worst()[0].ratio


# ------------------------------------------------------------------------------- honest errors


def test_cpu_session_reports_what_ran(n320: Exported) -> None:
    sess, result = open_session(n320.path.read_bytes(), "cpu")
    assert sess is not None and result.ran and result.ran_on == ["CPUExecutionProvider"]


def test_zero_inputs_are_refused_in_the_library(n320: Exported) -> None:
    with pytest.raises(ConfigError, match="at least one input"):
        check_parity(n320.path, builtin("yolov5n").model, inputs=0)


def test_first_line_is_safe_on_empty_messages() -> None:
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("\n\nsecond")) == "second"


def _tiny(tmp_path: Path, graph_nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph(graph_nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    p = tmp_path / "tiny.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_a_runtime_failure_is_a_runtime_failure(tmp_path: Path) -> None:
    """onnxruntime failing while running (a Reshape that cannot fit) is exit 1 with its message, not an
    input-shape complaint."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    path = _tiny(tmp_path, [helper.make_node("Reshape", ["x", "shape"], ["y"])], [shape])
    ref = build_reference(torch.nn.Identity(), [(1, 4)], inputs=1)
    with pytest.raises(ParityError, match="onnxruntime failed running the file on cpu"):
        compare_with(path.read_bytes(), ref)


def test_an_unloadable_graph_is_an_input_error(tmp_path: Path) -> None:
    from onnx import helper

    path = _tiny(tmp_path, [helper.make_node("NoSuchOp", ["x"], ["y"])], [])
    ref = build_reference(torch.nn.Identity(), [(1, 4)], inputs=1)
    with pytest.raises(InputError, match="onnxruntime cannot load the file"):
        compare_with(path.read_bytes(), ref)


def test_generic_model_is_judged_per_output(tmp_path: Path) -> None:
    """Any nn.Module: one group per output, the same rule."""
    from exporter.api import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.SiLU())
    model.eval()
    (res,) = export(model, out_dir=tmp_path, name="seq", img=(64, 64))
    assert res.ok, res.parity.format()
    (out,) = res.parity.providers[0].worst()
    assert [g.name for g in out.groups] == ["all"] and out.rule == "noise-floor"
