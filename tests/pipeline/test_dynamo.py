"""The dynamo exporter: the same BatchNorm promises as TorchScript, its refusals, and an opset it
cannot give reported as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline.conftest import (
    Exported,
    bn_modes,
    bn_nodes,
    check_written,
    metadata,
    one_line_error,
    yexport,
)


def capture_record(e: Exported) -> dict:
    return next(s for s in e.manifest["stages"] if s["name"] == "capture")


@pytest.mark.slow
def test_dynamo_small_model_fused(tmp_path: Path) -> None:
    r = yexport("export", "yolov5n", "--img", "320", "--exporter", "dynamo", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # the exporter's warnings and prints are kept out of the user's terminal
    e = Exported.read(tmp_path / "yolov5n.onnx", r)
    check_written(e)
    assert capture_record(e)["changed"].startswith("dynamo")
    assert metadata(e.model)["yexport.exporter"] == "dynamo" and e.manifest["options"]["exporter"] == "dynamo"
    assert e.ops.get("BatchNormalization", 0) == 0
    assert e.parity["passed"] is True
    # no stack traces with local paths left in the node metadata
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in e.model.graph.node for p in n.metadata_props)


def test_dynamo_refuses_training_mode(tmp_path: Path) -> None:
    line = one_line_error(yexport("export", "yolov5n", "--training-mode", "--exporter", "dynamo", "-o", tmp_path),
                          "--training-mode needs the TorchScript exporter")
    assert "ignores training mode" in line
    assert not tmp_path.joinpath("yolov5n.onnx").exists()


@pytest.mark.slow
def test_opset_the_exporter_cannot_give(tmp_path: Path) -> None:
    """dynamo builds opset 18 and cannot convert this graph down to 7: the checker stage says so, in one
    line (the converter's own warnings and traceback are not shown)."""
    r = yexport("export", "yolov5n", "--img", "256", "--exporter", "dynamo", "--opset", "7", "-o", tmp_path)
    line = one_line_error(r, "stage 'checker' failed after: prepare, capture, tidy, infer_shapes, metadata: ", code=1)
    assert "the graph has opset 18 but --opset 7 was asked for" in line
    assert "choose an opset the exporter supports" in line
    assert r.stdout == ""
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_dynamo_yolov5s_keep_bn_and_fused(tmp_path: Path) -> None:
    r = yexport("export", "yolov5s", "--exporter", "dynamo", "--variants", "keep-bn,fused", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    keep = Exported.read(tmp_path / "yolov5s-keep-bn.onnx")
    fused = Exported.read(tmp_path / "yolov5s-fused.onnx")
    for e in (keep, fused):
        check_written(e)
        assert capture_record(e)["changed"].startswith("dynamo")
        assert e.parity["passed"] is True
        assert e.parity["providers"][0]["cases"][0]["shape"] == [1, 3, 640, 640]
    assert len(bn_nodes(keep.model)) == 57 and bn_modes(keep.model) == {0}
    assert keep.ops.get("Identity", 0) == 0
    assert fused.ops.get("BatchNormalization", 0) == 0
