"""Graphviz diagrams: labels, shapes on edges, module boxes, diff highlighting, files and CLI."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
from click.testing import CliRunner
from onnx import helper

from exporter.cli.main import cli
from exporter.errors import ConfigError, MissingDependency
from exporter.graph import graphviz as gv
from exporter.graph.load import load_onnx

BN_COUNT = 5  # BatchNormalization nodes of the toy network (tests/viz/conftest.py)
LAYERS = ["Conv", "Conv", "Conv", "Conv", "Upsample", "Concat", "Conv", "Detect"]
YOLOV5S = ["Conv", "Conv", "C3", "Conv", "C3", "Conv", "C3", "Conv", "C3", "SPPF",  # backbone
           "Conv", "Upsample", "Concat", "C3", "Conv", "Upsample", "Concat", "C3",  # head
           "Conv", "Concat", "C3", "Conv", "Concat", "C3", "Detect"]

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed (Debian package graphviz)")


def node_labels(dot: str) -> dict[str, str]:
    """node id -> label (with real newlines) of every node statement in DOT text."""
    out = {}
    for m in re.finditer(r'^\s+"([^"]+)" \[label="((?:[^"\\]|\\.)*)"', dot, re.M):
        out[m.group(1)] = m.group(2).replace("\\n", "\n")
    return out


def edges(dot: str) -> list[tuple[str, str, str]]:
    found = []
    for m in re.finditer(r'^\s+"([^"]+)" -> "([^"]+)"(?: \[([^\]]*)\])?;', dot, re.M):
        label = re.search(r'label=" ?([^"]*)"', m.group(3) or "")
        found.append((m.group(1), m.group(2), label.group(1) if label else ""))
    return found


def test_full_graph_labels_and_shapes(toy_onnx):
    dot = gv.to_dot(load_onnx(toy_onnx))
    labels = list(node_labels(dot).values())
    assert sum(label.startswith("BatchNormalization") for label in labels) == BN_COUNT
    assert "Conv 3×3 /2\n8 ch" in labels  # kernel, stride, output channels
    assert "Conv 1×1 /1\n18 ch" in labels  # a Detect head conv
    assert "Upsample (nearest) ×2" in labels
    assert labels.count("view") == 2 and labels.count("permute(0,1,3,4,2)") == 2
    assert not [label for label in labels if label.startswith(("Identity", "Constant", "Resize", "Reshape"))]
    assert "images\n1×3×64×64" in labels  # graph input with its shape
    shapes = {label for _, _, label in edges(dot)}
    assert {"1×3×64×64", "1×8×32×32", "1×48×16×16", "1×3×6×16×16"} <= shapes


def test_collapse_torchscript_names(toy_onnx):
    graph = gv.build_dot(load_onnx(toy_onnx), collapse="modules")
    labels = node_labels(graph.text)
    boxes = {k: v for k, v in labels.items() if k.startswith("b")}
    assert graph.blocks == len(boxes) == len(LAYERS)
    heads = [v.split("\n")[0] for v in boxes.values()]
    assert heads == [f"{i}: {name}" for i, name in enumerate(LAYERS)]
    assert boxes["b5"] == "5: Concat\n1×48×16×16"
    assert boxes["b7"] == "7: Detect\n1×3×16×16×6\n1×3×8×8×6"
    found = {(a, b) for a, b, _ in edges(graph.text)}
    assert {("b2", "b5"), ("b3", "b7"), ("b6", "b7"), ("b4", "b5")} <= found  # skip connections included
    assert ("b2", "b3") in found and ("b0", "b2") not in found


@pytest.mark.slow
def test_collapse_dynamo_metadata(toy_dynamo_onnx):
    model = load_onnx(toy_dynamo_onnx)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert gv.node_scope(conv) == ("model.0", 0, "Conv")
    blocks = gv.module_blocks(model)
    assert [(b.index, b.module) for b in blocks] == list(enumerate(LAYERS))
    graph = gv.build_dot(model, collapse="modules")
    assert graph.blocks == len(LAYERS)


def test_namespace_metadata_and_torchscript_scope():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="node_conv2d")
    node.metadata_props.add(key="namespace", value=": pkg.Model/model.9: pkg.SPPF/model.9.cv1: pkg.Conv/conv2d: aten.conv2d")
    assert gv.node_scope(node) == ("model.9", 9, "SPPF")
    ts = helper.make_node("Conv", ["x", "w"], ["y"], name="/model.12/cv1/conv/Conv")
    assert gv.node_scope(ts) == ("model.12", 12, None)
    assert gv.node_scope(helper.make_node("Relu", ["x"], ["y"], name="Relu_3")) is None


def test_layers_metadata_key_and_argument(toy_onnx):
    model = load_onnx(toy_onnx)
    names = [["Stem", -1, 1, [8, 3, 2]], "Down", "Mix", "Down", "Up", "Join", "Squeeze", "Head"]
    model.metadata_props.add(key=gv.LAYERS_KEY, value=json.dumps(names))
    heads = [b.module for b in gv.module_blocks(model)]
    assert heads == ["Stem", "Down", "Mix", "Down", "Up", "Join", "Squeeze", "Head"]
    # a caller's mapping wins over the file's metadata
    heads = [b.module for b in gv.module_blocks(model, layers={7: "Detect"})]
    assert heads[-1] == "Detect" and heads[0] == "Stem"


def test_parse_layers_formats():
    assert gv.parse_layers('[["Conv", -1, 1, [64]], "C3", ["models.common.SPPF"]]') == {0: "Conv", 1: "C3", 2: "SPPF"}
    assert gv.parse_layers({"3": "Detect", "0": "Focus"}) == {3: "Detect", 0: "Focus"}


def _nodes(*specs):
    return [helper.make_node(op, ins, outs) for op, ins, outs in specs]


def test_module_type_from_patterns():
    sppf = _nodes(("Conv", ["x", "w"], ["a"]), ("MaxPool", ["a"], ["p1"]), ("MaxPool", ["p1"], ["p2"]),
                  ("MaxPool", ["p2"], ["p3"]), ("Concat", ["a", "p1", "p2", "p3"], ["c"]), ("Conv", ["c", "w2"], ["y"]))
    spp = _nodes(("Conv", ["x", "w"], ["a"]), ("MaxPool", ["a"], ["p1"]), ("MaxPool", ["a"], ["p2"]),
                 ("MaxPool", ["a"], ["p3"]), ("Concat", ["a", "p1", "p2", "p3"], ["c"]), ("Conv", ["c", "w2"], ["y"]))
    c3 = _nodes(("Conv", ["x", "w1"], ["a"]), ("Conv", ["a", "w"], ["b"]), ("Conv", ["b", "w"], ["b2"]),
                ("Add", ["a", "b2"], ["m"]), ("Conv", ["x", "w2"], ["c"]), ("Concat", ["m", "c"], ["k"]),
                ("Conv", ["k", "w3"], ["y"]))
    focus = _nodes(*[("Slice", ["x"], [f"s{i}"]) for i in range(4)], ("Concat", ["s0", "s1", "s2", "s3"], ["c"]),
                   ("Conv", ["c", "w"], ["y"]))
    assert gv.infer_module_type(sppf) == "SPPF"
    assert gv.infer_module_type(spp) == "SPP"
    assert gv.infer_module_type(c3) == "C3"
    assert gv.infer_module_type(focus) == "Focus"
    assert gv.infer_module_type(_nodes(("Resize", ["x", "", "s"], ["y"]))) == "Upsample"
    assert gv.infer_module_type(_nodes(("Concat", ["a", "b"], ["y"]))) == "Concat"


def test_highlight_removed_and_added(toy_onnx, toy_fused_onnx):
    fused, kept = load_onnx(toy_fused_onnx), load_onnx(toy_onnx)
    graph = gv.build_dot(fused, highlight=kept)  # BatchNorm folded away: removed relative to the kept file
    assert (graph.added, graph.removed) == (0, BN_COUNT)
    removed = [line for line in graph.text.splitlines() if line.lstrip().startswith('"r') and "[label=" in line]
    assert len(removed) == BN_COUNT
    assert all("BatchNormalization" in line and "dashed" in line and "#c62828" in line for line in removed)
    assert re.search(r'"n\d+" -> "r\d+" \[style="dashed"', graph.text)  # wired in where it used to be
    back = gv.build_dot(kept, highlight=fused)
    assert (back.added, back.removed) == (BN_COUNT, 0)
    green = [v for v in node_labels(back.text).values() if v.startswith("+ ")]
    assert len(green) == BN_COUNT and all("BatchNormalization" in v for v in green)
    same = gv.build_dot(kept, highlight=kept, collapse="modules")
    assert (same.added, same.removed) == (0, 0)


def test_highlight_collapsed(toy_onnx, toy_fused_onnx):
    graph = gv.build_dot(load_onnx(toy_fused_onnx), collapse="modules", highlight=load_onnx(toy_onnx))
    labels = node_labels(graph.text)
    assert labels["b0"].endswith("\n−1 BatchNormalization") and labels["b6"].endswith("\n−1 BatchNormalization")
    assert "#c62828" in next(line for line in graph.text.splitlines() if line.lstrip().startswith('"b0"'))
    assert labels["b4"] == "4: Upsample\n1×32×16×16"


def _chain(prefix: str = "", *, extra: bool = False, reverse: bool = False):
    """x -> Conv -> Relu -> Conv -> Relu -> Add(skip) -> y; ``extra`` puts a Sigmoid after the
    first Relu; ``prefix`` renames nodes and values; ``reverse`` reverses the node list."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    p = prefix
    w = [numpy_helper.from_array(np.full((4, 4, 3, 3), k, np.float32), f"{p}w{k}") for k in (1, 2)]
    after_relu = f"{p}s" if extra else f"{p}r1"
    nodes = [helper.make_node("Conv", ["x", f"{p}w1"], [f"{p}c1"], name=f"{p}conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [f"{p}c1"], [f"{p}r1"], name=f"{p}relu1")]
    if extra:
        nodes.append(helper.make_node("Sigmoid", [f"{p}r1"], [f"{p}s"], name=f"{p}sigmoid"))
    nodes += [helper.make_node("Conv", [after_relu, f"{p}w2"], [f"{p}c2"], name=f"{p}conv2", kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1]),
              helper.make_node("Relu", [f"{p}c2"], [f"{p}r2"], name=f"{p}relu2"),
              helper.make_node("Add", [f"{p}r2", "x"], ["y"], name=f"{p}add")]
    if reverse:
        nodes = nodes[::-1]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    return helper.make_model(helper.make_graph(nodes, "chain", [x], [y], w), opset_imports=[helper.make_opsetid("", 17)])


def test_highlight_is_the_structural_diff():
    """The node added in the second file, and only that node, is highlighted, as `yexport diff`
    reports it: matching is by structure, not by names or the order of the node list."""
    from exporter.graph.diff import diff

    first, second = _chain(), _chain("renamed_", extra=True, reverse=True)
    graph = gv.build_dot(second, highlight=first)
    assert (graph.added, graph.removed) == (1, 0)
    green = [label for label in node_labels(graph.text).values() if label.startswith("+ ")]
    assert green == ["+ Sigmoid"]
    assert "#2e7d32" in next(line for line in graph.text.splitlines() if '"+ Sigmoid"' in line)
    result = diff(first, second)
    assert [e["op"] for e in result.added] == ["Sigmoid"] and not result.removed
    back = gv.build_dot(first, highlight=second)  # the other way round: removed, drawn dashed
    assert (back.added, back.removed) == (0, 1)
    assert any(label == "− Sigmoid" for label in node_labels(back.text).values())


def test_unknown_collapse_is_config_error(toy_onnx):
    with pytest.raises(ConfigError):
        gv.to_dot(toy_onnx, collapse="layers")


@needs_dot
def test_render_default_path_svg_and_png(toy_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = gv.render_graphviz(toy_onnx, collapse="modules")
    assert out == gv.DEFAULT_DIR / "toy.svg"
    svg = (tmp_path / out).read_text()
    assert svg.lstrip().startswith("<?xml") and "7: Detect" in svg and "1×48×16×16" in svg
    png = gv.render_graphviz(toy_onnx, tmp_path / "sub" / "full.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "sub").glob("*.tmp"))  # written through a temporary file


def test_dot_output_needs_no_graphviz(toy_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(gv.shutil, "which", lambda name: None)
    out = gv.render_graphviz(toy_onnx, tmp_path / "toy.dot")
    assert out.read_text().startswith('digraph "')
    with pytest.raises(MissingDependency, match="graphviz"):
        gv.render_graphviz(toy_onnx, tmp_path / "toy.svg")


def test_cli_graph(toy_onnx, toy_fused_onnx, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "g.dot"
    result = runner.invoke(cli, ["graph", str(toy_onnx), "--collapse", "modules", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out} (8 module boxes, 12 edges)"
    assert '"b7" [label="7: Detect' in out.read_text()
    result = runner.invoke(cli, ["graph", str(toy_fused_onnx), "--highlight-diff", str(toy_onnx), "-o", str(out)])
    assert result.exit_code == 0 and "0 added, 5 removed vs toy.onnx" in result.output
    result = runner.invoke(cli, ["graph", str(toy_onnx), "-o", str(tmp_path / "g.txt")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "use .svg, .png, .pdf or .dot" in result.output
    monkeypatch.setattr(gv.shutil, "which", lambda name: None)
    result = runner.invoke(cli, ["graph", str(toy_onnx), "-o", str(tmp_path / "g.svg")])
    assert result.exit_code == 2 and "'graphviz'" in result.output and result.output.count("\n") == 1


def test_cli_graph_bad_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(cli, ["graph", str(bad), "-o", str(tmp_path / "x.dot")])
    assert result.exit_code == 2 and "bad.onnx" in result.output


@pytest.mark.slow
def test_yolov5s_collapses_to_25_boxes(tmp_path):
    """The real model zoo, when present: 25 layers, Detect included, YOLOv5 module names."""
    torch = pytest.importorskip("torch")
    models = pytest.importorskip("exporter.models")
    if not hasattr(models, "build_model"):
        pytest.skip("exporter.models.build_model is not available")
    model = models.build_model("yolov5s", seed=0).eval()
    path = tmp_path / "yolov5s.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(path), dynamo=False, opset_version=18,
                          training=torch.onnx.TrainingMode.PRESERVE)
    blocks = gv.module_blocks(load_onnx(path))
    assert len(blocks) == 25 and [b.index for b in blocks] == list(range(25))
    assert [b.module for b in blocks] == YOLOV5S

    dot = gv.build_dot(load_onnx(path), collapse="modules").text
    # the block diagram as the YOLOv5 papers draw it: three groups, repeat counts, one head per level
    for cluster in ("cluster_backbone", "cluster_neck", "cluster_head"):
        assert f"subgraph {cluster}" in dot
    backbone = dot.split("subgraph cluster_backbone {")[1].split("}")[0]
    assert all(f'"b{i}"' in backbone for i in range(10)) and '"b10"' not in backbone
    assert '"6: C3 ×3' in dot and '"9: SPPF' in dot
    heads = [ln for ln in dot.splitlines() if ln.lstrip().startswith('"det') and " -> " not in ln]
    assert len(heads) == 3 and "P3/8 head" in heads[0] and "grid 8×8" in heads[0] and "P5/32 head" in heads[2]
    assert '"b17" -> "det0"' in dot and '"b23" -> "det2"' in dot
