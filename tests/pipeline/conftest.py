"""Fixtures for the export pipeline tests.

Exports are the expensive part, so each acceptance-criterion export runs once per session and several
tests assert on its result. Built-in models are loaded once (``load_model`` calibrates BatchNorm
statistics, which takes seconds) and shared with the CLI through :func:`shared_builtin_models`; the
pipeline never modifies the caller's model, and ``test_training_mode_leaves_caller_model_untouched``
proves it on a model of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from click.testing import CliRunner, Result

from exporter.cli.main import cli
from exporter.models import load_model
from tests.conftest import builtin, shared_builtin_models  # noqa: F401 (builtin: re-exported for the tests)


def yexport(*args: str | Path) -> Result:
    """``yexport ARGS`` in-process (stdout and stderr apart), with shared built-in models."""
    with shared_builtin_models():
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def exit_and_output(*args: str | Path) -> tuple[int, str]:
    """``yexport ARGS`` in-process: the exit code and what it printed (stdout and stderr together)."""
    result = yexport(*args)
    return result.exit_code, result.output


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    return yexport


def one_line_error(result: Result, needle: str, code: int = 2) -> str:
    """Asserts the exit code, one ``yexport: error:`` line on stderr containing ``needle``, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yexport: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def usage_error(result: Result, needle: str) -> str:
    """A click usage error: exit 2, one ``yexport: error:`` line naming the problem and pointing to the
    command's --help, nothing on stdout, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yexport: error: ") and needle in lines[0], result.stderr
    assert "--help" in lines[0] and "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ graphs


def ops(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def bn_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "BatchNormalization"]


def bn_modes(model: onnx.ModelProto) -> set[int]:
    """The training_mode of every BatchNormalization (0 when the attribute is absent, as in ONNX)."""
    return {int(attr(n, "training_mode", 0)) for n in bn_nodes(model)}


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def opset(model: onnx.ModelProto) -> int | None:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)


def input_dims(model: onnx.ModelProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value
            for d in model.graph.input[0].type.tensor_type.shape.dim]


@dataclass
class Exported:
    """One written file with its manifest and the CLI result that made it."""

    result: Result | None
    path: Path
    model: onnx.ModelProto
    manifest: dict[str, Any]

    @classmethod
    def read(cls, path: Path, result: Result | None = None) -> Exported:
        manifest = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        return cls(result, path, onnx.load(str(path)), manifest)

    @property
    def ops(self) -> dict[str, int]:
        return ops(self.model)

    @property
    def parity(self) -> dict[str, Any]:
        return self.manifest["parity"]


def export_cli(out: Path, *args: str | Path, name: str = "model", code: int = 0) -> Exported:
    """``yexport export ARGS -o OUT --name NAME``; asserts the exit code and reads the written file."""
    r = yexport("export", *args, "-o", out, "--name", name)
    assert r.exit_code == code, r.output
    path = out / f"{name}.onnx"
    if code != 0 and not path.exists():
        path = out / f"{name}.parity-failed.onnx"
    return Exported.read(path, r)


# ------------------------------------------------------------------- exports shared by the tests


@pytest.fixture(scope="session")
def s640(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """yolov5s (v6+) at 640 with the defaults, printed as JSON."""
    out = tmp_path_factory.mktemp("s640")
    r = yexport("export", "yolov5s", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    return Exported.read(out / "yolov5s.onnx", r)


@pytest.fixture(scope="session")
def s640_keep_bn(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """yolov5s (v6+) at 640 with --keep-bn --simplify."""
    return export_cli(tmp_path_factory.mktemp("s640kb"), "yolov5s", "--keep-bn", "--simplify", name="yolov5s-keep-bn")


@pytest.fixture(scope="session")
def n320(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """yolov5n at 320 with the defaults: the small file the check and parity tests work on."""
    return export_cli(tmp_path_factory.mktemp("n320"), "yolov5n", "--img", "320", name="yolov5n")


@dataclass
class TrainingExport:
    exported: Exported
    model: torch.nn.Module  # the caller's model
    before: dict[str, torch.Tensor]  # its state_dict before the export (cloned)


@pytest.fixture(scope="session")
def n320_training(tmp_path_factory: pytest.TempPathFactory) -> TrainingExport:
    """yolov5n at 320 with --training-mode, made by the library from a model of its own."""
    from exporter.api import export

    loaded = load_model("yolov5n")
    before = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    out = tmp_path_factory.mktemp("train")
    (res,) = export(loaded, out_dir=out, name="yolov5n-train", training=True, img=(320, 320))
    assert res.ok, res.failures
    return TrainingExport(Exported.read(res.path), loaded.model, before)


def check_written(e: Exported) -> None:
    """What every written file promises: onnx.checker passes, the manifest names the file by its sha256."""
    import hashlib

    onnx.checker.check_model(str(e.path), full_check=True)
    data = e.path.read_bytes()
    assert e.manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert e.manifest["bytes"] == len(data)
    assert e.manifest["file"] == e.path.name
    assert opset(e.model) == e.manifest["opset"] == e.manifest["options"]["opset"]
    assert {"model", "options", "stages", "versions", "parity"} <= set(e.manifest)
    assert e.manifest["model"]["sha256"] and e.manifest["versions"]["torch"]
    meta = metadata(e.model)
    assert {"yexport.stride", "yexport.names", "yexport.stages", "yexport.version"} <= set(meta)
    assert meta["yexport.stages"].split(",") == [s["name"] for s in e.manifest["stages"] if s["name"] != "write"]
    assert not list(e.path.parent.glob(".*.tmp")), "temporary files left behind"
