from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from exporter.cli.main import cli
from exporter.errors import InputError
from exporter.graph._canon import parse_snapshot, render_snapshot
from exporter.graph.snapshot import snapshot, write_snapshot


def test_snapshot_text_is_canonical_and_readable(builders) -> None:
    text = snapshot(builders.chain(metadata={"stride": "32"}))
    lines = text.splitlines()
    assert lines[0] == "# yexport graph snapshot v1"
    assert "opsets: ai.onnx=17" in lines
    assert '  %in0 "images": f32[1,3,16,16]' in lines
    assert '  %out0 "logits": f32[1,4] = %8' in lines
    assert '  "stride": "32"' in lines
    first_conv = next(ln for ln in lines if "= Conv(" in ln)
    assert first_conv == ("  %0: f32[1,8,16,16] = Conv(%in0: f32[1,3,16,16], %w0: f32[8,3,3,3], %w1: f32[8])"
                          "  kernel_shape=[3,3]  pads=[1,1,1,1]  strides=[1,1]")
    assert "  %w0: f32[8,3,3,3] #" in text
    # no node or value name of the file appears
    for name in ("Conv_0", "relu0", "fc_w", "proj", "Gemm"):
        assert f'"{name}"' not in text and f"{name}:" not in text


def test_snapshot_never_prints_values(builders) -> None:
    m = builders.chain()
    text = snapshot(m)
    w = numpy_helper.to_array(m.graph.initializer[0]).reshape(-1)
    assert f"{w[0]:.4f}"[:6] not in text


def test_renames_and_reexports_give_identical_text(builders) -> None:
    base = snapshot(builders.chain())
    assert snapshot(builders.chain()) == base
    assert snapshot(builders.rename(builders.chain())) == base
    assert snapshot(builders.chain(names="other_")) == base
    # interface names are part of the text unless asked otherwise
    renamed_io = builders.rename(builders.chain(), io=True)
    assert snapshot(renamed_io) != base
    assert snapshot(renamed_io, io_names=False) == snapshot(builders.chain(), io_names=False)


def test_torch_reexport_is_byte_identical(torch_pair: dict[str, Path]) -> None:
    a, b = snapshot(torch_pair["fused"]), snapshot(torch_pair["fused_again"])
    assert a == b
    assert "BatchNormalization" not in a
    assert snapshot(torch_pair["keep_bn"]).count("= BatchNormalization(") == 3


def test_node_list_order_does_not_matter(builders) -> None:
    """Constant nodes and independent branches may sit anywhere in the file's node list."""

    def model(order: list[int]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
        z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 6])
        nodes = [
            helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([3, 4], np.int64))),
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Reshape", ["r", "shape"], ["y"]),
            helper.make_node("Sigmoid", ["x"], ["z"]),
        ]
        g = helper.make_graph([nodes[i] for i in order], "g", [x], [y, z])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    base = snapshot(model([0, 1, 2, 3]))
    assert snapshot(model([1, 3, 0, 2])) == base
    assert snapshot(model([3, 1, 0, 2])) == base
    assert "value=tensor<i64[2]>[3,4]" in base


def test_snapshot_parses_back(builders, torch_pair: dict[str, Path]) -> None:
    for src in (builders.chain(metadata={"a b": "c = d"}), torch_pair["keep_bn"]):
        text = snapshot(src)
        assert render_snapshot(parse_snapshot(text)) == text


