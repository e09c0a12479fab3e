"""What prepare and the checker say about BatchNorm on models other than YOLOv5 (no fuse() method): the
records and notes must match what is in the graph."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import exporter


class Untraceable(nn.Module):
    """A Conv -> BN whose parent forward torch.fx cannot trace (data-dependent branch): prepare cannot see
    the conv before the BN, the TorchScript exporter's constant folding still folds it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:
            return torch.relu(self.bn(self.conv(x)))
        return x


def records(model: nn.Module, tmp_path: Path, **kw: object) -> tuple[dict[str, str], tuple[str, ...]]:
    [r] = exporter.export(model.eval(), out_dir=tmp_path, name="m", img=(32, 32), check=False, **kw)
    return {x.name: x.changed for x in r.records}, r.notes


def test_no_batchnorm_is_not_reported_as_zero_fusions(tmp_path: Path) -> None:
    recs, _ = records(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), tmp_path)
    assert recs["prepare"] == "no BatchNorm2d to fuse"


def test_plain_sequential_conv_bn_relu(tmp_path: Path) -> None:
    recs, notes = records(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()), tmp_path)
    assert recs["prepare"] == "fused 1 Conv+BN pairs"
    assert "; no BatchNormalization;" in recs["checker"] and not notes


def test_batchnorms_the_exporter_folds_are_reported_as_folded(tmp_path: Path) -> None:
    recs, notes = records(Untraceable(), tmp_path)
    assert "kept 1 BatchNorm2d" in recs["prepare"]
    assert ("; no BatchNormalization (the exporter folded 1 of the 1 BatchNorm2d prepare could not fold);"
            in recs["checker"])
    assert any("the exporter folded 1 BatchNorm2d" in n and "none remain" in n for n in notes)
    assert not any("they stay as BatchNormalization" in n for n in notes)


def test_a_batchnorm_after_relu_is_kept_and_said_so(tmp_path: Path) -> None:
    recs, notes = records(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)), tmp_path)
    assert "; 1 BatchNormalization;" in recs["checker"]
    assert any("they stay as BatchNormalization(training_mode=0) in the graph" in n for n in notes)
