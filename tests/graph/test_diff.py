from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from exporter.cli.main import cli
from exporter.errors import ConfigError, InputError
from exporter.graph.diff import _myers, diff
from exporter.graph.snapshot import snapshot


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["diff", *map(str, args)])
    return res.exit_code, res.output


def test_identical_files_exit_0(chain_path: Path, torch_pair: dict[str, Path]) -> None:
    code, out = run(chain_path, chain_path)
    assert code == 0, out
    assert "identical" in out
    r = diff(torch_pair["fused"], torch_pair["fused_again"])
    assert r and r.identical and not r.structural


def test_bn_kept_vs_folded_is_only_added_batchnorm(torch_pair: dict[str, Path]) -> None:
    r = diff(torch_pair["fused"], torch_pair["keep_bn"])
    assert not r
    assert r.op_delta == {"BatchNormalization": 3}
    assert [e["op"] for e in r.added] == ["BatchNormalization"] * 3
    assert r.removed == [] and r.changed == [] and r.inputs == [] and r.outputs == [] and r.model == []
    assert r.structure_summary() == "+3 BatchNormalization"
    kinds = {c["kind"] for c in r.initializers}
    assert kinds == {"removed", "values"}  # the folded conv bias goes, conv weights change value
    assert sum(c["kind"] == "removed" for c in r.initializers) == 3
    assert all("Conv input 2 (B)" in c["where"] for c in r.initializers if c["kind"] == "removed")
    assert r.initializers_with_added_nodes > 0
    code, out = run(torch_pair["fused"], torch_pair["keep_bn"])
    assert code == 1
    assert "structure: +3 BatchNormalization" in out
    # the other way round
    back = diff(torch_pair["keep_bn"], torch_pair["fused"])
    assert back.op_delta == {"BatchNormalization": -3}
    assert len(back.removed) == 3 and back.added == [] and back.changed == []


def test_renames_are_no_difference(save, builders, chain_path: Path) -> None:
    renamed = save(builders.rename(builders.chain()), "renamed.onnx")
    assert run(chain_path, renamed)[0] == 1  # metadata differs (chain_path has some)
    assert diff(builders.chain(), renamed).identical
    io_renamed = save(builders.rename(builders.chain(), io=True), "io.onnx")
    r = diff(builders.chain(), io_renamed)
    assert not r.structural or (r.inputs and not r.added and not r.changed)
    assert [c["what"] for c in r.inputs + r.outputs] == ["name", "name"]
    assert diff(builders.chain(), io_renamed, ignore=["names"]).identical
    code, out = run(builders_path := save(builders.chain(), "c.onnx"), io_renamed, "--ignore", "names,metadata")
    assert code == 0, out
    assert builders_path.exists()


def test_torch_export_with_renamed_values_is_identical(save, builders, torch_pair: dict[str, Path]) -> None:
    renamed = save(builders.rename(onnx.load(str(torch_pair["keep_bn"]))), "keep_bn_renamed.onnx")
    assert diff(torch_pair["keep_bn"], renamed).identical


def test_snapshots_and_onnx_files_mix(tmp_path: Path, torch_pair: dict[str, Path]) -> None:
    snap = tmp_path / "fused.graph.txt"
    snap.write_text(snapshot(torch_pair["fused"]))
    code, out = run(snap, torch_pair["fused"])
    assert code == 0, out
    assert "content hash" in out
    r = diff(snap, torch_pair["keep_bn"])
    assert r.op_delta == {"BatchNormalization": 3} and not r.removed and not r.changed
    snap_bn = tmp_path / "keep_bn.graph.txt"
    snap_bn.write_text(snapshot(torch_pair["keep_bn"]))
    r2 = diff(snap, snap_bn)
    assert r2.op_delta == r.op_delta and len(r2.added) == 3
    assert {c["kind"] for c in r2.initializers} == {"removed", "values"}


