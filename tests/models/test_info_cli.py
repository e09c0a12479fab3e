"""``yexport --help`` and ``yexport info``: JSON keys, the model list, the per-layer table, and
one-line errors (exit 2, no traceback) for bad model sources."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from exporter.cli.main import COMMANDS, cli
from exporter.models import builtin_names
from exporter.models.zoo import builtin_path, read_config


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(r: Result, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yexport: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_help_lists_the_commands() -> None:
    r = run("--help")
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.stdout
    r = run("info", "--help")
    assert r.exit_code == 0 and "--trust-checkpoint" in r.stdout and "--cfg" in r.stdout


def test_info_json() -> None:
    r = run("info", "yolov5s", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert {"parameters", "parameters_fused", "batchnorm_layers", "gflops", "strides", "layers"} <= set(s)
    assert s["parameters"] == 7_235_389 and s["parameters_fused"] == 7_225_885 and s["batchnorm_layers"] == 57
    assert abs(s["gflops"] - 16.5) <= 0.2 and s["strides"] == [8, 16, 32]
    assert len(s["layers"]) == 25
    assert s["layers"][0] == {"index": 0, "from": -1, "n": 1, "params": 3520, "module": "Conv",
                              "arguments": [3, 32, 6, 2, 2]}
    assert s["layers"][24]["module"] == "Detect" and s["layers"][24]["from"] == [17, 20, 23]
    assert s["model"]["kind"] == "builtin" and s["model"]["weights"] == "synthetic (seed 0)"
    assert s["outputs"]["decoded"] == [1, 25200, 85]


def test_info_quick_by_default_exact_on_request() -> None:
    quick = json.loads(run("info", "yolov5n", "--img", "128", "--json").stdout)
    assert "gflops_exact" not in quick
    r = run("info", "yolov5n", "--img", "128", "--json", "--exact")
    assert r.exit_code == 0, r.output
    exact = json.loads(r.stdout)
    assert exact["gflops_exact"] == pytest.approx(exact["gflops"], rel=0.02)
    assert quick["outputs"] == exact["outputs"]  # worked out from Detect == the forward's shapes
    assert {k: v for k, v in quick.items() if k != "gflops_exact"} == \
        {k: v for k, v in exact.items() if k != "gflops_exact"}
    text = run("info", "yolov5n", "--img", "128").stdout
    assert "exact count: --exact" in text
    assert "exact at 128x128" in run("info", "yolov5n", "--img", "128", "--exact").stdout


def test_info_text_and_verbose_table() -> None:
    r = run("info", "yolov5n", "--img", "64")
    assert r.exit_code == 0, r.output
    assert "1,872,157 parameters" in r.stdout and "strides: [8, 16, 32]" in r.stdout
    v = run("info", "yolov5n", "--img", "64", "--verbose")
    assert v.exit_code == 0, v.output
    lines = v.stdout.splitlines()
    assert lines[0].split() == ["from", "n", "params", "module", "arguments"]
    assert set(lines[1]) <= {"-", " "}
    rows = lines[2:27]
    assert [int(line.split()[0]) for line in rows] == list(range(25))
    assert "SPPF" in rows[9] and "Detect" in rows[24]


def test_info_list() -> None:
    r = run("info", "--list")
    assert r.exit_code == 0
    assert set(r.stdout.splitlines()[1]) <= {"-", " "}
    listed = [line.split()[0] for line in r.stdout.splitlines()[2:]]
    assert listed == builtin_names()
    assert any(line.split()[:2] == ["yolov5s-v5.0", "v5.0"] for line in r.stdout.splitlines())
    assert any(line.split()[:3] == ["yolov5s6", "v6+", "4"] for line in r.stdout.splitlines())


# ------------------------------------------------------------------------------------ bad inputs


def _config(tmp_path: Path, edit: Any) -> Path:
    cfg = deepcopy(read_config(builtin_path("yolov5n")))
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run("info", str(tmp_path / "nope.yaml")), "nope.yaml", "no such file")
    assert_one_line_error(run("info", "yolov5q"), "yolov5q", "yolov5s")  # names the built-ins


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("nc: 80\nanchors: [[10, 13, 16, 30\nbackbone: []\n")
    assert_one_line_error(run("info", str(path)), "YAML syntax error", "line")


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda c: c["backbone"][3].__setitem__(2, "Conv3D"), ["layer 3 (backbone[3])", "unknown module 'Conv3D'"]),
    (lambda c: c["head"][2].__setitem__(0, [-1, 99]), ["layer 12 (head[2])", "bad 'from'"]),
    (lambda c: c["head"][2].__setitem__(0, [-1, 12]), ["layer 12 (head[2])", "bad 'from'"]),
    (lambda c: c["backbone"][1].__setitem__(3, [128, 3, 2, None, 1, True, "extra", 9]),
     ["layer 1 (backbone[1])", "wrong arguments for Conv"]),
    (lambda c: c["backbone"][2].__setitem__(3, []), ["layer 2 (backbone[2])", "C3"]),
    (lambda c: c["backbone"][0].__setitem__(slice(0, 4), [-1, 1, "Conv"]), ["layer 0 (backbone[0])"]),
    (lambda c: c["head"].pop(), ["Detect"]),
    (lambda c: c["backbone"][1].__setitem__(3, [128, 3, 0]), ["layer 1 (backbone[1])", "stride"]),
    (lambda c: c["head"][2].__setitem__(0, [-1, 4]), ["layer 12 (head[2])", "Sizes of tensors must match"]),
    (lambda c: c.__setitem__("width_multiple", "wide"), ["'width_multiple'", "numbers"]),
], ids=["unknown-module", "from-out-of-range", "from-self", "too-many-args", "no-channels", "short-row",
        "no-detect", "zero-stride", "concat-sizes", "width-not-a-number"])
def test_bad_config_names_the_layer(edit: Any, needles: list[str], tmp_path: Path) -> None:
    assert_one_line_error(run("info", str(_config(tmp_path, edit))), *needles)


def test_bad_option_values() -> None:
    r = run("info", "yolov5n", "--img", "16")
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = run("info", "yolov5n", "--nc", "0")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    assert_one_line_error(run("info", str(tmp_path)), "directory")
