"""Pruning view: residual-coupled and Detect convs are not prunable, C3 cv2/cv3 and SPPF are; gamma
statistics, sparsity, L1 unstructured pruning, saving and loading a pruned model."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from torch import nn

from exporter.analysis.prune import (
    DETECT,
    PRUNABLE,
    RESIDUAL,
    l1_unstructured,
    prune_report,
    residual_coupled,
    weight_sparsity,
)
from exporter.errors import ConfigError

BACKBONE_C3 = (2, 4, 6, 8)
HEAD_C3 = (13, 17, 20, 23)


def test_yolov5s_acceptance(yolov5s: nn.Module) -> None:
    report = prune_report(yolov5s)
    by_name = {c.name: c for c in report.convs}
    # backbone C3s: Bottlenecks with shortcut are tied to the residual add on cv2 ...
    for i in BACKBONE_C3:
        c3 = yolov5s.model[i]
        assert all(b.add for b in c3.m)
        for j in range(len(c3.m)):
            c = by_name[f"model.{i}.m.{j}.cv2"]
            assert not c.prunable and c.reason == RESIDUAL and c.role == "Bottleneck.cv2"
            assert by_name[f"model.{i}.m.{j}.cv1"].prunable
        # ... and so is the conv feeding the identity branch
        assert not by_name[f"model.{i}.cv1"].prunable
        assert "identity branch of a residual add" in by_name[f"model.{i}.cv1"].reason
    # C3 cv2/cv3 everywhere, the whole head C3s (Bottlenecks without shortcut), SPPF: prunable
    for i in BACKBONE_C3 + HEAD_C3:
        for part in ("cv2", "cv3"):
            c = by_name[f"model.{i}.{part}"]
            assert c.prunable and c.reason == PRUNABLE and c.role == f"C3.{part}"
    for i in HEAD_C3:
        assert not any(b.add for b in yolov5s.model[i].m)
        assert all(c.prunable for n, c in by_name.items() if n.startswith(f"model.{i}."))
    assert by_name["model.9.cv1"].prunable and by_name["model.9.cv2"].prunable
    assert by_name["model.9.cv1"].role == "SPPF.cv1"
    # Detect convs: no BatchNorm
    for k in range(3):
        c = by_name[f"model.24.m.{k}"]
        assert not c.prunable and c.reason == DETECT and c.role == f"Detect.m.{k}" and c.gamma_min is None
        assert c.out_channels == 255
    # plain convs between modules are prunable
    assert by_name["model.0"].prunable and by_name["model.0"].role == "Conv"
    s = report.summary()
    assert s["convs"] == 60 and s["prunable"] == 60 - 3 - len(BACKBONE_C3) - (1 + 2 + 3 + 1)  # 46
    # realistic gammas: none near zero, no zero weights
    assert all(c.gamma_min > 0.1 and c.gamma_below == 0 for c in report.prunable)
    assert report.sparsity == 0.0 and s["weights"] == sum(
        m.weight.numel() for m in yolov5s.modules() if isinstance(m, nn.Conv2d))


def test_gamma_statistics_and_threshold(yolov5n: nn.Module) -> None:
    model = deepcopy(yolov5n)
    bn = model.model[17].cv3.bn
    with torch.no_grad():
        bn.weight[:16] = 0.001
        bn.weight[16:20] = -0.005  # |gamma| counts
    report = prune_report(model, threshold=0.01)
    c = next(c for c in report.convs if c.name == "model.17.cv3")
    assert c.channels_below == 20 and c.gamma_below == pytest.approx(20 / bn.num_features)
    assert c.gamma_min == pytest.approx(0.001) and report.summary()["channels_below_threshold"] == 20
    assert prune_report(model, threshold=0.002).summary()["channels_below_threshold"] == 16
    with pytest.raises(ConfigError):
        prune_report(model, threshold=-1)


def test_other_generations(yolov5n: nn.Module) -> None:
    from exporter.models import build_model

    csp = prune_report(build_model("yolov5s-csp"))
    plain = [c for c in csp.convs if c.role in ("BottleneckCSP.cv2", "BottleneckCSP.cv3")]
    assert plain and all(not c.prunable and "without its own BatchNorm" in c.reason for c in plain)
    assert not next(c for c in csp.convs if c.name == "model.2.cv1").prunable
    v5 = prune_report(build_model("yolov5s-v5.0"))
    assert next(c for c in v5.convs if c.name == "model.0.conv").role == "Focus.conv"
    assert all(c.prunable for c in v5.convs if c.role.startswith("SPP."))
    fused = prune_report(deepcopy(yolov5n).fuse())
    assert not fused.prunable and all("no BatchNorm" in c.reason for c in fused.convs)


def test_top_level_residual_bottleneck_couples_its_input() -> None:
    from exporter.models import build_model

    cfg = {"nc": 1, "anchors": [[10, 13, 16, 30, 33, 23]],
           "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
                        [-1, 2, "Bottleneck", [16]]],
           "head": [[[2], 1, "Detect", ["nc", "anchors"]]]}
    coupled = residual_coupled(build_model(cfg))
    assert set(coupled) == {"model.0", "model.2.0.cv2", "model.2.1.cv2"}  # through the Upsample


def test_l1_unstructured(yolov5n: nn.Module) -> None:
    pruned = l1_unstructured(yolov5n, 0.3)
    assert weight_sparsity(yolov5n) == 0.0  # the original is untouched
    assert weight_sparsity(pruned) == pytest.approx(0.3, abs=1e-3)
    conv = pruned.model[2].cv3.conv
    assert not hasattr(conv, "weight_orig") and not list(conv._forward_pre_hooks.values())  # prune.remove ran
    assert prune_report(pruned).sparsity == pytest.approx(weight_sparsity(pruned))
    with pytest.raises(ConfigError):
        l1_unstructured(yolov5n, 1.5)


def test_cli_text(invoke) -> None:
    r = invoke("prune-report", "yolov5n", "--l1-unstructured", "0.25")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "model.2.m.0.cv2" in out and RESIDUAL in out and DETECT in out
    assert "yolov5n: 46 of 60 convs channel-prunable" in out
    assert "weight sparsity: 0.00%" in out and "weight sparsity 25.00%" in out


def test_cli_json(invoke) -> None:
    r = invoke("prune-report", "yolov5n", "--json", "--threshold", "0.6")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["model"]["name"] == "yolov5n" and d["threshold"] == 0.6 and d["l1_unstructured"] is None
    assert d["convs"] == len(d["layers"]) == 60 and d["channels_below_threshold"] > 0
    row = next(x for x in d["layers"] if x["name"] == "model.9.cv2")
    assert row["prunable"] is True and row["role"] == "SPPF.cv2" and row["sparsity"] == 0.0


def test_cli_save_needs_pruning(invoke, one_line_error, tmp_path: Path) -> None:
    one_line_error(invoke("prune-report", "yolov5n", "--save", str(tmp_path / "p.pt")), "--l1-unstructured")


@pytest.fixture(scope="module")
def saved_pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """yolov5n pruned 40% by ``yexport prune-report --l1-unstructured 0.4 --save``: (file, its JSON report)."""
    pytest.importorskip("exporter.models.checkpoint", reason="checkpoint saving is not available")
    from click.testing import CliRunner

    from exporter.cli.main import cli

    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    r = CliRunner().invoke(cli, ["prune-report", "yolov5n", "--l1-unstructured", "0.4", "--save", str(out),
                                 "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)["l1_unstructured"]


def test_saved_pruned_model_loads_back(saved_pruned: tuple[Path, dict], invoke) -> None:
    from exporter.models import load_model

    out, d = saved_pruned
    assert d["saved"] == str(out) and d["sparsity_after"] == pytest.approx(0.4, abs=1e-3)
    loaded = load_model(str(out)).model
    assert weight_sparsity(loaded) == pytest.approx(d["sparsity_after"], abs=1e-9)
    r = invoke("prune-report", str(out), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["sparsity"] == pytest.approx(d["sparsity_after"], abs=1e-9)


def test_exported_onnx_keeps_the_zeros(saved_pruned: tuple[Path, dict], tmp_path: Path) -> None:
    api = pytest.importorskip("exporter.api", reason="the export pipeline is not available")
    import onnx
    from onnx import numpy_helper

    from exporter.models import load_model

    out, d = saved_pruned
    (result,) = api.export(str(out), out_dir=tmp_path, img=(64, 64))  # fused: 0 * gamma/sigma stays 0
    assert result.ok, result.failures
    graph = onnx.load(result.path).graph
    inits = {i.name: i for i in graph.initializer}
    weights = [numpy_helper.to_array(inits[n.input[1]]) for n in graph.node if n.op_type == "Conv"]
    zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.size for w in weights)
    assert total == sum(m.weight.numel() for m in load_model(str(out)).model.modules() if isinstance(m, nn.Conv2d))
    assert zeros / total == pytest.approx(d["sparsity_after"], abs=1e-9)


def test_cli_bad_model(invoke, bad_model, one_line_error) -> None:
    arg, needle = bad_model
    one_line_error(invoke("prune-report", arg), needle)


def test_cli_default_threshold_matches_library() -> None:
    from exporter.analysis.prune import DEFAULT_GAMMA_THRESHOLD
    from exporter.cli import prune_report as command

    assert command.DEFAULT_THRESHOLD == DEFAULT_GAMMA_THRESHOLD