def test_attribute_change_is_a_changed_node(builders) -> None:
    b = builders.chain()
    gemm = next(n for n in b.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(helper.make_attribute("alpha", 0.5))
    r = diff(builders.chain(), b)
    assert not r.added and not r.removed
    assert len(r.changed) == 1
    assert r.changed[0]["op"] == "Gemm" and r.changed[0]["changes"] == ["alpha: (none) -> 0.5"]


def test_shape_change_is_reported_on_inputs_and_nodes(builders) -> None:
    r = diff(builders.chain(size=16), builders.chain(size=32))
    assert r.inputs == [{"index": 0, "what": "type", "a": "f32[1,3,16,16]", "b": "f32[1,3,32,32]"}]
    assert not r.added and not r.removed and r.op_delta == {}
    changed_ops = [c["op"] for c in r.changed]
    assert changed_ops[:2] == ["Conv", "Relu"]
    assert any("output 0: f32[1,8,16,16] -> f32[1,8,32,32]" in ch for ch in r.changed[0]["changes"])


def test_inserted_node_in_a_chain(builders) -> None:
    b = builders.chain()
    g = b.graph
    k = next(i for i, n in enumerate(g.node) if n.op_type == "Gap" or n.name == "Gap")
    g.node[k].input[0] = "sum_scaled"
    g.node.insert(k, helper.make_node("Relu", ["sum"], ["sum_scaled"], name="Extra"))
    r = diff(builders.chain(), b)
    assert r.op_delta == {"Relu": 1}
    assert [(e["op"], e["name"]) for e in r.added] == [("Relu", "Extra")]
    assert not r.removed and not r.changed and not r.initializers


def _rewire_model(sigmoid_reads: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", [sigmoid_reads], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_rewired_edge_is_caught() -> None:
    r = diff(_rewire_model("a"), _rewire_model("x"))
    assert not r.added and not r.removed and r.op_delta == {}
    assert len(r.changed) == 1
    assert r.changed[0]["op"] == "Sigmoid"
    assert r.changed[0]["changes"] == ["input 0 (X): reads A%0 Relu -> B%in0"]


def test_initializer_values_atol_and_ignore(save, builders) -> None:
    a = save(builders.chain(), "a.onnx")
    m = builders.chain()
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0, 0, 0] += 1e-3
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    b = save(m, "b.onnx")
    r = diff(a, b)
    assert not r.structural
    assert len(r.initializers) == 1 and r.initializers[0]["kind"] == "values"
    assert r.initializers[0]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "Conv input 1 (W)" in r.initializers[0]["where"]
    assert diff(a, b, atol=1e-2).identical
    assert diff(a, b, ignore=["initializer-values"]).identical
    assert run(a, b, "--atol", "0.01")[0] == 0
    assert run(a, b, "--ignore", "initializer-values")[0] == 0
    code, out = run(a, b)
    assert code == 1 and "values differ (max |delta| 0.001" in out


def test_a_changed_bias_beside_an_equal_weight_and_a_shared_weight_changed_once(builders) -> None:
    a = builders.chain(channels=(8, 8, 8))
    b = builders.chain(channels=(8, 8, 8), names="renamed_")
    bias = next(t for t in b.graph.initializer if t.name == "renamed_b1")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1, bias.name))
    for m in (a, b):  # the third Conv reads the second Conv's weight: one initializer, two nodes
        third = [n for n in m.graph.node if n.op_type == "Conv"][2]
        third.input[1] = [n for n in m.graph.node if n.op_type == "Conv"][1].input[1]
    shared = next(t for t in b.graph.initializer if t.name == "renamed_w1")
    shared.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(shared) * 2, shared.name))
    r = diff(a, b)
    assert not r.structural
    # the shared weight once (at its first reader), the bias once; the equal weight beside it not at all
    assert sorted(c["where"].split(" Conv ")[1] for c in r.initializers) == ["input 1 (W)", "input 2 (B)"]
    assert all(c["kind"] == "values" for c in r.initializers)


