"""YOLOv8 / YOLO11 detectors: built from their YAML with the published parameter counts, loaded from
checkpoints in the Ultralytics pickle layout without running code from them (strict weights, their own
activations), exported in export mode with the metadata Ultralytics' runtime reads."""

from __future__ import annotations

import ast
import json
import types
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from exporter.cli.main import cli
from exporter.errors import CheckpointError, ModelError
from exporter.io import load_yaml
from exporter.models import load_model
from exporter.models.checkpoint import load_checkpoint
from exporter.models.v8 import SPPF, DetectionModel, is_ultralytics_config
from tests.models import ultralytics_layout as ul

# Ultralytics' own summaries of these configs (cfg/models/v8/yolov8.yaml, 11/yolo11.yaml): parameters,
# of which the DFL conv's 16 fixed weights take no gradient
PUBLISHED = {"yolov8n": 3_157_200, "yolo11n": 2_624_080}
FUSED = {"yolov8n": 3_151_904, "yolo11n": 2_616_248}  # Ultralytics' "summary (fused)" of the same models


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    d = tmp_path_factory.mktemp("ultralytics")
    models = {n: ul.build(n) for n in PUBLISHED}
    paths = {n: ul.write(m, d / f"{n}.pt") for n, m in models.items()}
    return types.SimpleNamespace(models=models, paths=paths, dir=d)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_configs_build_with_the_published_parameter_counts(name: str) -> None:
    model = DetectionModel(load_yaml(ul.CONFIGS[name])).eval()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PUBLISHED[name] - 16
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.generation == ("yolo11" if name.startswith("yolo11") else "yolov8")
    with torch.no_grad():
        y = model(torch.zeros(1, 3, 256, 320))
    assert y.shape == (1, 4 + 80, (32 * 40 + 16 * 20 + 8 * 10))  # decoded: xywh + class probabilities per anchor


def test_decoded_boxes_are_pixels_around_cell_centres() -> None:
    model = DetectionModel(load_yaml(ul.CONFIGS["yolov8n"])).eval()
    with torch.no_grad():
        for m in model.model[-1].cv2:  # every box bin equally likely: distance 7.5 cells on each side
            m[-1].weight.zero_()
            m[-1].bias.zero_()
        y = model(torch.zeros(1, 3, 64, 64))
    # level P3 (stride 8) is first: cell (0, 0) centre at 4 px, size 2 * 7.5 * 8 px
    assert torch.allclose(y[0, :4, 0], torch.tensor([4.0, 4.0, 120.0, 120.0]))
    assert ((y[0, 4:] > 0) & (y[0, 4:] < 1)).all()


def test_config_detection_and_errors() -> None:
    assert is_ultralytics_config(load_yaml(ul.CONFIGS["yolo11n"]))
    assert not is_ultralytics_config({"nc": 80, "anchors": [[10, 13]], "backbone": [], "head": []})
    cfg = load_yaml(ul.CONFIGS["yolov8n"])
    cfg["head"][-1] = [[15, 18, 21], 1, "RTDETRDecoder", ["nc"]]
    with pytest.raises(ModelError, match="'RTDETRDecoder' is not one yexport can build"):
        DetectionModel(cfg)
    cfg = load_yaml(ul.CONFIGS["yolov8n"])
    cfg["end2end"] = True
    with pytest.raises(ModelError, match="end-to-end"):
        DetectionModel(cfg)


def test_checkpoint_loads_safely_with_strict_weights(checkpoints: types.SimpleNamespace) -> None:
    for name, path in checkpoints.paths.items():
        model, info = load_checkpoint(path)
        ours = checkpoints.models[name]
        assert info["format"] == "ultralytics" and info["class"] == "ultralytics.nn.tasks.DetectionModel"
        assert info["generation"] == ours.generation and info["scale"] == "n" and info["fp16"] is True
        assert info["names"][:3] == ["person", "bicycle", "car"] and model.names[0] == "person"
        sd, want = model.state_dict(), ours.state_dict()
        assert sd.keys() == want.keys()
        assert all(torch.equal(sd[k], want[k].half().float()) for k in want if want[k].is_floating_point())
        assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_the_checkpoints_activations_are_kept(tmp_path: Path) -> None:
    model = ul.build("yolov8n")
    sppf = next(m for m in model.modules() if isinstance(m, SPPF))
    sppf.cv1.act = nn.Identity()  # as Ultralytics 8.4 builds SPPF
    path = ul.write(model, tmp_path / "a.pt")
    loaded, _ = load_checkpoint(path)
    assert isinstance(next(m for m in loaded.modules() if isinstance(m, SPPF)).cv1.act, nn.Identity)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model.half().float().eval()(x), atol=1e-2, rtol=1e-3)


