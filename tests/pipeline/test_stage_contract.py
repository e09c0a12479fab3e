"""The stage contract: requires checked before a stage runs, ensures recorded and held by the checker;
the stages' own declarations (order, graph-shaping options) agree with what they do."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import StageError
from exporter.options import ExportOptions
from exporter.pipeline import GRAPH, Condition, Context, Stage, Verdict, run_pipeline
from exporter.stages import STAGES, checker
from exporter.stages.checker import GraphCheckError
from exporter.stages.external import OPSET
from exporter.stages.infer_shapes import TYPED
from exporter.stages.prepare import batchnorm_promise
from tests.pipeline.conftest import Exported


def bn_graph(bns: int = 1, opset: int = 18) -> onnx.ModelProto:
    """x -> BatchNormalization x ``bns`` -> y, statistics in initializers; shapes inferred."""
    ones = numpy_helper.from_array(np.ones(3, dtype=np.float32), "ones")
    nodes = [helper.make_node("BatchNormalization", [f"v{i}", "ones", "ones", "ones", "ones"], [f"v{i + 1}"],
                              name=f"bn{i}") for i in range(bns)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(f"v{bns}", TensorProto.FLOAT, [1, 3, 4, 4])], [ones])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def make(graph: onnx.ModelProto):
    def run(ctx: Context) -> Context:
        return ctx.replace(onnx=graph, change="made")
    return run


def promise(cond: Condition):
    def run(ctx: Context) -> Context:
        return ctx.replace(change="promised").promise(cond)
    return run


def ctx0(**kw: Any) -> Context:
    return Context(options=ExportOptions(**kw), source=None)


# ------------------------------------------------------------------------------ requires


def test_a_stage_whose_requirement_is_unmet_fails_naming_it_and_the_condition() -> None:
    ran: list[str] = []

    def needs(ctx: Context) -> Context:
        ran.append("needs")
        return ctx

    stages = (Stage("first", lambda ctx: ctx), Stage("needs", needs, requires=(GRAPH,)),
              Stage("maker", make(bn_graph()), ensures=(GRAPH,)))
    with pytest.raises(StageError) as info:
        run_pipeline(ctx0(), stages)
    assert str(info.value) == ("stage 'needs' failed after: first: requires an ONNX graph, which the stages before "
                               "it did not give (maker ensures it but runs after it): the stage order is wrong")
    assert info.value.exit_code == 1 and not ran  # never called
    # the same stages in the right order run
    ctx = run_pipeline(ctx0(), (stages[0], stages[2], stages[1]))
    assert [r.name for r in ctx.records] == ["first", "maker", "needs"] and ran == ["needs"]


def test_a_requirement_no_stage_ensures_says_so() -> None:
    with pytest.raises(StageError, match=r"requires an ONNX graph, .* \(no stage in the list ensures it\)"):
        run_pipeline(ctx0(), (Stage("alone", lambda ctx: ctx, requires=(GRAPH,)),))


def test_the_registered_order_meets_every_requirement() -> None:
    """Every condition a stage of STAGES requires is ensured by a stage before it that always runs."""
    for i, stage in enumerate(STAGES):
        for cond in stage.requires:
            makers = [s for s in STAGES[:i] if cond in s.ensures]
            assert makers and all(s.when(ExportOptions()) and s.when(ExportOptions(tidy=False, infer_shapes=False,
                                                                                   check=False)) for s in makers), \
                (stage.name, cond.name)
    assert [s.name for s in STAGES if GRAPH in s.ensures] == ["capture"]


# ------------------------------------------------------------------------------ ensures


def test_ensures_and_run_time_promises_are_recorded_in_order() -> None:
    fused = batchnorm_promise(0)
    stages = (Stage("p", promise(fused)), Stage("m", make(bn_graph(0)), ensures=(GRAPH, OPSET)),
              Stage("off", promise(TYPED), when=lambda o: False), Stage("quiet", lambda ctx: ctx))
    ctx = run_pipeline(ctx0(), stages)
    assert [(r.name, r.ensures) for r in ctx.records] == [
        ("p", ("no BatchNormalization",)), ("m", ("an ONNX graph", "the opset asked for")), ("quiet", ())]
    assert ctx.promises == (("p", fused), ("m", GRAPH), ("m", OPSET)) and ctx.promised == ()
    assert ctx.records[0].as_dict()["ensures"] == ("no BatchNormalization",)
    assert ctx.plan == ("p", "m", "quiet")


def test_checker_fails_on_a_batchnorm_left_where_prepare_promised_fusion() -> None:
    stages = (Stage("prepare", promise(batchnorm_promise(0))), Stage("capture", make(bn_graph(1)),
                                                                     ensures=(GRAPH,)), checker.STAGE)
    with pytest.raises(StageError) as info:
        run_pipeline(ctx0(), stages)
    assert str(info.value) == ("stage 'checker' failed after: prepare, capture: prepare promised no "
                               "BatchNormalization: BatchNorm fusion asked for: prepare fused every BatchNorm2d, "
                               "but 1 BatchNormalization remain")
    assert isinstance(info.value.cause, GraphCheckError)


def test_checker_verifies_exactly_the_promises_made() -> None:
    """No promise about BatchNorm: a BatchNormalization is no error; each promise kept is in the record."""
    ctx = run_pipeline(ctx0(), (Stage("capture", make(bn_graph(2)), ensures=(GRAPH, OPSET)), checker.STAGE))
    assert ctx.records[-1].changed == "onnx.checker passed; an ONNX graph; opset 18"
    kept = run_pipeline(ctx0(), (Stage("prepare", promise(batchnorm_promise(2))),
                                 Stage("capture", make(bn_graph(2)), ensures=(GRAPH,)), checker.STAGE))
    assert kept.records[-1].changed == "onnx.checker passed; 2 BatchNormalization; an ONNX graph"
    with pytest.raises(StageError, match="capture promised the opset asked for: the graph has opset 17 but --opset "
                                         "18 was asked for"):
        run_pipeline(ctx0(), (Stage("capture", make(bn_graph(0, opset=17)), ensures=(OPSET,)), checker.STAGE))


def test_batchnorm_promise_counts_modes_and_what_the_exporter_may_fold() -> None:
    def verdict(cond: Condition, graph: onnx.ModelProto, **kw: Any) -> Verdict:
        return cond.verdict(ctx0(**kw).replace(onnx=graph))

    may = batchnorm_promise(2, 1)  # prepare kept 2, could not see the input of one
    assert may.name == "1 to 2 BatchNormalization (the BatchNorm2d prepare could not fold)"
    assert verdict(may, bn_graph(2)) == Verdict(True, "2 BatchNormalization")
    one = verdict(may, bn_graph(1))
    assert one.held and "the exporter folded 1 of the 2" in one.text and "1 remain in the graph" in one.note
    assert "prepare kept 1 to 2 BatchNorm2d" in verdict(may, bn_graph(0)).text
    kept = batchnorm_promise(2, 1, keep=True)  # --keep-bn: exactly the model's count, whatever could fold
    assert verdict(kept, bn_graph(2)).held and not verdict(kept, bn_graph(1)).held
    assert verdict(kept, bn_graph(1)).text == "--keep-bn: the model has 2 BatchNorm2d but the graph has 1 " \
                                              "BatchNormalization nodes"
    train = batchnorm_promise(1, keep=True, training=True)
    assert verdict(train, bn_graph(1)).text == "BatchNormalization bn0 has training_mode != 1"
    assert not batchnorm_promise(0).verdict(ctx0())  # no graph yet


def test_every_edge_typed() -> None:
    g = bn_graph(3)
    assert TYPED.verdict(ctx0().replace(onnx=g)).held
    del g.graph.value_info[1:]
    v = TYPED.verdict(ctx0().replace(onnx=g))
    assert not v.held and v.text == "1 edges have no type (e.g. v2)"


def test_manifest_records_what_each_stage_ensured(n320: Exported) -> None:
    ensured = {s["name"]: s["ensures"] for s in n320.manifest["stages"]}
    assert ensured["prepare"] == ["a prepared model and example", "no BatchNormalization"]
    assert ensured["capture"] == ["an ONNX graph", "the opset asked for"]
    assert ensured["infer_shapes"] == ["a type on every edge"]
    checked = next(s for s in n320.manifest["stages"] if s["name"] == "checker")["changed"]
    assert checked == ("onnx.checker passed; a prepared model and example; no BatchNormalization; an ONNX graph; "
                       "opset 18; a type on every edge; the yexport metadata")


# ------------------------------------------------------------------------------ graph-shaping options


def test_graph_option_fields_come_from_the_declarations() -> None:
    from exporter.identity import GRAPH_OPTION_FIELDS
    from exporter.options import graph_fields

    assert GRAPH_OPTION_FIELDS == graph_fields(ExportOptions) == {
        "keep_bn", "training", "int_shapes", "tidy", "infer_shapes", "simplify", "dynamic", "img", "batch",
        "opset", "exporter", "head", "input_shapes", "half", "half_io"}


# fields a graph-changing stage reads that are not graph identity: where the capture runs, the seed of the
# example
NOT_GRAPH_IDENTITY = {"device", "seed"}


def test_every_option_a_graph_changing_stage_reads_is_declared_graph_shaping() -> None:
    """Run the stages that change the graph (or the model captured) with options that record which
    fields are read: each one is declared ``graph=True`` or is a known exception above."""
    from exporter.identity import GRAPH_OPTION_FIELDS
    from exporter.models import load_model

    names = {f.name for f in dataclasses.fields(ExportOptions)}
    read: dict[str, set[str]] = {}
    current: list[str] = [""]

    class Recording(ExportOptions):
        def __getattribute__(self, name: str) -> Any:
            if name in names and current[0]:
                read.setdefault(current[0], set()).add(name)
            return super().__getattribute__(name)

    def within(name: str, fn: Any) -> Any:
        """``fn`` with every option it reads counted for stage ``name``."""
        def call(arg: Any) -> Any:
            current[0] = name
            try:
                return fn(arg)
            finally:
                current[0] = ""
        return call

    def tracked(stage: Stage) -> Stage:
        return dataclasses.replace(stage, run=within(stage.name, stage.run), when=within(stage.name, stage.when))

    shaping = ("prepare", "capture", "tidy", "infer_shapes", "simplify", "half")
    stages = tuple(tracked(s) for s in STAGES if s.name in shaping)
    opts = Recording(img=(64, 64), simplify=True, half=True, check=False)
    ctx = run_pipeline(Context(options=opts, source=load_model("yolov5n")), stages)
    assert [r.name for r in ctx.records] == list(shaping) and all(r.ok for r in ctx.records)
    undeclared = {(stage, f) for stage, fields in read.items() for f in fields - GRAPH_OPTION_FIELDS - NOT_GRAPH_IDENTITY}
    assert not undeclared, f"options read by a graph-changing stage but not declared graph=True: {sorted(undeclared)}"
    assert {"keep_bn", "training", "img", "opset", "head", "int_shapes", "exporter"} <= read["prepare"] | read["capture"]
