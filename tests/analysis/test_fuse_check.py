"""Conv+BN fusion check: yolov5s acceptance figures, generic modules via torch.fx, a broken fusion is
caught, CLI exit codes and output."""

from __future__ import annotations

import json
from copy import deepcopy

import pytest
import torch
from torch import nn

from exporter.analysis.fuse_check import DEFAULT_THRESHOLD, compare_outputs, find_conv_bn_pairs, fuse_check
from exporter.models import fuse as fuse_module
from exporter.models.common import BottleneckCSP, Conv


@pytest.mark.slow
def test_yolov5s_acceptance(yolov5s: nn.Module) -> None:
    report = fuse_check(yolov5s, 640)
    n_conv_bn = sum(1 for m in yolov5s.modules() if isinstance(m, Conv) and hasattr(m, "bn"))
    assert report.method == "yolov5 Conv" and len(report.pairs) == n_conv_bn == 57
    assert all(p.rel_error < 1e-5 for p in report.pairs), report.worst
    assert all(p.rel_error_torch < 1e-5 for p in report.pairs)
    # our fusion equals torch's: same outputs and same fused weights to within 1e-6 (relative)
    assert max(p.fusions_rel_diff for p in report.pairs) < 1e-6
    assert max(p.weights_rel_diff for p in report.pairs) < 1e-6
    m = report.model
    assert m is not None and m.fused_with == "Model.fuse" and m.outputs == 4
    assert m.within_tolerance and m.tolerance_used <= 1.0
    assert report and report.to_dict()["passed"] is True
    # the pairs ran on their real inputs
    assert report.pairs[0].input_shape == [1, 3, 640, 640]
    assert report.pairs[1].input_shape == [1, 32, 320, 320]


def test_callers_model_is_untouched(yolov5n: nn.Module) -> None:
    before = {k: v.clone() for k, v in yolov5n.state_dict().items()}
    training = yolov5n.training
    fuse_check(yolov5n, 64)
    assert yolov5n.training == training
    assert all(hasattr(m, "bn") for m in yolov5n.modules() if isinstance(m, Conv))
    after = yolov5n.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_resnet_block_pairs_found_with_fx(resnet_block: nn.Module) -> None:
    pairs, method = find_conv_bn_pairs(resnet_block)
    assert method == "torch.fx"
    # shared (two users) and conv4 (ReLU between conv and BN) are not pairs
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2"), ("down.0", "down.1")]
    report = fuse_check(resnet_block, 32)
    assert report, report.to_dict()
    assert [p.conv for p in report.pairs] == ["conv1", "conv2", "down.0"]
    assert [p.input_shape for p in report.pairs] == [[1, 3, 32, 32], [1, 8, 16, 16], [1, 3, 32, 32]]
    assert all(p.rel_error < DEFAULT_THRESHOLD and p.fusions_rel_diff < 1e-6 for p in report.pairs)
    assert report.model is not None and report.model.fused_with == "module replacement"
    assert report.model.within_tolerance and report.model.max_abs < 1e-4
    assert isinstance(resnet_block.bn1, nn.BatchNorm2d)  # fused on a copy


def test_generic_module_with_explicit_inputs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    report = fuse_check(model, inputs=torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert [(p.conv, p.bn) for p in report.pairs] == [("0", "1")] and report


def test_bottleneckcsp_standalone_bn_is_not_a_pair() -> None:
    block = nn.Sequential(BottleneckCSP(16, 16, n=1))
    pairs, method = find_conv_bn_pairs(block)
    assert method == "yolov5 Conv"
    assert ("0.bn" not in {bn for _, bn in pairs}) and len(pairs) == 4  # cv1, cv4, m.0.cv1, m.0.cv2
    assert {c for c, _ in pairs} == {"0.cv1.conv", "0.cv4.conv", "0.m.0.cv1.conv", "0.m.0.cv2.conv"}


def test_untraceable_generic_module_is_a_one_line_error() -> None:
    from exporter.errors import ModelError

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="torch.fx could not trace Branchy") as exc:
        find_conv_bn_pairs(Branchy())
    assert "\n" not in str(exc.value)


