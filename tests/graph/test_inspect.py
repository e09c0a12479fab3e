from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from exporter.cli.main import cli
from exporter.errors import InputError
from exporter.graph.inspect import format_report, inspect

ROOT = Path(__file__).resolve().parents[2]

# chain: Conv 3->8 and 8->16 (3x3, 16x16 map), Gemm 16->10, MatMul 10->4
CHAIN_FLOPS = {"Conv": 2 * 8 * 256 * 27 + 2 * 16 * 256 * 72, "Gemm": 2 * 10 * 16, "MatMul": 2 * 4 * 10}
CHAIN_PARAMS = 8 * 27 + 8 + 16 * 72 + 16 + 160 + 10 + 40


def test_inspect_reports_interface_ops_params_flops(chain_path: Path) -> None:
    r = inspect(chain_path)
    assert r["ir_version"] == onnx.load(str(chain_path)).ir_version
    assert r["opset_import"] == {"ai.onnx": 17}
    assert r["producer"]["name"] == "tests"
    assert r["inputs"] == [{"name": "images", "dtype": "float32", "shape": [1, 3, 16, 16]}]
    assert r["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, 4]}]
    assert r["node_count"] == 9
    assert list(r["op_histogram"].items()) == [("Conv", 2), ("Relu", 2), ("Add", 1), ("Flatten", 1),
                                                ("Gemm", 1), ("GlobalAveragePool", 1), ("MatMul", 1)]
    assert r["parameters"] == CHAIN_PARAMS
    assert r["parameter_bytes"] == 4 * CHAIN_PARAMS
    assert r["initializer_count"] == 7
    assert r["watched_ops"] == {op: 0 for op in
                                ("BatchNormalization", "Shape", "Gather", "Identity", "Resize", "Reshape", "Transpose")}
    assert r["flops"]["by_op"] == CHAIN_FLOPS
    assert r["flops"]["total"] == sum(CHAIN_FLOPS.values())
    assert r["flops"]["unknown_nodes"] == 0
    assert r["metadata_props"] == {"stride": "32", "author": "tests"}
    assert r["shape_inference"] == "ok"


def test_a_symbolic_batch_gives_flops_per_batch_item(builders) -> None:
    r = inspect(builders.chain(batch="N"))
    assert r["inputs"][0]["shape"] == ["N", 3, 16, 16]
    assert r["flops"]["by_op"] == CHAIN_FLOPS and r["flops"]["unknown_nodes"] == 0
    assert r["flops"]["per_batch_item"] == ["N"]
    assert "FLOPs:        700.82 k per batch item ('N' taken as 1)" in format_report(r)
    assert inspect(builders.chain())["flops"]["per_batch_item"] == []


def test_other_symbolic_dims_are_kept_and_their_flops_unknown(builders) -> None:
    r = inspect(builders.chain(batch="N", size="S"))
    assert r["inputs"][0]["shape"] == ["N", 3, "S", "S"]
    assert r["flops"]["unknown_nodes"] == 2 and {u["op"] for u in r["flops"]["unknown"]} == {"Conv"}
    # past the global pooling the spatial size is gone: Gemm and MatMul are counted per batch item
    assert r["flops"]["by_op"] == {"Gemm": CHAIN_FLOPS["Gemm"], "MatMul": CHAIN_FLOPS["MatMul"]}
    assert "2 nodes with unknown shapes not counted" in format_report(r)
    r = inspect(builders.chain(batch=1, size="S"))  # no batch symbol: nothing is per item
    assert r["flops"]["unknown_nodes"] == 2 and r["flops"]["per_batch_item"] == []


def test_conv_transpose_flops() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 3, 3], np.ones(72, np.float32))
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    assert inspect(m)["flops"]["by_op"] == {"ConvTranspose": 2 * (4 * 64) * (2 * 9)}


