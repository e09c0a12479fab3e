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


def _stored(tmp_path: Path, name: str, w: np.ndarray, how: str) -> Path:
    """_model() with weight ``w`` stored inline as raw bytes, as typed floats, or as external data."""
    m = _model()
    t = numpy_helper.from_array(w, "w")
    if how == "typed":
        t = helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist())
    m.graph.initializer[0].CopyFrom(t)
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "m.onnx"
    if how == "external":
        onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                  size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("how_a", ["raw", "typed", "external"])
@pytest.mark.parametrize("how_b", ["raw", "typed", "external"])
def test_values_compare_whatever_the_storage(tmp_path: Path, how_a: str, how_b: str) -> None:
    """A's initializers let go of its model before B is read (raw bytes kept, other tensors copied):
    equal values are equal and a changed value is found, across raw, typed and external storage."""
    w = np.ones((4, 3, 3, 3), np.float32)
    w2 = w.copy()
    w2[0, 0, 0, 0] = 1.25
    a = _stored(tmp_path, "a", w, how_a)
    assert diff(a, _stored(tmp_path, "same", w, how_b)).identical
    r = diff(a, _stored(tmp_path, "other", w2, how_b))
    [change] = r.initializers
    assert change["kind"] == "values" and change["max_abs_diff"] == pytest.approx(0.25), change
    assert diff(a, tmp_path / "other" / "m.onnx", atol=0.25).identical


def test_identical_files_without_external_data_skip_the_tensor_walk(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that never mention "location" hold no external tensor: no walk over every tensor; a file
    with external data still has its data file required."""
    import exporter.graph.load as load_mod

    walked: list[int] = []
    real = load_mod.iter_tensors
    monkeypatch.setattr(load_mod, "iter_tensors", lambda m: walked.append(1) or real(m))
    a = tmp_path / "a.onnx"
    onnx.save(_model(), str(a))
    assert diff(a, a).identical and not walked
    ext = _stored(tmp_path, "ext", np.ones((4, 3, 3, 3), np.float32), "external")
    assert diff(ext, ext).identical and walked
    (ext.parent / "w.bin").unlink()
    with pytest.raises(InputError, match="not found"):
        diff(ext, ext)


def test_a_perfect_exact_matching_is_kept_without_the_structural_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A renamed graph with one node added: every node of the smaller graph pairs with an equal
    signature, so the structural alignment is not run, and the result is the same as with it."""
    import exporter.graph.match as match_mod
    from exporter.graph.diff_compare import Side

    def chain(prefix: str, extra: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Relu", ["x"], [f"{prefix}a"]), helper.make_node("Sigmoid", [f"{prefix}a"], [f"{prefix}b"])]
        if extra:
            nodes.append(helper.make_node("Neg", [f"{prefix}b"], [f"{prefix}n"]))
        nodes.append(helper.make_node("Relu", [f"{prefix}n" if extra else f"{prefix}b"], ["y"]))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    from exporter.graph._canon import canonicalize

    ga, gb = canonicalize(chain("", False)), canonicalize(chain("r_", True))
    runs: list[int] = []
    real_align = diff_mod._align

    def counting(a: list[int], b: list[int], notes: list[str]) -> list[tuple[int, int]]:
        runs.append(1)
        return real_align(a, b, notes)

    m = match_mod.match(Side(ga, "A"), Side(gb, "B"), False, [], counting)
    assert len(runs) == 1 and len(m.pairs) == 3 and all(m.same)
    r = diff(chain("", False), chain("r_", True))
    assert [e["op"] for e in r.added] == ["Neg"] and not r.removed and not r.changed