def test_a_wrong_fusion_is_caught(resnet_block: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    original = fuse_module.fuse_conv_bn

    def ignores_mean(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        bn = deepcopy(bn)
        bn.running_mean.zero_()
        return original(conv, bn)

    monkeypatch.setattr(fuse_module, "fuse_conv_bn", ignores_mean)
    report = fuse_check(resnet_block, 32)
    assert not report and not any(p.passed for p in report.pairs)
    assert all(p.rel_error > 1e-3 and p.rel_error_torch < 1e-5 for p in report.pairs)
    assert report.model is not None and not report.model.within_tolerance


def test_compare_outputs_tolerance() -> None:
    ref = (torch.tensor([1000.0, 0.0]), [torch.tensor([1.0])])
    ok = compare_outputs(ref, (torch.tensor([1000.5, 0.0009]), [torch.tensor([1.0015])]))
    assert ok["within_tolerance"] and ok["outputs"] == 2 and ok["max_abs"] == pytest.approx(0.5)
    bad = compare_outputs(ref, (torch.tensor([1000.0, 0.0011]), [torch.tensor([1.0])]))
    assert not bad["within_tolerance"] and bad["tolerance_used"] == pytest.approx(1.1, rel=1e-3)


def test_cli_text_and_exit_codes(invoke) -> None:
    r = invoke("fuse-check", "yolov5n", "--img", "64")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2].split()[0] == "model.0.conv"
    assert any(line.startswith("yolov5n: 57 Conv+BN pairs") for line in lines)
    assert "within tolerance" in r.stdout and lines[-1] == "PASS"
    r = invoke("fuse-check", "yolov5n", "--img", "64", "--threshold", "0")
    assert r.exit_code == 1 and r.stdout.splitlines()[-1] == "FAIL"


def test_cli_json(invoke) -> None:
    r = invoke("fuse-check", "yolov5n", "--img", "64,96", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["passed"] is True and d["img"] == [64, 96] and d["n_pairs"] == len(d["pairs"]) == 57
    assert d["model"]["name"] == "yolov5n" and d["threshold"] == DEFAULT_THRESHOLD
    assert d["max_rel_error"] < 1e-5 and d["max_fusions_rel_diff"] < 1e-6
    assert d["whole_model"]["within_tolerance"] is True
    assert set(d["pairs"][0]) >= {"conv", "bn", "input_shape", "rel_error", "rel_error_torch", "fusions_max_diff"}


def test_cli_bad_model(invoke, bad_model, one_line_error) -> None:
    arg, needle = bad_model
    one_line_error(invoke("fuse-check", arg), needle)


def test_cli_default_threshold_matches_library() -> None:
    from exporter.cli import fuse_check as command

    assert command.DEFAULT_THRESHOLD == DEFAULT_THRESHOLD


TWO_INPUTS = '''
from torch import nn


class Net(nn.Module):
    """A one-channel input and a per-sample scale: no --img image fits it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x, scale):
        return self.bn(self.conv(x)) * scale


def build():
    return Net()
'''


def test_cli_input_shape_for_a_factory_model(invoke, tmp_path) -> None:
    path = tmp_path / "twoinputs.py"
    path.write_text(TWO_INPUTS)
    r = invoke("fuse-check", f"{path}:build", "--input-shape", "2,1,16,16", "--input-shape", "2,1,1,1", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["inputs"] == [[2, 1, 16, 16], [2, 1, 1, 1]] and d["method"] == "torch.fx"
    assert [(p["conv"], p["bn"], p["input_shape"]) for p in d["pairs"]] == [("conv", "bn", [2, 1, 16, 16])]
    assert d["passed"] is True and d["whole_model"]["outputs"] == 1
    r = invoke("fuse-check", f"{path}:build", "--input-shape", "2,1,16,16", "--input-shape", "2,1,1,1")
    assert r.exit_code == 0 and "seeded input 2x1x16x16, 2x1x1x1" in r.stdout, r.output
    # without it the seeded 3-channel image does not fit the model, and a YOLO model takes --img instead
    r = invoke("fuse-check", f"{path}:build", "--img", "32")
    assert r.exit_code == 2 and "forward failed on the seeded input 1x3x32x32" in r.output
    assert "--input-shape" in r.output.strip().splitlines()[-1]
    r = invoke("fuse-check", "yolov5n", "--input-shape", "1,3,64,64")
    assert r.exit_code == 2 and "--input-shape is for models other than YOLO" in r.output