def test_watched_op_counts() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0]),
             helper.make_node("Shape", ["b"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    w = inspect(m)["watched_ops"]
    assert (w["Identity"], w["Transpose"], w["Shape"], w["BatchNormalization"]) == (1, 1, 1, 0)


def _external_model(folder: Path, mib: int) -> Path:
    """A Conv whose weight (``mib`` MiB of zeros) lives in external data, written as a sparse file."""
    cout = mib * (1 << 20) // (4 * 64 * 8)  # [cout, 64, 2, 4] float32 = exactly mib MiB
    data = folder / "weights.bin"
    with open(data, "wb") as fh:
        fh.truncate(mib << 20)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[cout, 64, 2, 4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(mib << 20))):
        w.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 2])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    p = folder / "ext.onnx"
    onnx.save(m, str(p))
    return p


def test_external_weights_are_counted_but_never_read(tmp_path: Path) -> None:
    p = _external_model(tmp_path, mib=64)
    tracemalloc.start()
    r = inspect(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r["external_data"]["initializers"] == 1
    assert r["external_data"]["files"] == ["weights.bin"]
    assert r["parameter_bytes"] == 64 << 20
    assert r["flops"]["by_op"]["Conv"] > 0
    assert peak < 8 << 20, peak  # far below the 64 MiB of weights
    (tmp_path / "weights.bin").unlink()  # still fine: the data is never opened
    assert inspect(p)["parameter_bytes"] == 64 << 20


def test_cli_text_and_json(chain_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(chain_path)])
    assert res.exit_code == 0, res.output
    assert "images  float32  [1, 3, 16, 16]" in res.output
    assert "parameters:   1,602" in res.output
    assert "FLOPs:        700.82 k" in res.output
    assert "watched ops:  BatchNormalization 0" in res.output
    res = runner.invoke(cli, ["inspect", "--json", str(chain_path)])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["flops"]["total"] == sum(CHAIN_FLOPS.values())


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_onnx", "empty", "directory"])
def test_bad_files_give_one_line_error_and_exit_2(tmp_path: Path, chain_path: Path, kind: str) -> None:
    p = tmp_path / f"{kind}.onnx"
    if kind == "truncated":
        p.write_bytes(chain_path.read_bytes()[:500])
    elif kind == "not_onnx":
        p.write_text("nc: 80\ndepth_multiple: 0.33\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    res = CliRunner().invoke(cli, ["inspect", str(p)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yexport: error: "), res.output
    with pytest.raises(InputError):
        inspect(p)


def _imported_by(command: str, path: Path, other: Path | None = None) -> set[str]:
    """The modules a whole ``yexport COMMAND path [other]`` imports (``-X importtime``; diff of path
    with itself when ``other`` is not given)."""
    args = [str(path)] if command != "diff" else [str(path), str(other or path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "exporter.cli.main", command, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", [pytest.param("inspect", marks=pytest.mark.slow),
                                     pytest.param("snapshot", marks=pytest.mark.slow), "diff"])
def test_commands_never_import_torch(chain_path: Path, command: str) -> None:
    imported = _imported_by(command, chain_path)
    # the chain stores no edge types: onnx's shape inference runs (diff F F needs no types)
    assert ("onnx" in imported) == (command != "diff")
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


@pytest.mark.parametrize("command", ["inspect", "snapshot", "diff"])
def test_a_fully_typed_file_is_read_without_importing_onnx(chain_path: Path, tmp_path: Path, builders,
                                                          command: str) -> None:
    """Every edge typed (as ``yexport export`` writes files): onnx's message classes are enough, and
    neither the onnx package nor numpy and ml_dtypes (over a second of CPU to import) are loaded. The
    diff compares the file with a renamed twin, so both graphs are canonicalized and matched."""
    typed, twin = tmp_path / "typed.onnx", tmp_path / "twin.onnx"
    model = onnx.load(str(chain_path))
    onnx.save(onnx.shape_inference.infer_shapes(model), str(typed))
    onnx.save(onnx.shape_inference.infer_shapes(builders.rename(model)), str(twin))
    imported = _imported_by(command, typed, twin)
    assert not imported & {"onnx", "numpy", "ml_dtypes", "torch"}, sorted(imported & {"onnx", "numpy", "ml_dtypes"})
    # nor the export pipeline and its stages: the graph identity comes from exporter.identity alone
    pipeline = {m for m in imported if m == "exporter.pipeline" or m.startswith("exporter.stages")}
    assert not pipeline, sorted(pipeline)