def test_ema_only_training_checkpoint(tmp_path: Path, checkpoints: types.SimpleNamespace) -> None:
    path = ul.write(checkpoints.models["yolov8n"], tmp_path / "last.pt", as_ema=True)
    _, info = load_checkpoint(path)
    assert info["ema"] is True and info["epoch"] == 99


def test_unknown_ultralytics_class_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ul.build("yolov8n")
    with ul.fake_ultralytics():
        pass
    places = {**ul._PLACES, "ultralytics.nn.modules.block": {**ul._PLACES["ultralytics.nn.modules.block"]}}
    places["ultralytics.nn.modules.block"]["SPPELAN"] = places["ultralytics.nn.modules.block"].pop("SPPF")
    monkeypatch.setattr(ul, "_PLACES", places)
    path = ul.write(model, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"'ultralytics\.nn\.modules\.block\.SPPELAN' \(an Ultralytics class"):
        load_checkpoint(path)


@pytest.mark.slow
def test_weights_that_do_not_match_the_config_are_refused(tmp_path: Path) -> None:
    model = ul.build("yolov8n")
    model.yaml = {**model.yaml, "scale": "s"}  # the pickled config says s, the weights are n
    path = ul.write(model, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="weights do not match|layers differ|shape mismatch"):
        load_checkpoint(path)


def _run(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_info_and_fuse_check(checkpoints: types.SimpleNamespace) -> None:
    for name, path in checkpoints.paths.items():
        r = _run("info", path, "--json")
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        assert info["parameters"] == PUBLISHED[name] and info["gradients"] == PUBLISHED[name] - 16
        assert info["parameters_fused"] == FUSED[name]
    r = _run("fuse-check", checkpoints.paths["yolo11n"], "--img", "128")
    assert r.exit_code == 0 and "PASS" in r.stdout, r.output


def test_info_text_counts(checkpoints: types.SimpleNamespace) -> None:
    r = _run("info", checkpoints.paths["yolo11n"])
    assert r.exit_code == 0, r.output
    assert "2,624,080 parameters, 2,624,064 gradients" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_export_in_export_mode_with_ultralytics_metadata(name: str, checkpoints: types.SimpleNamespace,
                                                         tmp_path: Path) -> None:
    r = _run("export", checkpoints.paths[name], "--img", "256", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    f = tmp_path / f"{name}.onnx"
    model = onnx.load(str(f))
    [inp], [out] = model.graph.input, model.graph.output
    assert inp.name == "images" and out.name == "output0"
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == [1, 84, 32 * 32 + 16 * 16 + 8 * 8]
    meta = {p.key: p.value for p in model.metadata_props}
    # what Ultralytics' AutoBackend parses: ints, and Python literals
    assert int(meta["stride"]) == 32 and int(meta["batch"]) == 1 and int(meta["channels"]) == 3
    assert meta["task"] == "detect" and ast.literal_eval(meta["imgsz"]) == [256, 256]
    assert ast.literal_eval(meta["names"])[0] == "person" and ast.literal_eval(meta["end2end"]) is False
    assert ast.literal_eval(meta["args"])["nms"] is False
    manifest = json.loads(f.with_suffix(".json").read_text())
    assert manifest["parity"]["passed"] is True and manifest["model"]["format"] == "ultralytics"
    assert not manifest["tracer_warnings"]


def test_load_model_builds_a_v8_yaml() -> None:
    lm = load_model(ul.CONFIGS["yolo11n"])
    assert isinstance(lm.model, DetectionModel) and lm.extra["generation"] == "yolo11"
