"""The diff's summary of systematic changes, and node matching that survives width changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from exporter.cli.main import cli
from exporter.graph.diff import diff
from exporter.graph.diff_summary import parameter_count
from exporter.graph.scopes import module_scope


def _stack(repeats: dict[int, int], width: int = 8, layers: list[str] | None = None) -> onnx.ModelProto:
    """Layer N has ``repeats[N]`` scoped Conv+Relu blocks named /model.N/m/m.K/..., like YOLOv5's C3."""
    nodes, inits, prev, c_in = [], [], "images", 3
    rng = np.random.default_rng(0)
    for layer, n in sorted(repeats.items()):
        for k in range(n):
            scope = f"/model.{layer}/m/m.{k}"
            w = f"{scope}/w"
            inits.append(numpy_helper.from_array(rng.standard_normal((width, c_in, 3, 3)).astype(np.float32), w))
            nodes.append(helper.make_node("Conv", [prev, w], [f"{scope}/c"], name=f"{scope}/conv/Conv",
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [f"{scope}/c"], [f"{scope}/r"], name=f"{scope}/act/Relu"))
            prev, c_in = f"{scope}/r", width
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, width, 8, 8])
    m = helper.make_model(helper.make_graph(nodes, "stack", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    if layers:
        m.metadata_props.add(key="yexport.layers", value=json.dumps(layers))
    return onnx.shape_inference.infer_shapes(m)


def test_module_scope_reads_yolov5_node_names() -> None:
    assert module_scope("/model.2/m/m.0/cv1/conv/Conv") == ("model.2", "m.0")
    assert module_scope("/model.24/m.1/Conv") == ("model.24", "m.1")
    assert module_scope("/model.9/m/MaxPool") == ("model.9", None)
    assert module_scope("Conv_3") is None and module_scope(None) is None


def test_uniform_width_change_is_one_line(builders) -> None:
    r = diff(builders.chain(channels=(8, 16)), builders.chain(channels=(4, 8)))
    assert not r.added and not r.removed
    assert "widths: every Conv has half the channels (2 Convs)" in r.summary
    assert any("of A's parameters" in s for s in r.summary)
    assert any("changed only in shapes" in s for s in r.summary)
    text = r.render("text").splitlines()
    assert text[2] == "summary:" and "half the channels" in "\n".join(text[3:7])


def test_per_layer_widths_when_ratios_differ(builders) -> None:
    r = diff(builders.chain(channels=(8, 16)), builders.chain(channels=(4, 32)))
    assert any(s.startswith("widths scaled per layer (2 of 2 Convs changed)") for s in r.summary)


def test_parameter_count_and_opset_and_interface(builders) -> None:
    a, b = builders.chain(opset=17, size=16), builders.chain(opset=18, size=32)
    r = diff(a, b)
    assert "opset ai.onnx: 17 -> 18" in r.summary
    assert "input 0 type: f32[1,3,16,16] -> f32[1,3,32,32]" in r.summary
    # weights and biases of 2 convs, the Gemm and the MatMul
    assert parameter_count(_canon(a)) == 8 * 3 * 9 + 8 + 16 * 8 * 9 + 16 + 10 * 16 + 10 + 40


def _canon(m: onnx.ModelProto):
    from exporter.graph._canon import canonicalize

    return canonicalize(m)


def test_depth_change_from_module_scopes() -> None:
    r = diff(_stack({0: 1, 1: 3, 2: 1}), _stack({0: 1, 1: 2, 2: 1}))
    assert "depth: model.1: 3 -> 2 repeats" in r.summary
    assert "-1 Conv, -1 Relu" in r.summary[0]
    assert {e["layer"] for e in r.removed} == {"model.1"}


def test_module_substitution_from_layer_metadata() -> None:
    a = _stack({0: 1, 1: 1}, layers=["Focus", "C3"])
    b = _stack({0: 1, 1: 1}, layers=["Conv", "C3"])
    assert "model.0: Focus -> Conv 3x3" in diff(a, b).summary
    a = _stack({0: 1, 1: 1, 2: 1}, layers=["Conv", "SPP", "C3"])
    b = _stack({0: 1, 1: 1, 2: 1}, layers=["Conv", "C3", "SPPF"])
    assert "model.1 -> model.2: SPP -> SPPF" in diff(a, b).summary


def test_identical_graphs_have_no_summary(builders) -> None:
    r = diff(builders.chain(), builders.chain())
    assert r.identical and r.summary == []


# ---------------------------------------------------------------------------------------------
# yolov5s vs yolov5n: same topology, half the channels


@pytest.fixture(scope="module")
def s_and_n(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from exporter.api import export

    out = tmp_path_factory.mktemp("sn")
    return {m: export(m, out_dir=out, img=(128, 128), check=False)[0].path for m in ("yolov5s", "yolov5n")}


@pytest.mark.slow
def test_yolov5s_vs_yolov5n_says_the_widths_halved(s_and_n: dict[str, Path]) -> None:
    r = diff(s_and_n["yolov5s"], s_and_n["yolov5n"])
    assert not r.added and not r.removed, (len(r.added), len(r.removed))
    assert any(s.startswith("widths: every Conv has half the channels") for s in r.summary), r.summary
    assert any("(B has 26% of A's parameters)" in s for s in r.summary), r.summary
    # matching never pairs a node of one layer with a node of another (model.21's Conv with Detect's)
    for e in r.changed:
        assert e["layer"] is not None
    md = r.render("markdown")
    assert len(md.encode()) < 6000, len(md.encode())
    assert "<details>" in md and "half the channels" in "\n".join(md.splitlines()[:6])


@pytest.mark.slow
def test_yolov5s_vs_yolov5n_markdown_from_the_cli(s_and_n: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli, ["diff", str(s_and_n["yolov5s"]), str(s_and_n["yolov5n"]), "--format", "markdown"])
    assert res.exit_code == 1
    assert len(res.output.encode()) < 6000 and "every Conv has half the channels" in res.output