def _with_initializers(unread: list[tuple[int, ...]], output_init: bool, read_w: bool = True) -> onnx.ModelProto:
    """Relu(x) * w: ``w`` is read by a node (else Relu(x) * Relu(x)); the ``unread`` initializers (shapes)
    by nothing; with ``output_init`` one more is a graph output, read by no node (it is used all the same)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    outs = [y]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "w")]
    inits += [numpy_helper.from_array(np.zeros(s, np.float32), f"unread{k}") for k, s in enumerate(unread)]
    if output_init:
        inits.append(numpy_helper.from_array(np.full(2, 3.0, np.float32), "const_out"))
        outs.append(helper.make_tensor_value_info("const_out", TensorProto.FLOAT, [2]))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["a", "w" if read_w else "a"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)])


def test_unused_initializers_are_counted_by_type() -> None:
    a = _with_initializers([(3,)], output_init=True)
    b = _with_initializers([(3,), (3,), (5, 2)], output_init=True)
    r = diff(a, b)
    unused = sorted((c["kind"], c["b"]) for c in r.initializers if c["where"] == "unused initializer")
    assert unused == [("added", "f32[3]"), ("added", "f32[5,2]")]  # the read one and the output are used
    r = diff(b, a)
    assert sorted((c["kind"], c["a"]) for c in r.initializers) == [("removed", "f32[3]"), ("removed", "f32[5,2]")]
    assert diff(a, a).identical
    r = diff(a, _with_initializers([(3,)], output_init=True, read_w=False))  # w is no longer read
    assert [(c["kind"], c["b"]) for c in r.initializers if c["where"] == "unused initializer"] == [("added", "f32[4]")]
    # a graph output that is an initializer counts as used: taking it away is an output change only
    r = diff(_with_initializers([], output_init=True), _with_initializers([], output_init=False))
    assert not r.initializers and r.outputs


def test_initializer_shape_change(builders) -> None:
    a, b = builders.chain(channels=(8, 16)), builders.chain(channels=(8, 24))
    r = diff(a, b)
    assert not r.added and not r.removed
    assert "type" in {c["kind"] for c in r.initializers}
    assert any(c["a"] == "f32[16,8,3,3]" and c["b"] == "f32[24,8,3,3]" for c in r.initializers)


def test_opset_and_metadata(builders) -> None:
    a = builders.chain(opset=17, metadata={"stride": "32", "names": "a"})
    b = builders.chain(opset=18, metadata={"stride": "16"})
    r = diff(a, b)
    assert r.model == [{"field": "opset ai.onnx", "a": 17, "b": 18}]
    assert {c["field"] for c in r.metadata} == {"names", "stride"}
    r2 = diff(a, b, ignore="metadata")
    assert r2.metadata == [] and r2.model and not r2.identical


def test_output_formats(torch_pair: dict[str, Path]) -> None:
    code, out = run(torch_pair["fused"], torch_pair["keep_bn"], "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert data["identical"] is False and data["op_delta"] == {"BatchNormalization": 3}
    assert len(data["nodes"]["added"]) == 3
    code, md = run(torch_pair["fused"], torch_pair["keep_bn"], "--format", "markdown")
    assert code == 1
    assert md.startswith("### ONNX graph diff: **different**")
    assert "| BatchNormalization | 0 | 3 | +3 |" in md
    assert "<details><summary>3 nodes added</summary>" in md
    code, md = run(torch_pair["fused"], torch_pair["fused"], "--format", "markdown")
    assert code == 0 and "**identical**" in md


def test_errors_exit_2(tmp_path: Path, chain_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(chain_path.read_bytes()[:-40])
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    bad_snap = tmp_path / "bad.graph.txt"
    bad_snap.write_text("# yexport graph snapshot v1\nnodes:\n  this is not a node\n")
    for other in (tmp_path / "missing.onnx", corrupt, text, bad_snap):
        code, out = run(chain_path, other)
        assert code == 2, (other, out)
        assert out.count("\n") == 1 and out.startswith("yexport: error: "), out
    assert "bad.graph.txt:3" in run(chain_path, bad_snap)[1]
    code, out = run(chain_path, chain_path, "--ignore", "weights")
    assert code == 2
    with pytest.raises(ConfigError):
        diff(chain_path, chain_path, ignore=["weights"])
    with pytest.raises(InputError):
        diff(chain_path, tmp_path / "missing.onnx")


def test_myers_alignment_is_a_longest_common_subsequence() -> None:
    rnd = random.Random(0)

    def lcs(a: list[int], b: list[int]) -> int:
        dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a) - 1, -1, -1):
            for j in range(len(b) - 1, -1, -1):
                dp[i][j] = dp[i + 1][j + 1] + 1 if a[i] == b[j] else max(dp[i + 1][j], dp[i][j + 1])
        return dp[0][0]

    for _ in range(200):
        a = [rnd.randrange(4) for _ in range(rnd.randrange(0, 30))]
        b = [rnd.randrange(4) for _ in range(rnd.randrange(0, 30))]
        pairs = _myers(a, b, 10_000)
        assert pairs is not None
        assert all(a[i] == b[j] for i, j in pairs)
        assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(pairs, pairs[1:], strict=False))
        assert len(pairs) == lcs(a, b)
    assert _myers([1] * 50, [2] * 50, 10) is None


@pytest.mark.slow
def test_yolov5s_keep_bn_adds_exactly_57_batchnorms(graph_dir: Path, builders) -> None:
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("exporter.models")
    model = models.build_model("yolov5s", seed=0).eval()
    paths = {}
    for name, mode in (("fused", torch.onnx.TrainingMode.EVAL), ("keep_bn", torch.onnx.TrainingMode.PRESERVE)):
        p = graph_dir / f"yolov5s_{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(p), dynamo=False, training=mode,
                              opset_version=17, input_names=["images"], output_names=["output0"])
        onnx.save(builders.strip_identity(onnx.load(str(p))), str(p))
        paths[name] = p
    r = diff(paths["fused"], paths["keep_bn"])
    assert r.structure_summary() == "+57 BatchNormalization"
    assert len(r.added) == 57 and {e["op"] for e in r.added} == {"BatchNormalization"}
    assert r.removed == [] and r.changed == [] and r.inputs == [] and r.outputs == [] and r.model == []
    assert {c["kind"] for c in r.initializers} <= {"removed", "values"}
    assert all(c["where"].split()[1] == "Conv" for c in r.initializers)
    assert np.isfinite([c.get("max_abs_diff", 0.0) for c in r.initializers]).all()


def test_alignment_of_far_apart_sequences_uses_anchors() -> None:
    from exporter.graph.diff import _align

    rnd = random.Random(1)
    a = list(range(5000))  # unique signatures
    b = [x for x in a if rnd.random() > 0.3] + [9999] * 10  # 1500 removals: too many for Myers' budget
    notes: list[str] = []
    pairs = _align(a, b, notes)
    assert len(pairs) == len(b) - 10
    assert all(a[i] == b[j] for i, j in pairs)
    assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(pairs, pairs[1:], strict=False))


def test_json_metadata_changes_are_reported_per_field(tmp_path) -> None:
    import json

    from onnx import TensorProto, helper

    from exporter.graph.diff import diff

    def model(options: dict):
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        m.metadata_props.add(key="tool.options", value=json.dumps(options))
        m.metadata_props.add(key="tool.note", value="plain text")
        return m

    a = model({"keep_bn": False, "opset": 18, "img": [640, 640]})
    b = model({"keep_bn": True, "opset": 18, "img": [640, 640], "simplify": True})
    result = diff(a, b)
    assert not result and not result.structural
    assert result.metadata == [
        {"field": "tool.options.keep_bn", "a": "false", "b": "true"},
        {"field": "tool.options.simplify", "a": None, "b": "true"},
    ]
