"""No silent overwrites, and the YOLOv5-style --imgsz / bare --dynamic flags of `yexport export`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli.export import export as export_cmd
from exporter.cli.main import cli


def _params(*args: str) -> dict:
    return export_cmd.make_context("export", list(args)).params


def test_imgsz_is_an_alias_of_img_and_bare_dynamic_means_all() -> None:
    assert _params("--imgsz", "320")["img"] == (320, 320)
    assert _params("--img", "320,256")["img"] == (320, 256)
    assert _params("--dynamic")["dynamic"] == "all"
    assert _params("yolov5n", "--dynamic")["dynamic"] == "all"
    assert _params("--dynamic", "batch")["dynamic"] == "batch"
    assert _params()["dynamic"] is None


def test_info_takes_imgsz() -> None:
    from exporter.cli.info import info

    assert info.make_context("info", ["--imgsz", "320"]).params["img"] == (320, 320)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ow")
    res = CliRunner().invoke(cli, ["export", "yolov5n", "-o", str(d), "--img", "64", "--no-check"])
    assert res.exit_code == 0, res.output
    return d


def test_other_graph_options_refuse_without_force(out: Path) -> None:
    before = (out / "yolov5n.onnx").read_bytes()
    res = CliRunner().invoke(cli, ["export", "yolov5n", "-o", str(out), "--img", "64", "--no-check", "--keep-bn"])
    assert res.exit_code == 2, res.output
    assert "keep_bn: false -> true" in res.output and "--name" in res.output and "--force" in res.output
    assert (out / "yolov5n.onnx").read_bytes() == before
    # --half shapes the graph too, although a float32 file's identity does not name it
    res = CliRunner().invoke(cli, ["export", "yolov5n", "-o", str(out), "--img", "64", "--no-check", "--half"])
    assert res.exit_code == 2 and "half: false -> true" in res.output, res.output
    assert (out / "yolov5n.onnx").read_bytes() == before


@pytest.mark.slow
def test_run_options_and_force_replace(out: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["export", "yolov5n", "-o", str(out), "--img", "64", "--no-check", "--atol", "0.01"])
    assert res.exit_code == 0, res.output  # only the run record differs
    res = runner.invoke(cli, ["export", "yolov5n", "-o", str(out), "--img", "64", "--no-check", "--keep-bn",
                              "--force"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", "yolov5n", "-o", str(out), "--img", "64", "--no-check", "--keep-bn",
                              "--name", "other"])
    assert res.exit_code == 0 and (out / "other.onnx").exists()


def test_a_foreign_file_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "yolov5n.onnx").write_bytes(b"not an onnx file")
    res = CliRunner().invoke(cli, ["export", "yolov5n", "-o", str(tmp_path), "--img", "64", "--no-check"])
    assert res.exit_code == 2 and "--force" in res.output


def test_graph_without_output_writes_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]))
    src = tmp_path / "src" / "tiny.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if shutil.which("dot"):
        res = CliRunner().invoke(cli, ["graph", str(src)])
        assert res.exit_code == 0, res.output
        assert (work / "tiny.svg").exists() and not (work / "graphviz_out").exists()
    from exporter.cli import graph as graph_cli

    help_text = next(p.help for p in graph_cli.graph.params if p.name == "out") or ""
    assert "graphviz_out" not in help_text and "current directory" in help_text
