"""Safe checkpoint loading: official YOLOv5 layouts, refusal of foreign code, trusted mode, state_dicts,
yexport's own format, and one-line errors for files that are not checkpoints."""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import sys
import zipfile
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from exporter.cli.main import cli
from exporter.errors import CheckpointError, InputError, YexportError
from exporter.models import build_model, load_model
from exporter.models.checkpoint import FORMAT, Inert, load_checkpoint, safe_load, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "fixtures" / "models"
X = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))

def outputs(model: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def fp16_reference(model: nn.Module) -> nn.Module:
    """What an fp16 checkpoint of ``model`` holds, back in fp32."""
    return deepcopy(model).half().float().eval()


def assert_one_line_error(exc: BaseException, *needles: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Seeded non-trivial BatchNorm parameters and statistics (cheaper than a calibration pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def yolov5n() -> nn.Module:
    return randomize_bn(build_model("yolov5n", seed=0), seed=0)


@pytest.fixture(scope="module")
def v5n_pt(yolov5n: nn.Module, yolov5_official, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return yolov5_official.write(yolov5n, tmp_path_factory.mktemp("ckpt") / "yolov5n.pt")


# ------------------------------------------------------------------------------------ official layout


def _pickle_globals(path: Path) -> set[str]:
    import pickletools

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    out = io.StringIO()
    pickletools.dis(data, out)
    return {line.split("GLOBAL", 1)[1].strip().strip("'").replace(" ", ".")
            for line in out.getvalue().splitlines() if " GLOBAL " in line}


def test_official_layout_names_the_official_classes(v5n_pt: Path) -> None:
    names = _pickle_globals(v5n_pt)
    assert {"models.yolo.DetectionModel", "models.yolo.Detect", "models.common.Conv", "models.common.C3",
            "models.common.SPPF", "torch._utils._rebuild_tensor_v2", "torch.HalfStorage",
            "collections.OrderedDict", "__builtin__.set"} <= names
    assert not any(n.startswith("exporter.") for n in names)


def test_official_v6_checkpoint_loads_without_the_yolov5_source(yolov5n: nn.Module, v5n_pt: Path) -> None:
    model, info = load_checkpoint(v5n_pt)
    assert "models" not in sys.modules and "models.yolo" not in sys.modules
    assert info["kind"] == "checkpoint" and info["format"] == "yolov5-official"
    assert info["class"] == "models.yolo.DetectionModel" and info["generation"] == "v6+"
    assert info["fp16"] is True and info["epoch"] == -1
    assert info["names"] == list(yolov5n.names) == model.names
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert torch.equal(model.detect.anchors, yolov5n.detect.anchors)
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    ref = outputs(fp16_reference(yolov5n))
    assert torch.equal(outputs(model), ref)
    assert not torch.equal(ref, outputs(deepcopy(yolov5n)))  # fp16 rounding is visible, so the test can fail


def test_official_v50_checkpoint_loads(yolov5_official, tmp_path: Path) -> None:
    m = randomize_bn(build_model("yolov5s-v5.0", seed=0), seed=0)
    path = yolov5_official.write(m, tmp_path / "yolov5s.pt", "v5.0")
    assert "models.common.Focus" in _pickle_globals(path) and "models.yolo.Model" in _pickle_globals(path)
    model, info = load_checkpoint(path)
    assert info["class"] == "models.yolo.Model" and info["generation"] == "v5.0"
    assert model.generation == "v5.0"
    assert torch.equal(outputs(model), outputs(fp16_reference(m)))


def test_legacy_format_official_checkpoint_loads(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    path = yolov5_official.write(yolov5n, tmp_path / "legacy.pt", legacy=True)
    assert not zipfile.is_zipfile(path)
    model, info = load_checkpoint(path)
    assert info["format"] == "yolov5-official"
    assert torch.equal(outputs(model), outputs(fp16_reference(yolov5n)))


def test_ema_is_preferred_over_model(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    other = randomize_bn(deepcopy(yolov5n), seed=1)
    path = yolov5_official.write(other, tmp_path / "ema.pt", ema=yolov5n)
    model, info = load_checkpoint(path)
    assert info["ema"] is True
    assert torch.equal(outputs(model), outputs(fp16_reference(yolov5n)))


def test_load_model_and_info_cli_on_an_official_checkpoint(v5n_pt: Path) -> None:
    lm = load_model(v5n_pt)
    assert lm.kind == "checkpoint" and lm.name == "yolov5n" and len(lm.sha256) == 64
    assert "kind" not in lm.extra and lm.extra["format"] == "yolov5-official"
    r = CliRunner().invoke(cli, ["info", str(v5n_pt), "--img", "64"])
    assert r.exit_code == 0, r.output
    assert "1,872,157 parameters" in r.stdout and "checkpoint" in r.stdout


def test_nc_override_keeps_backbone_and_resets_head(yolov5n: nn.Module, v5n_pt: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model, info = load_checkpoint(v5n_pt, nc=3)
    assert model.nc == 3 and model.detect.m[0].out_channels == 3 * 8
    assert info["names"] == ["0", "1", "2"]
    assert "--nc 3" in capsys.readouterr().err
    ref = fp16_reference(yolov5n)
    assert torch.equal(model.model[0].conv.weight, ref.model[0].conv.weight)


def test_fused_official_checkpoint_loads(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    fused = deepcopy(yolov5n).fuse()
    path = yolov5_official.write(fused, tmp_path / "fused.pt")
    model, info = load_checkpoint(path)
    assert info["fused"] is True
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.equal(outputs(model), outputs(fp16_reference(fused)))


def test_evolved_anchors_come_from_the_checkpoint(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    m = deepcopy(yolov5n)
    m.yaml = {**m.yaml, "anchors": 3}  # anchors computed at training time (autoanchor)
    with torch.no_grad():
        m.detect.anchors.mul_(1.25)
    model, _ = load_checkpoint(yolov5_official.write(m, tmp_path / "auto.pt"))
    assert torch.equal(model.detect.anchors, m.detect.anchors.half().float())
    assert torch.equal(outputs(model), outputs(fp16_reference(m)))


def test_checkpoint_whose_weights_do_not_fit_its_config(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    m = deepcopy(yolov5n)
    m.yaml = {**m.yaml, "width_multiple": 0.5}  # the yolov5s width
    path = yolov5_official.write(m, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "shape mismatch", "model.0.conv.weight")


def test_checkpoint_with_other_layer_types_is_refused(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    m = deepcopy(yolov5n)
    m.model[0].act = nn.LeakyReLU(0.1)
    path = yolov5_official.write(m, tmp_path / "leaky.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "model.0.act is LeakyReLU in the checkpoint but SiLU")


# ------------------------------------------------------------------------------------ malicious files


class _System:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))

    def __deepcopy__(self, memo: dict) -> _System:
        return self  # deepcopy would otherwise run the payload


class _Open:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


class _Touch:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path(self.target).touch, ())


@pytest.mark.parametrize(("payload", "global_name"), [
    (_System, "posix.system" if os.name == "posix" else "nt.system"),
    (_Open, "io.open"),
    (_Touch, "__builtin__.getattr"),
])
def test_malicious_checkpoint_is_refused_by_name(payload, global_name: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": -1, "model": payload(target), "ema": None}, evil)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    assert_one_line_error(e.value, f"refusing to unpickle global '{global_name}'", "--trust-checkpoint")
    assert not target.exists()


def test_malicious_legacy_format_checkpoint_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _System(target)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    assert_one_line_error(e.value, "refusing to unpickle global 'posix.system'")
    assert not target.exists()


def test_malicious_object_inside_a_model_is_refused(yolov5_official, yolov5n: nn.Module, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    m = deepcopy(yolov5n)
    m.model[3].hook = _System(target)  # deep inside an otherwise genuine model object
    path = yolov5_official.write(m, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "refusing to unpickle global 'posix.system'")
    assert not target.exists()


def test_cli_refuses_a_malicious_checkpoint_in_one_line(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _System(target)}, evil)
    r = CliRunner().invoke(cli, ["info", str(evil)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yexport: error: "), r.stderr
    assert "refusing to unpickle global 'posix.system'" in lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    assert not target.exists()


def test_unsupported_official_class_is_named(yolov5_official, tmp_path: Path) -> None:
    path = tmp_path / "seg.pt"
    with yolov5_official.package():
        yolo = sys.modules["models.yolo"]
        seg = type("SegmentationModel", (nn.Module,), {"__module__": "models.yolo", "__qualname__": "SegmentationModel"})
        yolo.SegmentationModel = seg
        torch.save({"model": seg()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "'models.yolo.SegmentationModel'", "cannot rebuild")


def test_safe_load_returns_inert_stand_ins(v5n_pt: Path) -> None:
    ckpt = safe_load(v5n_pt)
    m = ckpt["model"]
    assert isinstance(m, Inert) and not isinstance(m, nn.Module)
    assert m.pickled_as == "models.yolo.DetectionModel" and isinstance(m.yaml, dict)
    conv = m._modules["model"]._modules["0"]
    assert conv.pickled_as == "models.common.Conv"
    assert conv._modules["conv"]._parameters["weight"].dtype == torch.float16


# ------------------------------------------------------------------------------------ trusted mode


def test_trusted_load_of_a_plain_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    path = tmp_path / "net.pt"
    torch.save(net, path)
    model, info = load_checkpoint(path, trust=True)
    assert isinstance(model, nn.Sequential) and info["format"] == "torch-module"
    assert "runs any code" in capsys.readouterr().err
    with torch.no_grad():
        assert torch.equal(model(X), net(X))
    with pytest.raises(CheckpointError) as e:  # safe mode reads it, but cannot rebuild it
        load_checkpoint(path)
    assert_one_line_error(e.value, "no YOLOv5 config", "--trust-checkpoint")


def test_trusted_official_load_needs_the_yolov5_source(yolov5_official, yolov5n: nn.Module, v5n_pt: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(v5n_pt, trust=True)
    assert_one_line_error(e.value, "PYTHONPATH", "models")
    with yolov5_official.package():
        model, info = load_checkpoint(v5n_pt, trust=True)
    assert info["trusted"] is True and info["class"] == "models.yolo.DetectionModel"
    assert type(model).__module__ == "exporter.models.yolo"
    assert torch.equal(outputs(model), outputs(fp16_reference(yolov5n)))


# ------------------------------------------------------------------------------------ state_dict files


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "dataparallel"])
def test_state_dict_with_cfg(layout: str, yolov5n: nn.Module, tmp_path: Path) -> None:
    sd = yolov5n.state_dict()
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "dataparallel": {f"module.{k}": v for k, v in sd.items()}}[layout]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    model, info = load_checkpoint(path, cfg=CONFIGS / "yolov5n.yaml")
    assert info["kind"] == "state_dict" and info["tensors"] == len(sd)
    assert torch.equal(outputs(model), outputs(yolov5n))


def test_state_dict_without_cfg_asks_for_it(yolov5n: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(yolov5n.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "--cfg")
    r = CliRunner().invoke(cli, ["info", str(path)])
    assert r.exit_code == 2 and "--cfg" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["info", str(path), "--cfg", str(CONFIGS / "yolov5n.yaml"), "--img", "64"])
    assert r.exit_code == 0, r.output
    assert "state_dict" in r.stdout


def test_state_dict_with_the_wrong_cfg(yolov5n: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(yolov5n.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, cfg=CONFIGS / "yolov5s-v5.0.yaml")
    assert_one_line_error(e.value, "do not match", "missing", "unexpected")


# ------------------------------------------------------------------------------------ yexport format


def test_save_checkpoint_round_trip(yolov5n: nn.Module, tmp_path: Path) -> None:
    m = deepcopy(yolov5n)
    m.names = [f"class{i}" for i in range(80)]
    path = save_checkpoint(m, tmp_path / "out" / "model.pt", extra={"note": "round trip", "sparsity": 0.25})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["yaml"] == m.yaml and raw["nc"] == 80
    model, info = load_checkpoint(path)
    assert info["format"] == FORMAT and info["extra"] == {"note": "round trip", "sparsity": 0.25}
    assert model.names == m.names
    assert torch.equal(outputs(model), outputs(m))


def test_save_checkpoint_of_a_fused_model(yolov5n: nn.Module, tmp_path: Path) -> None:
    fused = deepcopy(yolov5n).fuse()
    model, info = load_checkpoint(save_checkpoint(fused, tmp_path / "fused.pt"))
    assert info["fused"] is True
    assert torch.equal(outputs(model), outputs(fused))


def test_save_checkpoint_of_a_channel_pruned_model(yolov5n: nn.Module, tmp_path: Path) -> None:
    m = deepcopy(yolov5n)
    sppf = m.model[9]
    c_ = sppf.cv1.conv.out_channels
    keep = torch.arange(0, c_, 2)  # drop every other channel of SPPF.cv1
    with torch.no_grad():
        conv, bn = sppf.cv1.conv, sppf.cv1.bn
        new_conv = nn.Conv2d(conv.in_channels, len(keep), 1, bias=False)
        new_conv.weight.copy_(conv.weight[keep])
        new_bn = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).copy_(getattr(bn, name)[keep])
        sppf.cv1.conv, sppf.cv1.bn = new_conv, new_bn
        idx = torch.cat([keep + j * c_ for j in range(4)])
        cv2 = sppf.cv2.conv
        new_cv2 = nn.Conv2d(len(idx), cv2.out_channels, 1, bias=False)
        new_cv2.weight.copy_(cv2.weight[:, idx])
        sppf.cv2.conv = new_cv2
    model, info = load_checkpoint(save_checkpoint(m, tmp_path / "pruned.pt"))
    assert info["resized_layers"] == 3
    assert model.model[9].cv1.conv.out_channels == c_ // 2
    assert torch.equal(outputs(model), outputs(m))


def test_save_checkpoint_rejects_what_weights_only_cannot_load(yolov5n: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not plain data"):
        save_checkpoint(yolov5n, tmp_path / "x.pt", extra={"path": pathlib.Path("a")})
    with pytest.raises(CheckpointError, match="YOLOv5 Model"):
        save_checkpoint(nn.Conv2d(1, 1, 1), tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_newer_yexport_format_is_named(yolov5n: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": "yexport-9", "yaml": {}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e.value, "'yexport-9'")


# ------------------------------------------------------------------------------------ not checkpoints


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "zip", "pickle-int", "torchscript", "missing"])
def test_files_that_are_not_checkpoints(kind: str, v5n_pt: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    if kind == "text":
        path.write_text("hello, not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _truncated(v5n_pt, path)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "hi")
    elif kind == "pickle-int":
        torch.save(42, path)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(nn.ReLU()), path)
    with pytest.raises(YexportError) as e:
        load_checkpoint(path)
    expected = {"text": (InputError, "not a PyTorch checkpoint"), "empty": (InputError, "empty file"),
                "truncated": (InputError, "corrupt or truncated"), "zip": (InputError, "without data.pkl"),
                "pickle-int": (CheckpointError, "holds a int"), "torchscript": (CheckpointError, "TorchScript"),
                "missing": (InputError, "no such file")}[kind]
    assert isinstance(e.value, expected[0])
    assert_one_line_error(e.value, expected[1], str(path))
    if kind not in ("missing",):
        r = CliRunner().invoke(cli, ["info", str(path)])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
