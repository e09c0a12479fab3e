"""Export options: defaults, refused combinations, variants, --config defaults and bad inputs.

Refusals happen before any model is loaded or exported, so these tests are quick; each also checks
that nothing was written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import ConfigError
from exporter.options import VARIANTS, ExportOptions, variant_options
from tests.pipeline.conftest import Exported, check_written, one_line_error, usage_error, yexport


def test_defaults_are_the_documented_ones() -> None:
    o = ExportOptions()
    assert (o.atol, o.rtol, o.inputs) == (None, None, None)  # the noise-floor rule, 2 inputs
    assert o.opset == 18 and o.img == (640, 640) and o.providers == ("cpu",)
    assert o.fuse_bn and not o.bn_kept and not o.training
    assert o.capture_exporter == "torchscript"
    # training mode keeps BatchNorm unless told otherwise
    assert ExportOptions(training=True).bn_kept


@pytest.mark.parametrize(("changes", "needle"), [
    ({"training": True, "exporter": "dynamo"}, "dynamo exporter ignores training mode"),
    ({"training": True, "keep_bn": False}, "cannot be combined with --fuse-bn"),
    ({"int_shapes": True, "dynamic": "all"}, "bakes the traced height and width"),
    ({"img": (100, 100)}, "multiples of 32"),
    ({"opset": 5}, "between 7 and 23"),
    ({"providers": ("cpu", "tpu")}, "unknown provider 'tpu'"),
    ({"require": ("gpu",)}, "unknown provider 'gpu'"),
])
def test_validate_refuses(changes: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ExportOptions(**changes).validate()


def test_validate_allows_int_shapes_with_dynamic_batch() -> None:
    o = ExportOptions(int_shapes=True, dynamic="batch")
    assert o.validate() is o


@pytest.mark.parametrize(("int_shapes", "dynamic", "used"), [
    (None, None, True), (None, "batch", True), (None, "all", False),  # auto: on wherever it is exact
    (False, None, False), (False, "batch", False), (False, "all", False),
    (True, None, True), (True, "batch", True),
])
def test_int_shapes_auto_explicit_and_described(int_shapes: bool | None, dynamic: str | None, used: bool) -> None:
    o = ExportOptions(int_shapes=int_shapes, dynamic=dynamic).validate()  # type: ignore[arg-type]
    assert o.use_int_shapes is used and o.describe()["int_shapes"] is used


def test_variants_combine_with_plus() -> None:
    base = ExportOptions(img=(320, 320))
    o = variant_options(base, "keep-bn+simplify+dynamic")
    assert (o.keep_bn, o.simplify, o.dynamic, o.img) == (True, True, "batch", (320, 320))
    assert variant_options(base, "fused").fuse_bn
    assert set(VARIANTS) >= {"fused", "keep-bn", "training", "int-shapes", "no-int-shapes", "simplify", "dynamic",
                             "dynamic-all", "raw", "dynamo"}
    assert variant_options(base, "dynamic+no-int-shapes").use_int_shapes is False
    with pytest.raises(ConfigError, match="unknown variant 'keepbn'"):
        variant_options(base, "keep-bn+keepbn")


# ------------------------------------------------------------------------- refused on the command line


@pytest.mark.parametrize(("args", "needle"), [
    (["--training-mode", "--exporter", "dynamo"], "--training-mode needs the TorchScript exporter: the dynamo "
                                                  "exporter ignores training mode"),
    (["--training-mode", "--fuse-bn"], "cannot be combined with --fuse-bn"),
    (["--int-shapes", "--dynamic", "all"], "--int-shapes bakes the traced height and width into the graph"),
    (["--variants", "fused,keep-bn,sideways"], "unknown variant 'sideways'"),
    (["--variants", "training+dynamo"], "--training-mode needs the TorchScript exporter"),
    (["--dynamic", "all", "--variants", "fused,int-shapes"], "--int-shapes bakes"),
    (["--img", "100"], "--img 100,100: sizes must be multiples of 32"),
    (["--providers", "cpu,tpu"], "unknown provider 'tpu'"),
    (["--require", "cudaa"], "unknown provider 'cudaa'"),
])
def test_refused_before_any_work(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out"
    line = one_line_error(yexport("export", "yolov5n", "-o", out, *args), needle)
    assert len(line) < 400
    assert not out.exists()


def test_training_mode_with_dynamo_says_why(tmp_path: Path) -> None:
    r = yexport("export", "yolov5n", "--training-mode", "--exporter", "dynamo", "-o", tmp_path)
    line = one_line_error(r, "dynamo")
    assert "would silently write an eval graph" in line and "--exporter torchscript" in line


def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    one_line_error(yexport("export", missing, "-o", tmp_path / "out"), f"{missing}: no such file or built-in model")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("img", ["abc", "16", "640,480,320"])
def test_bad_img_is_a_usage_error(tmp_path: Path, img: str) -> None:
    line = usage_error(yexport("export", "yolov5n", "--img", img, "-o", tmp_path / "out"), "--img")
    assert repr(img) in line
    assert not (tmp_path / "out").exists()


def test_images_dir_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    r = yexport("export", "yolov5n", "--img", "256", "-o", out, "--images", empty)
    one_line_error(r, f"--images {empty}: no .jpg/.png images found")
    assert not list(out.glob("*.onnx"))  # it failed in the parity stage, before anything was written


def test_images_not_a_directory(tmp_path: Path, n320: Exported) -> None:
    r = yexport("check", n320.path, "--images", tmp_path / "missing")
    one_line_error(r, "not a directory of JPEG/PNG images")


# ------------------------------------------------------------------------------------------ --config


def test_config_sets_defaults_and_command_line_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "export.yaml"
    cfg.write_text("keep-bn: true\nimg: 320\ncheck: false\nname: from-config\nopset: 17\n", encoding="utf-8")
    out = tmp_path / "out"
    r = yexport("export", "yolov5n", "--config", cfg, "--img", "256", "-o", out)
    assert r.exit_code == 0, r.output
    e = Exported.read(out / "from-config.onnx", r)
    check_written(e)
    o = e.manifest["options"]
    assert o["img"] == [256, 256]  # the command line wins
    assert o["keep_bn"] is True and o["opset"] == 17  # from the config
    assert e.manifest["parity"] is None and "parity" not in [s["name"] for s in e.manifest["stages"]]
    assert e.ops["BatchNormalization"] == 57
    assert "not checked" in r.stdout


def test_config_keys_as_parameter_names(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: true\nexporter: dynamo\n", encoding="utf-8")
    # keys spelled as parameter names work, and the combination they make is refused like on the command line
    one_line_error(yexport("export", "yolov5n", "--config", cfg, "-o", tmp_path / "o"), "dynamo exporter ignores")


@pytest.mark.parametrize(("text", "needle"), [
    ("keep-bn: true\nimgsiz: 640\n", "unknown option(s) imgsiz"),
    ("- keep-bn\n", "expected a mapping"),
    ("keep-bn: [true\n", "YAML syntax error"),
])
def test_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text, encoding="utf-8")
    line = one_line_error(yexport("export", "yolov5n", "--config", cfg, "-o", tmp_path / "out"), needle)
    assert str(cfg) in line
    assert not (tmp_path / "out").exists()


def test_img_must_be_a_multiple_of_the_models_largest_stride(tmp_path: Path) -> None:
    r = yexport("export", "yolov5n6", "--img", "672", "-o", tmp_path)
    one_line_error(r, "largest stride is 64")
    assert not list(tmp_path.glob("*.onnx"))
