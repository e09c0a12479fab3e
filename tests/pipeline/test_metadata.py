"""metadata stage: the YOLOv5 runtime keys (stride, names) beside the yexport.* keys, and the
graph-options / run-record split."""

from __future__ import annotations

import ast
import json
from types import SimpleNamespace

from exporter.identity import split_options
from exporter.stages.metadata import class_names, yolov5_props


def test_names_from_the_checkpoint_else_class_i() -> None:
    assert class_names(SimpleNamespace(names=["person", "bicycle"], nc=2)) == {0: "person", 1: "bicycle"}
    assert class_names(SimpleNamespace(names={1: "b", 0: "a"}, nc=2)) == {0: "a", 1: "b"}
    # a model built from a config names its classes by index only
    assert class_names(SimpleNamespace(names=["0", "1", "2"], nc=3)) == {0: "class0", 1: "class1", 2: "class2"}
    assert class_names(SimpleNamespace(nc=2)) == {0: "class0", 1: "class1"}
    assert class_names(SimpleNamespace()) is None


def test_yolov5_props_parse_as_detectmultibackend_does() -> None:
    import torch

    props = yolov5_props(SimpleNamespace(stride=torch.tensor([8.0, 16.0, 32.0]), names=["person", "it's"], nc=2))
    assert int(props["stride"]) == 32  # DetectMultiBackend: int(meta["stride"])
    assert ast.literal_eval(props["names"]) == {0: "person", 1: "it's"}  # ast.literal_eval(meta["names"])


def test_exported_metadata_keys(tmp_path) -> None:
    from exporter.api import export
    from exporter.graph.load import load_onnx

    r = export("yolov5n", out_dir=tmp_path, img=(64, 64), check=False, atol=0.01)[0]
    meta = {p.key: p.value for p in load_onnx(r.path).metadata_props}
    assert meta["stride"] == "32"
    names = ast.literal_eval(meta["names"])
    assert names[0] == "class0" and len(names) == 80
    graph = json.loads(meta["yexport.graph_options"])
    run = json.loads(meta["yexport.run"])
    assert graph["img"] == [64, 64] and "atol" not in graph
    assert run["atol"] == 0.01 and run["check"] is False and "keep_bn" not in run
    assert graph == json.loads(json.dumps(split_options(r.options.describe())[0]))
    assert "yexport.options" not in meta
