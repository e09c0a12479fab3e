"""The one constant detector (exporter.graph.constants), on tiny hand-built graphs, and its users:
the snapshot's canonical order, the diff, the Graphviz drawing and the tidy stage all see the same
constant-derived nodes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.graph._canon import canonicalize
from exporter.graph.constants import constant_nodes, graph_constant_nodes
from exporter.graph.diff_compare import Side
from exporter.graph.graphviz_graph import _prepare
from exporter.stages.tidy import only_constant_nodes_to_fold


def _model(nodes: list, inits: list, inputs: list | None = None, outputs: list | None = None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _flagged(model: onnx.ModelProto) -> set[str]:
    flags, _ = graph_constant_nodes(model.graph)
    return {n.name for n, f in zip(model.graph.node, flags, strict=True) if f}


def _shape_model() -> onnx.ModelProto:
    """x -> Reshape(x, shape) -> Relu -> y, the shape computed from a weight's dims and a Constant."""
    w = numpy_helper.from_array(np.zeros((2, 3, 4), np.float32), "w")
    idx = numpy_helper.from_array(np.array(0, np.int64), "idx")
    ax = numpy_helper.from_array(np.array([0], np.int64), "ax")
    nodes = [
        helper.make_node("Constant", [], ["minus1"], name="const", value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Shape", ["w"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "idx"], ["g0"], name="gather"),
        helper.make_node("Unsqueeze", ["g0", "ax"], ["u0"], name="unsqueeze"),
        helper.make_node("Concat", ["u0", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
    ]
    return _model(nodes, [w, idx, ax])


SHAPE_ARITHMETIC = {"const", "shape", "gather", "unsqueeze", "concat"}


def test_constants_and_shape_arithmetic_on_weights() -> None:
    model = _shape_model()
    assert _flagged(model) == SHAPE_ARITHMETIC
    _, values = graph_constant_nodes(model.graph)
    assert {"w", "idx", "ax", "minus1", "sh", "g0", "u0", "target"} == values


def test_the_order_of_the_node_list_does_not_matter() -> None:
    model = _shape_model()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert _flagged(model) == SHAPE_ARITHMETIC


def test_castlike_reads_only_the_type_of_its_second_input() -> None:
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [helper.make_node("CastLike", ["half", "x"], ["h"], name="castlike"),
             helper.make_node("Mul", ["x", "h"], ["y"], name="mul")]
    model = _model(nodes, [half])
    assert _flagged(model) == {"castlike"}
    ops, ins, outs = ["CastLike", "Mul"], [["half", "x"], ["x", "h"]], [["h"], ["y"]]
    assert constant_nodes(ops, ins, outs, ["half"])[0] == [True, False]
    # as the snapshot orders nodes, every input is a read: x is not constant
    assert constant_nodes(ops, ins, outs, ["half"], type_reads=True)[0] == [False, False]


def test_random_ops_are_never_constant() -> None:
    w = numpy_helper.from_array(np.zeros((2, 12), np.float32), "w")
    nodes = [helper.make_node("RandomNormal", [], ["noise"], name="random", shape=[2, 12]),
             helper.make_node("RandomUniformLike", ["w"], ["noise2"], name="random_like"),
             helper.make_node("Identity", ["w"], ["w2"], name="identity"),
             helper.make_node("Add", ["noise", "noise2"], ["n"], name="add"),
             helper.make_node("Add", ["n", "w2"], ["n2"], name="add2"),
             helper.make_node("Add", ["x", "n2"], ["y"], name="add3")]
    assert _flagged(_model(nodes, [w])) == {"identity"}


def test_subgraph_reads_count_as_reads() -> None:
    w = numpy_helper.from_array(np.ones((2, 12), np.float32), "w")
    cond = numpy_helper.from_array(np.array(True), "cond")
    out = [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 12])]

    def branch(reads: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Relu", [reads], ["b"])], "branch", [], out)

    nodes = [helper.make_node("If", ["cond"], ["c1"], name="if_const", then_branch=branch("w"), else_branch=branch("w")),
             helper.make_node("If", ["cond"], ["c2"], name="if_live", then_branch=branch("x"), else_branch=branch("w")),
             helper.make_node("Add", ["c1", "c2"], ["y"], name="add")]
    assert _flagged(_model(nodes, [w, cond])) == {"if_const"}


def test_every_user_sees_the_same_constants() -> None:
    model = _shape_model()
    # the drawing leaves out exactly the constant-derived nodes
    drawn = _prepare(model)
    assert {model.graph.node[i].name for i in drawn.live} == {"reshape", "relu"}
    # the diff: the Reshape's shape input is a constant, not data
    g = canonicalize(model)
    side = Side(g, "A")
    reshape = next(n for n in g.nodes if n.op == "Reshape")
    assert reshape.inputs[1] in side.const and side.data_types[reshape.index] == ("f32[2,12]",)
    # the snapshot's order places the shape arithmetic right before the Reshape
    ops = [n.op for n in g.nodes]
    assert ops.index("Reshape") == ops.index("Concat") + 1 and ops[-1] == "Relu"
    # tidy: constant work other than Constant nodes is left, so the lifting shortcut does not apply
    assert not only_constant_nodes_to_fold(model)
    only_constants = _model([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(12, np.float32))),
                             helper.make_node("Add", ["x", "c"], ["y"])], [])
    assert _flagged(only_constants) == {""} and only_constant_nodes_to_fold(only_constants)
