"""Pipeline mechanics: stage order and records, wrapped stage errors, a failing simplifier, the checker's
promises, and a parity failure that never replaces a good file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from exporter.errors import ConfigError, StageError
from exporter.options import ExportOptions
from exporter.pipeline import Context, Stage, StageRecord, run_pipeline
from exporter.stages import STAGES, enabled_stages
from tests.pipeline.conftest import Exported, check_written, one_line_error, opset, yexport


def relu_chain(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"relu{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"v{n}", TensorProto.FLOAT, [1])])
    return helper.make_model(graph)


def add(n: int):
    def run(ctx: Context) -> Context:
        return ctx.replace(onnx=relu_chain(n), change=f"{n} nodes")
    return run


def boom(ctx: Context) -> Context:
    raise ValueError("the graph caught fire")


def test_records_in_order_and_skipped_stages_left_out() -> None:
    stages = (
        Stage("a", add(3)),
        Stage("skipped", boom, when=lambda o: o.simplify),  # simplify is off: never runs
        Stage("b", add(5), numerics=lambda o: f"made up for opset {o.opset}"),
        Stage("c", lambda ctx: ctx.replace(failure="soft failure, kept going")),
    )
    ctx = run_pipeline(Context(options=ExportOptions(), source=None), stages)
    assert [r.name for r in ctx.records] == ["a", "b", "c"]
    a, b, c = ctx.records
    assert (a.nodes_before, a.nodes_after, a.changed, a.ok) == (None, 3, "3 nodes", True)
    assert (b.nodes_before, b.nodes_after, b.numerics) == (3, 5, "made up for opset 18")
    assert (c.ok, c.error, c.nodes_before, c.nodes_after) == (False, "soft failure, kept going", 5, 5)
    assert all(isinstance(r, StageRecord) and r.seconds >= 0 for r in ctx.records)
    assert ctx.change == "" and ctx.failure == ""  # moved into the records
    assert set(a.as_dict()) >= {"name", "ok", "seconds", "nodes_before", "nodes_after", "changed", "numerics", "error"}


def test_a_stage_that_asks_keeps_the_graph_before_it_for_parity() -> None:
    """compare_before keeps the graph a stage replaced (and only then); other stages keep nothing."""
    stages = (Stage("capture", add(2)), Stage("asks", add(3), compare_before=True),
              Stage("asks-but-keeps", lambda ctx: ctx.replace(change="nothing to do"), compare_before=True),
              Stage("silent", add(4)))
    ctx = run_pipeline(Context(options=ExportOptions(), source=None), stages)
    assert list(ctx.before) == ["asks"]
    assert len(ctx.before["asks"].graph.node) == 2 and len(ctx.graph.graph.node) == 4
    assert [s.name for s in STAGES if s.compare_before] == ["simplify", "half"]


def test_failing_stage_is_wrapped_with_the_stages_before_it() -> None:
    stages = (Stage("a", add(1)), Stage("off", add(9), when=lambda o: False), Stage("b", add(2)), Stage("x", boom),
              Stage("never", add(4)))
    with pytest.raises(StageError) as info:
        run_pipeline(Context(options=ExportOptions(), source=None), stages)
    err = info.value
    assert str(err) == "stage 'x' failed after: a, b: the graph caught fire"
    assert (err.stage, err.before, err.exit_code) == ("x", ["a", "b"], 1)
    assert isinstance(err.cause, ValueError) and err.__cause__ is err.cause


def test_first_stage_failing_and_usage_errors_keep_their_exit_code() -> None:
    def bad_option(ctx: Context) -> Context:
        raise ConfigError("--device tpu: use cpu, cuda or cuda:N")

    with pytest.raises(StageError) as info:
        run_pipeline(Context(options=ExportOptions(), source=None), (Stage("prepare", bad_option),))
    assert str(info.value) == "stage 'prepare' failed: --device tpu: use cpu, cuda or cuda:N"
    assert info.value.exit_code == 2


def test_enabled_stages_follow_the_options() -> None:
    names = [s.name for s in STAGES]
    assert names == ["prepare", "capture", "tidy", "infer_shapes", "simplify", "half", "metadata", "checker", "parity"]
    assert [s.name for s in enabled_stages(ExportOptions())] == [n for n in names if n not in ("simplify", "half")]
    assert "half" in [s.name for s in enabled_stages(ExportOptions(half=True))]
    assert [s.name for s in enabled_stages(ExportOptions(simplify=True, check=False, tidy=False))] == [
        "prepare", "capture", "infer_shapes", "simplify", "metadata", "checker"]


# ------------------------------------------------------------------------------ through the CLI


def test_cli_stage_failure_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.stages as stages

    broken = tuple(Stage("metadata", boom) if s.name == "metadata" else s for s in stages.STAGES)
    monkeypatch.setattr(stages, "STAGES", broken)
    r = yexport("export", "yolov5n", "--img", "256", "-o", tmp_path)
    line = one_line_error(r, "", code=1)
    assert line == ("yexport: error: stage 'metadata' failed after: prepare, capture, tidy, infer_shapes: "
                    "the graph caught fire")
    assert r.stdout == ""
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.tmp"))


def test_checker_catches_a_stage_that_changed_the_opset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.stages as stages

    def downgrade(ctx: Context) -> Context:  # claims opset 17 on an opset-18 graph
        m = ctx.onnx
        for i in m.opset_import:
            if i.domain in ("", "ai.onnx"):
                i.version = 17
        return ctx.replace(onnx=m, change="opset rewritten")

    patched = []
    for s in stages.STAGES:
        patched.append(s)
        if s.name == "tidy":
            patched.append(Stage("downgrade", downgrade))
    monkeypatch.setattr(stages, "STAGES", tuple(patched))
    r = yexport("export", "yolov5n", "--img", "256", "--opset", "18", "-o", tmp_path)
    line = one_line_error(r, "stage 'checker' failed after: prepare, capture, tidy, downgrade, infer_shapes, "
                             "metadata: ", code=1)
    assert "the graph has opset 17 but --opset 18 was asked for" in line
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_simplify_failure_is_recorded_and_the_unsimplified_graph_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    def explode(*args, **kwargs):
        raise RuntimeError("simplifier exploded\nsecond line of a long message")

    monkeypatch.setattr(onnxsim, "simplify", explode)
    r = yexport("export", "yolov5n", "--img", "256", "--simplify", "-o", tmp_path, "--name", "n")
    assert r.exit_code == 1, r.output  # the file is written, but CI must see the failure
    assert "FAILED (n.onnx): simplify: onnxsim failed (simplifier exploded); kept the unsimplified graph" in r.stderr
    e = Exported.read(tmp_path / "n.onnx", r)
    check_written(e)
    rec = next(s for s in e.manifest["stages"] if s["name"] == "simplify")
    assert rec["ok"] is False and "simplifier exploded" in rec["error"] and "second line" not in rec["error"]
    assert rec["nodes_before"] == rec["nodes_after"] == len(e.model.graph.node)
    assert e.manifest["failures"] == [f"simplify: {rec['error']}"]
    assert e.parity["passed"] is True and e.manifest["parity_before_simplify"] is None
    assert [s["name"] for s in e.manifest["stages"]][-3:] == ["checker", "parity", "write"]


def test_parity_failure_keeps_the_good_file(tmp_path: Path, n320: Exported) -> None:
    out = tmp_path / "out"
    out.mkdir()
    good, good_json = out / "yolov5n.onnx", out / "yolov5n.json"
    shutil.copy2(n320.path, good)
    shutil.copy2(n320.path.with_suffix(".json"), good_json)
    before = good.read_bytes(), good_json.read_bytes(), good.stat().st_mtime_ns

    # the default rtol (1e-3) alone covers this graph's errors (max rel ~1e-4), so both are made tiny
    r = yexport("export", "yolov5n", "--img", "320", "--atol", "1e-9", "--rtol", "0", "-o", out)
    assert r.exit_code == 1, r.output
    assert (good.read_bytes(), good_json.read_bytes(), good.stat().st_mtime_ns) == before
    failed = Exported.read(out / "yolov5n.parity-failed.onnx", r)
    check_written(failed)
    assert failed.parity["passed"] is False
    assert failed.manifest["failures"] == ["parity: parity failed"]
    (worst,) = failed.parity["providers"][0]["outputs"]
    assert worst["passed"] is False and worst["atol"] == 1e-9 and "FAIL at" in r.stderr
    assert "onnx" in worst["worst"] and "torch" in worst["worst"]
    assert sorted(p.name for p in out.iterdir()) == ["yolov5n.json", "yolov5n.onnx", "yolov5n.parity-failed.json",
                                                     "yolov5n.parity-failed.onnx"]
    # same graph as the good one: only the tolerance made the difference
    assert len(failed.model.graph.node) == len(n320.model.graph.node)
    assert json.loads(good_json.read_text())["parity"]["passed"] is True


def test_opset_17_gives_exactly_17(tmp_path: Path) -> None:
    r = yexport("export", "yolov5n", "--img", "256", "--opset", "17", "-o", tmp_path, "--name", "o17")
    assert r.exit_code == 0, r.output
    e = Exported.read(tmp_path / "o17.onnx", r)
    check_written(e)
    assert opset(e.model) == 17 and e.manifest["opset"] == 17
    assert "opset 17" in next(s for s in e.manifest["stages"] if s["name"] == "capture")["changed"]
    assert e.parity["passed"] is True


@pytest.mark.slow
def test_capture_failure_prints_only_the_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """TorchScript cannot export this graph at opset 7 (nearest upsampling with a computed size): one
    line naming the stage and the operator, and nothing else on the terminal (torch's exporter would
    print its whole IR graph on file descriptor 1)."""
    r = yexport("export", "yolov5n", "--img", "256", "--opset", "7", "--exporter", "torchscript", "-o", tmp_path)
    line = one_line_error(r, "stage 'capture' failed after: prepare: ", code=1)
    assert "upsample_nearest2d" in line
    assert r.stdout == ""
    native = capfd.readouterr()
    assert native.out == "" and native.err == ""
    assert not list(tmp_path.glob("*.onnx"))


def test_numerics_describe_what_the_options_did() -> None:
    from exporter.stages import STAGES

    prepare = next(s for s in STAGES if s.name == "prepare")
    assert "folded" in prepare.numerics(ExportOptions())
    assert prepare.numerics(ExportOptions(keep_bn=True)) == "none (BatchNorm kept)"
    capture = next(s for s in STAGES if s.name == "capture")
    assert "batch statistics" in capture.numerics(ExportOptions(training=True))


def test_native_output_is_captured_not_lost(capfd: pytest.CaptureFixture[str]) -> None:
    """What native code writes on file descriptor 1 during a capture is kept (the end of it), off the
    terminal; a failure carries it as a note, which --debug prints with the traceback."""
    import os
    import sys

    from exporter.stages.capture_attempts import NATIVE_OUTPUT_LIMIT, _native_stdout_captured

    with _native_stdout_captured() as native:
        os.write(1, b"graph(%x : Float(1, 3))\n")
    assert native["text"] == "graph(%x : Float(1, 3))\n"
    with pytest.raises(RuntimeError) as info, _native_stdout_captured() as native:
        os.write(1, b"x" * (10 * NATIVE_OUTPUT_LIMIT) + b"\nthe end\n")
        raise RuntimeError("export failed")
    assert native["text"].endswith("the end\n") and len(native["text"]) < NATIVE_OUTPUT_LIMIT + 100
    assert "bytes in all" in native["text"]
    if sys.version_info >= (3, 11):  # exception notes
        (note,) = info.value.__notes__
        assert note.startswith("native output of the exporter") and note.endswith("the end")
    with _native_stdout_captured() as native:
        pass
    assert native["text"] == ""
    assert capfd.readouterr().out == ""
