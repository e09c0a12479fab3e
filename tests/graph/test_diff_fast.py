"""``diff`` of byte-identical files: one checked parse, the same result as the full comparison."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import exporter.graph.diff as diff_mod
from exporter.errors import InputError
from exporter.graph.diff import diff


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    unused = numpy_helper.from_array(np.zeros(2, np.float32), "unused")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, unused])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_identical_files_short_cut_gives_the_full_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a.onnx"
    onnx.save(_model(), str(a))
    b = tmp_path / "b.onnx"
    shutil.copy(a, b)
    fast = diff(a, b)
    assert fast.identical and fast.matched == 3
    monkeypatch.setattr(diff_mod, "_identical_files", lambda *args: None)
    full = diff(a, b)
    assert fast.to_dict() == full.to_dict()
    assert fast.to_text() == full.to_text()


def test_identical_files_still_checked(tmp_path: Path) -> None:
    m = _model()
    m.graph.initializer[0].raw_data = b"\0" * 8  # declares 108 floats, holds 8 bytes
    a = tmp_path / "a.onnx"
    onnx.save(m, str(a))
    with pytest.raises(InputError, match="declares"):
        diff(a, a)


def test_identical_bytes_in_other_folders_with_external_data_compare_the_data(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        onnx.save(_model(), str(tmp_path / d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="w.bin", size_threshold=0)
    assert (tmp_path / "x" / "m.onnx").read_bytes() == (tmp_path / "y" / "m.onnx").read_bytes()
    assert diff(tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx").identical
    data = bytearray((tmp_path / "y" / "w.bin").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "y" / "w.bin").write_bytes(bytes(data))
    assert not diff(tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx").identical