def test_external_data_hashed_in_chunks_like_inline_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 64, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")]),
                          opset_imports=[helper.make_opsetid("", 17)])
    inline = tmp_path / "inline.onnx"
    onnx.save(m, str(inline))
    ext = tmp_path / "ext.onnx"
    onnx.save(m, str(ext), save_as_external_data=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").stat().st_size == w.nbytes
    assert snapshot(ext) == snapshot(inline)
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(InputError, match="ext.bin"):
        snapshot(ext)


def test_large_external_weights_stay_out_of_memory(tmp_path: Path) -> None:
    data = tmp_path / "big.bin"
    with open(data, "wb") as fh:
        fh.truncate(32 << 20)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8 << 20])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="big.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8 << 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "big.onnx"
    onnx.save(m, str(p))
    tracemalloc.start()
    text = snapshot(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "%w0: f32[8388608] #" in text
    assert peak < 8 << 20, peak


def test_subgraphs_are_rendered_and_hashed() -> None:
    def model(then_op: str) -> onnx.ModelProto:
        c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
        out_t = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])
        out_e = helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])
        then_g = helper.make_graph([helper.make_node(then_op, ["x"], ["t"])], "then", [], [out_t])
        else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [out_e])
        node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
        return helper.make_model(helper.make_graph([node], "g", [c, x], [y]), opset_imports=[helper.make_opsetid("", 17)])

    a = snapshot(model("Relu"))
    assert a == snapshot(model("Relu"))
    assert "then_branch=graph#" in a
    assert "    |   outer %^0 = %in1" in a
    assert "= Relu(%^0: f32[2])" in a
    assert a != snapshot(model("Abs"))


def test_cli_writes_atomically(tmp_path: Path, chain_path: Path) -> None:
    out = tmp_path / "chain.graph.txt"
    res = CliRunner().invoke(cli, ["snapshot", str(chain_path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == snapshot(chain_path)
    assert [p.name for p in tmp_path.iterdir()] == ["chain.graph.txt"]  # no temp file left
    res = CliRunner().invoke(cli, ["snapshot", str(chain_path)])
    assert res.output == out.read_text()
    res = CliRunner().invoke(cli, ["snapshot", str(chain_path), "-o", str(tmp_path / "no" / "x.txt")])
    assert res.exit_code == 2 and res.output.startswith("yexport: error: ")


def test_write_snapshot_replaces_existing(tmp_path: Path) -> None:
    p = tmp_path / "g.txt"
    p.write_text("old")
    write_snapshot("new\n", p)
    assert p.read_text() == "new\n"


def test_cli_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage\xff\xff")
    for p in (bad, tmp_path / "missing.onnx"):
        res = CliRunner().invoke(cli, ["snapshot", str(p)])
        assert res.exit_code == 2
        assert res.output.count("\n") == 1 and res.output.startswith("yexport: error: ")


def test_the_loader_scan_gives_the_same_canonical_graph(builders, torch_pair: dict[str, Path], tmp_path: Path) -> None:
    """What the loader's quick check read (initializers, serialized attributes) stands in for the
    canonicalizer's own reading: the same snapshot and the same diff, with or without it."""
    from exporter.graph._canon import canonicalize
    from exporter.graph.load import load_scanned

    chain = tmp_path / "chain.onnx"
    onnx.save(builders.chain(), str(chain))
    for path in (chain, torch_pair["fused"], torch_pair["keep_bn"]):
        model, scan = load_scanned(path)
        assert scan is not None and len(scan.attr_keys) == len(model.graph.node)
        assert scan.init_names == [t.name for t in model.graph.initializer]
        for text in (False, True):
            with_scan = canonicalize(model, base_dir=str(path.parent), path=str(path), text=text, scan=scan)
            without = canonicalize(model, base_dir=str(path.parent), path=str(path), text=text)
            assert render_snapshot(with_scan) == render_snapshot(without)
            if not text:
                assert [vars_of(n) for n in with_scan.nodes] == [vars_of(n) for n in without.nodes]


def vars_of(node: object) -> tuple:
    return tuple(getattr(node, k) for k in node.__slots__)  # type: ignore[attr-defined]


def test_no_scan_for_a_file_that_needs_the_full_checks(tmp_path: Path) -> None:
    from exporter.graph.load import load_scanned

    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    model, scan = load_scanned(tmp_path / "m.onnx")
    assert scan is None and len(model.graph.initializer) == 1
