"""A parity failure names the first layer whose error stands out from its own fp32 noise."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper

from exporter.api import export
from exporter.models import load_model
from exporter.options import ExportOptions
from exporter.parity import check_parity
from exporter.parity.divergence import layer_outputs


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    source = load_model("yolov5n")
    out = tmp_path_factory.mktemp("div")
    result = export(source, out_dir=out, options=ExportOptions(img=(256, 256), check=False))[0]
    return source, onnx.load(str(result.path))


def _corrupt_layer(proto: onnx.ModelProto, layer: int) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    conv = next(n for n in model.graph.node if n.name.startswith(f"/model.{layer}/") and n.op_type == "Conv")
    w = next(i for i in model.graph.initializer if i.name == conv.input[1])
    a = numpy_helper.to_array(w).copy()
    a[0] *= 1.1
    w.CopyFrom(numpy_helper.from_array(a, w.name))
    return model


def test_every_layer_but_detect_has_one_output_tensor(exported) -> None:
    _, proto = exported
    assert sorted(layer_outputs(proto)) == list(range(24))  # Detect (24) feeds graph outputs only


@pytest.mark.parametrize("layer", [pytest.param(6, marks=pytest.mark.slow), 13])
def test_corrupted_layer_is_named(exported, layer: int) -> None:
    source, proto = exported
    report = check_parity(_corrupt_layer(proto, layer), source.model)
    assert not report
    cpu = report.providers[0]
    assert cpu.divergence.startswith(f"first diverging layer: {layer} ("), cpu.divergence
    assert "first diverging layer" in report.format()


def test_passing_report_names_no_layer(exported) -> None:
    source, proto = exported
    report = check_parity(proto, source.model)
    assert report
    assert report.providers[0].divergence == ""


def test_wrong_model_is_suspected_not_blamed_on_a_layer(exported) -> None:
    _, proto = exported
    report = check_parity(proto, load_model("yolov5s-v5.0").model)
    assert not report
    assert "is this the model the file was exported from?" in report.providers[0].divergence


def test_shapes_that_do_not_fit_a_static_input_are_an_input_error(exported) -> None:
    from exporter.errors import InputError

    source, proto = exported
    with pytest.raises(InputError, match=r"input 1x3x128x128 does not fit the file's input \[1, 3, 256, 256\]"):
        check_parity(proto, source.model, shapes=[(1, 3, 128, 128)])
