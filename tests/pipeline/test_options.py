"""Export options: defaults, refused combinations, variants, --config defaults and bad inputs.

Refusals happen before any model is loaded or exported, so these tests are quick; each also checks
that nothing was written.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import click
import pytest

from exporter.cli._options import options_from, values_from
from exporter.errors import ConfigError
from exporter.options import VARIANTS, ExportOptions, ParityOptions, flag_of, option, variant_options
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


# ------------------------------------------------------------------ the options model makes the flags


def _help_rows(cmd: str) -> dict[tuple[str, ...], tuple[str, str]]:
    """``yexport CMD --help`` as {option names of a row: (its section, its text on one line)}."""
    r = yexport(cmd, "--help")
    assert r.exit_code == 0, r.output
    rows: dict[tuple[str, ...], tuple[str, str]] = {}
    section, key = "", None
    for line in r.stdout.splitlines():
        if line and not line.startswith(" "):
            section, key = line.rstrip(":"), None
        elif re.match(r"^  -", line):
            term, _, text = line.strip().partition("  ")
            key = tuple(re.findall(r"--?[\w-]+", term))
            rows[key] = (section, text.strip())
        elif key is not None:
            rows[key] = (rows[key][0], f"{rows[key][1]} {line.strip()}".strip())
    return rows


def _shown_default(f: dataclasses.Field) -> str | None:
    """What ``[default: ...]`` should say for a field, from its default alone (None: nothing shown)."""
    flag = flag_of(f)
    assert flag is not None
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    pair = flag.decls[0].split("/")
    if flag.switch is not None:  # --raw-head/--decode: the flag whose value is the default
        return pair[flag.switch.index(value)].lstrip("-")
    if value is None or value is False or flag.multiple:
        return None
    if value is True:
        return pair[0].lstrip("-")
    if f.name == "img":
        return "640" if value == (640, 640) else ",".join(map(str, value))
    if isinstance(value, tuple):
        return ",".join(value) or '""'
    return str(value)


@pytest.mark.parametrize(("cmd", "model"), [("export", ExportOptions), ("check", ParityOptions)])
def test_every_option_field_is_a_flag_with_its_default(cmd: str, model: type) -> None:
    rows = _help_rows(cmd)
    seen = 0
    for f in dataclasses.fields(model):
        assert "cli" in f.metadata, f"{f.name}: declare its flag (option(...)) or what sets it (set_by(...))"
        flag = flag_of(f)
        if flag is None:  # set by an option shared with other commands (--seed, --input-shape, --atol)
            assert f.metadata["cli"] is None or any(f.metadata["cli"] in k for k in rows), f.name
            continue
        names = tuple(n for d in flag.decls for n in d.split("/"))
        assert names in rows, f"{f.name}: {names} not in {cmd} --help"
        section, text = rows[names]
        assert section == flag.group or cmd == "check", (f.name, section)
        assert " ".join(flag.help.split()) in text
        default = _shown_default(f)
        shown = re.search(r"\[default: ([^;\]]*)", text)
        assert (shown.group(1) if shown else None) == default, (f.name, text)
        seen += 1
    assert seen >= (20 if model is ExportOptions else 8)


def test_no_flags_give_the_models_defaults_and_flags_reach_their_fields() -> None:
    from exporter.cli.check import check
    from exporter.cli.export import export

    def parsed(*args: str) -> ExportOptions:
        ctx = export.make_context("export", ["yolov5n", *args])
        return ExportOptions(**values_from(ExportOptions, dict(ctx.params)))

    assert parsed() == ExportOptions()
    ctx = check.make_context("check", ["m.onnx"])
    assert ParityOptions(**values_from(ParityOptions, dict(ctx.params))) == ParityOptions()
    o = parsed("--raw-head", "--dynamic", "--imgsz", "320,256", "--fuse-bn", "--no-int-shapes", "--atol", "1e-2",
               "--atol", "output0=3", "--providers", "cpu,cuda", "--half", "--half-io", "float32", "--no-detections")
    assert (o.head, o.dynamic, o.img, o.keep_bn, o.int_shapes) == ("raw", "all", (320, 256), False, False)
    assert (o.atol, o.output_atol, o.providers) == (0.01, {"output0": 3.0}, ("cpu", "cuda"))
    assert (o.half, o.half_io, o.detections) == (True, "float32", False)
    assert parsed("--dynamic", "batch", "--decode", "--keep-bn") == ExportOptions(dynamic="batch", keep_bn=True)


def test_config_file_values_reach_the_generated_flags(tmp_path: Path) -> None:
    from exporter.cli.export import export

    cfg = tmp_path / "c.yaml"
    cfg.write_text("atol: 0.01\nproviders: [cpu, cuda]\nimg: [320, 256]\nraw-head: true\ndynamic: batch\n"
                   "training_mode: true\n", encoding="utf-8")
    ctx = export.make_context("export", ["yolov5n", "--config", str(cfg), "--img", "256"])
    o = ExportOptions(**values_from(ExportOptions, dict(ctx.params)))
    assert (o.atol, o.providers, o.head, o.dynamic, o.training) == (0.01, ("cpu", "cuda"), "raw", "batch", True)
    assert o.img == (256, 256)  # the command line wins
    cfg.write_text("atol: [0.01, output0=1]\n", encoding="utf-8")
    o = ExportOptions(**values_from(ExportOptions, dict(export.make_context("export", ["--config", str(cfg)]).params)))
    assert (o.atol, o.output_atol) == (0.01, {"output0": 1.0})


def test_a_new_field_is_a_new_flag() -> None:
    """A copy of the model with one more field gets one more flag, its default, bound and group."""
    from click.testing import CliRunner

    from exporter.cli._help import Command

    extended = dataclasses.make_dataclass("Extended", [
        ("strip_docs", bool, option(False, "--strip-docs", help="Drop every doc_string.")),
        ("level", int, option(3, "--level", minimum=1, group="Parity", help="How hard.")),
    ], bases=(ExportOptions,), frozen=True)
    seen: list[Any] = []

    @click.command(cls=Command, sections={"Graph": (), "Parity": ()})
    @options_from(extended)
    def cmd(**flags: Any) -> None:
        seen.append(extended(**values_from(extended, flags)))

    text = CliRunner().invoke(cmd, ["--help"], terminal_width=200).output
    graph, parity = text.split("\nParity:")
    assert re.search(r"--strip-docs +Drop every doc_string\.\n", graph)
    assert re.search(r"--level INTEGER RANGE +How hard\. \[default: 3; x>=1\]", parity)
    assert "--keep-bn / --fuse-bn" in graph and "--providers" in parity
    assert CliRunner().invoke(cmd, ["--strip-docs", "--level", "5", "--raw-head"]).exit_code == 0
    assert (seen[-1].strip_docs, seen[-1].level, seen[-1].head) == (True, 5, "raw")
    assert CliRunner().invoke(cmd, []).exit_code == 0
    assert (seen[-1].strip_docs, seen[-1].level) == (False, 3)
    r = CliRunner().invoke(cmd, ["--level", "0"])
    assert r.exit_code == 2 and "0 is not in the range x>=1" in r.output


def test_check_parity_takes_the_parity_options_defaults() -> None:
    """The library's check_parity keywords are ParityOptions' fields with the same defaults."""
    from exporter.parity import check_parity

    params = inspect.signature(check_parity).parameters
    for f in dataclasses.fields(ParityOptions):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert f.name in params, f.name
        assert (params[f.name].default or type(default)()) == (default or type(default)()), f.name


@pytest.mark.parametrize(("kw", "message"), [({"providers": ["tpu"]}, "unknown provider 'tpu'"),
                                             ({"inputs": 0}, "parity needs at least one input"),
                                             ({"atol": float("nan")}, "a tolerance is a finite number")])
def test_check_parity_validates_as_the_parity_options_do(kw: dict[str, Any], message: str) -> None:
    """check_parity's keywords become ParityOptions, refused by its validation before the file is read."""
    from exporter.parity import check_parity

    with pytest.raises(ConfigError, match=message):
        check_parity(b"not read", None, **kw)
