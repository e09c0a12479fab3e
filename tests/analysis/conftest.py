"""Fixtures for the analysis tests: loaded YOLOv5 models (shared per session), a small ResNet-style
block built in code, a CLI runner, and the bad MODEL arguments every command must reject."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from exporter.cli.main import cli


@pytest.fixture(scope="session")
def yolov5s() -> nn.Module:
    """yolov5s with realistic (calibrated, seeded) BatchNorm statistics, as ``load_model`` gives it."""
    from exporter.models import load_model

    return load_model("yolov5s").model


@pytest.fixture(scope="session")
def yolov5n() -> nn.Module:
    from exporter.models import load_model

    return load_model("yolov5n").model


class BasicBlock(nn.Module):
    """ResNet basic block with a projection shortcut, plus a conv whose BN is not its only user and a
    conv followed by ReLU then BN: neither of those two is a Conv+BN pair."""

    def __init__(self, c1: int = 3, c2: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = nn.Conv2d(c2, c2, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.down = nn.Sequential(nn.Conv2d(c1, c2, 1, 2, bias=True), nn.BatchNorm2d(c2))
        self.relu = nn.ReLU()
        self.shared = nn.Conv2d(c2, c2, 1)  # its output is used twice
        self.bn3 = nn.BatchNorm2d(c2)
        self.conv4 = nn.Conv2d(c2, c2, 1)  # conv -> ReLU -> BN
        self.bn4 = nn.BatchNorm2d(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        y = self.relu(y + self.down(x))
        s = self.shared(y)
        y = self.bn3(s) + s
        return self.bn4(self.relu(self.conv4(y)))


@pytest.fixture
def resnet_block() -> nn.Module:
    """A BasicBlock with seeded weights and real BatchNorm statistics, in eval mode."""
    from exporter.models.weights import calibrate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = BasicBlock()
    return calibrate(block, size=64)


@pytest.fixture
def invoke() -> Callable[..., Result]:
    """Run ``yexport ARGS`` in-process; stdout and stderr apart."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return run


@pytest.fixture(params=["missing-file", "bad-yaml", "unknown-builtin", "bad-module"])
def bad_model(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(MODEL argument, a word the one-line error must contain)."""
    if request.param == "missing-file":
        return str(tmp_path / "nope.yaml"), "nope.yaml"
    if request.param == "unknown-builtin":
        return "yolov5zz", "no such file or built-in model"
    p = tmp_path / "bad.yaml"
    if request.param == "bad-yaml":
        p.write_text("nc: 80\nbackbone: [[-1, 1, Conv, [64, 6, 2, 2]\n", encoding="utf-8")
        return str(p), "YAML syntax error"
    p.write_text("nc: 80\nanchors: [[10,13, 16,30, 33,23]]\nbackbone: [[-1, 1, Warp, [64]]]\n"
                 "head: [[[0], 1, Detect, [nc, anchors]]]\n", encoding="utf-8")
    return str(p), "unknown module 'Warp'"


@pytest.fixture
def one_line_error() -> Callable[[Result, str], None]:
    """Asserts exit 2, nothing on stdout, one ``yexport: error:`` line on stderr that contains a word."""

    def check(result: Result, needle: str) -> None:
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("yexport: error: ") and needle in lines[0], lines[0]

    return check
