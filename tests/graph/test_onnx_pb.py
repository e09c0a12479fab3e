"""onnx's message classes without ``import onnx`` (:mod:`exporter.graph.onnx_pb`): the same classes as
onnx's own once onnx is imported, so parsed models work with shape inference and the checker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_the_classes_are_onnx_own_once_onnx_is_imported(chain_path: Path) -> None:
    proc = _python(f"""
import sys
from exporter.graph.load import load_onnx
from exporter.graph.onnx_pb import messages
model = load_onnx({str(chain_path)!r})
assert "onnx" not in sys.modules and "ml_dtypes" not in sys.modules, "onnx was imported"
assert messages().__name__ != "onnx"
import onnx
assert onnx.ModelProto is messages().ModelProto and isinstance(model, onnx.ModelProto)
inferred = onnx.shape_inference.infer_shapes(model)
onnx.checker.check_model(inferred)
print(len(inferred.graph.value_info))
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 0  # inference ran on the model parsed without onnx


def test_onnx_itself_when_it_is_imported_already() -> None:
    import onnx

    from exporter.graph import onnx_pb

    onnx_pb.messages.cache_clear()
    try:
        assert onnx_pb.messages() is onnx
    finally:
        onnx_pb.messages.cache_clear()


def test_onnx_itself_when_its_generated_module_cannot_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.graph import onnx_pb

    monkeypatch.setattr(onnx_pb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="not installed as a package"):
        onnx_pb._generated_module()
    proc = _python("""
import importlib.util, sys
importlib.util.find_spec = lambda name: None
from exporter.graph.onnx_pb import messages
m = messages()
print(m.__name__, "onnx" in sys.modules, m.ModelProto.__name__)
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["onnx", "True", "ModelProto"]


def test_the_parity_check_opens_its_file_without_onnx(chain_path: Path) -> None:
    """``yexport check`` reads the file it judges (and its precision) with the message classes alone."""
    proc = _python(f"""
import sys
from exporter.parity import _open
from exporter.parity.reference import file_precision
opened = _open({str(chain_path)!r})
again = _open(opened.data)
print(file_precision(opened.proto), len(again.proto.graph.node), "onnx" in sys.modules)
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["float32", "9", "False"]


def test_the_parity_check_hands_onnxruntime_the_bytes_it_checked(tmp_path: Path, chain_path: Path) -> None:
    """A file that holds its whole model goes to onnxruntime as the very bytes read and checked; one with
    external data (an initializer, or a Constant's tensor) as its path, for onnxruntime to resolve."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from exporter.errors import InputError
    from exporter.graph.load import load_with_bytes
    from exporter.parity import _open
    from exporter.parity.runtime import open_session, run

    proto, data = load_with_bytes(chain_path)
    assert data == chain_path.read_bytes() and len(proto.graph.node) == 9
    assert _open(chain_path).data == data

    value = helper.make_tensor("v", TensorProto.FLOAT, [256], np.arange(256, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=value),
                               helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.external_data_helper.convert_model_to_external_data(model, location="c.bin", size_threshold=0,
                                                             convert_attribute=True)
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "const.onnx"
    onnx.save(model, str(path))
    assert not onnx.load(str(path), load_external_data=False).graph.initializer  # the attribute is external
    proto, data = load_with_bytes(path)
    opened = _open(path)
    assert data is None and opened.data == str(path)
    session, ran = open_session(opened.data, "cpu")  # from bytes, onnxruntime could not find c.bin
    assert ran.ran and np.array_equal(run(session, opened.proto, np.zeros(256, np.float32), "cpu")[0],
                                      np.arange(256, dtype=np.float32))

    outside = tmp_path / "outside.bin"  # a hostile reference still fails before anything runs
    outside.write_bytes((tmp_path / "model" / "c.bin").read_bytes())
    (tmp_path / "model" / "c.bin").unlink()
    (tmp_path / "model" / "c.bin").symlink_to(outside)
    with pytest.raises(InputError, match="leads out of the model's folder"):
        load_with_bytes(path)
