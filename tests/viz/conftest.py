"""A small YOLO-like network exported to ONNX for the visual-review tests.

Layout of ``Toy.model`` (a Sequential, like YOLOv5's): 0-3 Conv (Conv2d+BatchNorm2d+SiLU),
4 Upsample(nearest, x2), 5 Concat([-1, 2]), 6 Conv, 7 Detect([6, 3]) with view/permute heads.
Exported with BatchNorm kept there are 5 BatchNormalization nodes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

BN_COUNT = 5
LAYERS = ["Conv", "Conv", "Conv", "Conv", "Upsample", "Concat", "Conv", "Detect"]


def _toy():
    import torch
    from torch import nn

    class Conv(nn.Module):
        def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Concat(nn.Module):
        def forward(self, xs):
            return torch.cat(xs, 1)

    class Detect(nn.Module):
        def __init__(self, ch: list[int], no: int = 6, na: int = 3) -> None:
            super().__init__()
            self.no, self.na = no, na
            self.m = nn.ModuleList(nn.Conv2d(c, no * na, 1) for c in ch)

        def forward(self, xs):
            out = []
            for i, x in enumerate(xs):
                x = self.m[i](x)
                bs, _, ny, nx = x.shape
                out.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
            return out

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), Conv(16, 16, 1), Conv(16, 32, 3, 2),
                      nn.Upsample(None, 2, "nearest"), Concat(), Conv(48, 16, 1), Detect([16, 32])]
            self.froms = [-1, -1, -1, -1, -1, [-1, 2], -1, [6, 3]]
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            y = []
            for m, f in zip(self.model, self.froms, strict=True):
                if f != -1:
                    x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
                x = m(x)
                y.append(x)
            return x

    torch.manual_seed(0)
    model = Toy().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model, torch.zeros(1, 3, 64, 64)


def _export_torchscript(path: Path, keep_bn: bool) -> Path:
    import torch

    model, x = _toy()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and folding advice
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=18, training=mode,
                          input_names=["images"], do_constant_folding=True)
    return path


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchScript export, BatchNorm kept (node names like /model.2/conv/Conv)."""
    pytest.importorskip("torch")
    return _export_torchscript(tmp_path_factory.mktemp("toy") / "toy.onnx", keep_bn=True)


@pytest.fixture(scope="session")
def toy_fused_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TorchScript export with BatchNorm folded into the convolutions."""
    pytest.importorskip("torch")
    return _export_torchscript(tmp_path_factory.mktemp("toy_fused") / "toy_fused.onnx", keep_bn=False)


@pytest.fixture(scope="session")
def toy_dynamo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dynamo export, BatchNorm kept (scopes in node metadata_props)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    model, x = _toy()
    path = tmp_path_factory.mktemp("toy_dynamo") / "toy_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, optimize=False,
                          external_data=False, verbose=False)
    return path
