"""Any nn.Module: a user's module file through the CLI (BatchNorm, attention, a dict output), output
names from the structure, capture strategies with fallback, several and integer inputs, timm classifiers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import user_module_fixture
from tests.pipeline.conftest import exit_and_output as run

MYMODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """A BatchNorm, attention (nn.MultiheadAttention) and a dict output."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            f = self.conv2(self.stem(x))
            t = f.flatten(2).transpose(1, 2)
            a, _ = self.attn(t, t, t)
            return {"logits": self.head(a.mean(1)), "features": f}


    class Tokens(nn.Module):
        """Two inputs, one of them integer: token ids and a per-token scale."""

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
            self.out = nn.Linear(32, 5)

        def forward(self, input_ids, scale):
            h = self.enc(self.emb(input_ids) * scale)
            return self.out(h), h.mean(1)


    class NoTorchScript(nn.Module):
        """An operator the TorchScript exporter cannot translate (dynamo can)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return torch.special.erfcx(self.conv(x).tanh())


    class DataDependent(nn.Module):
        """Post-processing whose output size depends on the values (as a detector's score filter)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            y = self.conv(x).flatten()
            keep = y[y > 0.1]
            if keep.numel() > 3:
                return keep[:3]
            return keep


    def build():
        return Net()


    def tokens():
        return Tokens()


    def no_torchscript():
        return NoTorchScript()


    def data_dependent():
        return DataDependent()
''')


mymodel = user_module_fixture("mymodel", MYMODEL)


@pytest.fixture(scope="module")
def exported(mymodel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("out")
    code, text = run("export", f"{mymodel}:build", "--input-shape", "1,3,64,64", "-o", str(out))
    assert code == 0, text
    return out, text


def test_module_file_exports_with_default_options(exported: tuple[Path, str]) -> None:
    out, text = exported
    proto = onnx.load(str(out / "mymodel.onnx"))
    assert [o.name for o in proto.graph.output] == ["logits", "features"]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]  # fused
    manifest = json.loads((out / "mymodel.json").read_text())
    assert manifest["model"]["kind"] == "factory"
    assert manifest["capture_attempts"] == [{"exporter": "torchscript", "ok": True, "error": ""}]
    assert manifest["stages"][0]["changed"].startswith("fused 1 Conv+BN pairs")
    assert manifest["parity"]["passed"] if "passed" in manifest["parity"] else "pass" in text
    assert "cpu: pass" in text


def test_dict_output_flatten_order_is_the_onnx_output_order(exported: tuple[Path, str], mymodel: Path) -> None:
    """Leaf by leaf: the PyTorch output flattened as parity flattens it equals the ONNX outputs by name."""
    import onnxruntime as ort

    from exporter.models import load_model
    from exporter.parity.reference import flatten

    out, _ = exported
    model = load_model(f"{mymodel}:build").model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    sess = ort.InferenceSession(str(out / "mymodel.onnx"))
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"images": x.numpy()}), strict=True))
    assert names == list(y)  # dict keys, in insertion order (not sorted: 'logits' before 'features')
    for name, ref in zip(names, flatten(y), strict=True):
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5)


def test_check_against_the_factory(exported: tuple[Path, str], mymodel: Path) -> None:
    out, _ = exported
    code, text = run("check", str(out / "mymodel.onnx"), "--against", f"{mymodel}:build")
    assert code == 0, text
    assert "pass" in text


def test_check_never_imports_a_factory_on_its_own(exported: tuple[Path, str]) -> None:
    out, _ = exported
    code, text = run("check", str(out / "mymodel.onnx"))
    assert code == 2 and "--against" in text


def test_profile_and_prune_report_run(mymodel: Path) -> None:
    code, text = run("profile", f"{mymodel}:build", "--input-shape", "1,3,64,64", "--runs", "1", "--json")
    assert code == 0, text
    report = json.loads(text[text.index("{"):])
    rows = {r["from"]: r for r in report["layers"]}
    assert {"stem.0", "stem.1", "conv2", "attn", "head"} <= set(rows)
    assert rows["attn"]["module"] == "MultiheadAttention" and rows["attn"]["gflops"] > 0
    code, text = run("prune-report", f"{mymodel}:build", "--input-shape", "1,3,64,64", "--json")
    assert code == 0, text
    convs = {c["name"]: c for c in json.loads(text[text.index("{"):])["layers"]}
    assert convs["stem.0"]["prunable"] and convs["stem.0"]["gamma_min"] is not None
    assert not convs["conv2"]["prunable"] and "model output" in convs["conv2"]["reason"]


def test_info_reports_exact_flops_and_named_outputs(mymodel: Path) -> None:
    code, text = run("info", f"{mymodel}:build", "--input-shape", "1,3,64,64")
    assert code == 0, text
    assert "exact at 1,3,64,64" in text and "stride" not in text
    assert "logits 1x10" in text and "features 1x32x16x16" in text


def test_prune_report_finds_residual_adds() -> None:
    from exporter.analysis.prune import graph_prune_report

    class Res(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c = torch.nn.Conv2d(8, 4, 1)
            self.d = torch.nn.Conv2d(8, 4, 1)
            self.e = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = torch.relu(self.bn(self.a(x)))
            h = h + self.b(h)
            return self.e(torch.cat([self.c(h), self.d(h)], 1))

    convs = {c.name: c for c in graph_prune_report(Res()).convs}
    assert not convs["a"].prunable and "residual" in convs["a"].reason
    assert not convs["b"].prunable
    assert convs["c"].prunable and convs["d"].prunable  # a concat only re-indexes channels
    assert not convs["e"].prunable and "model output" in convs["e"].reason


@pytest.mark.slow
def test_auto_falls_back_to_dynamo_and_records_why(mymodel: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{mymodel}:no_torchscript", "--input-shape", "1,3,32,32", "-o", str(tmp_path),
                     "--name", "fb")
    assert code == 0, text
    manifest = json.loads((tmp_path / "fb.json").read_text())
    first, second = manifest["capture_attempts"]
    assert first["exporter"] == "torchscript" and not first["ok"] and "aten::special_erfcx" in first["error"]
    assert second == {"exporter": "dynamo", "ok": True, "error": ""}
    capture = next(s for s in manifest["stages"] if s["name"] == "capture")
    assert capture["changed"].startswith("dynamo") and "torchscript failed" in capture["changed"]
    log = tmp_path / "fb.capture.log"
    assert log.is_file() and "Traceback" in log.read_text()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "fb.onnx")).metadata_props}
    assert meta["yexport.exporter"] == "dynamo"


def test_a_named_exporter_fails_in_one_line_with_the_next_step(mymodel: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{mymodel}:no_torchscript", "--input-shape", "1,3,32,32", "-o", str(tmp_path),
                     "--exporter", "torchscript", "--name", "ts")
    assert code == 1
    line = text.strip().splitlines()[-1]
    assert "aten::special_erfcx" in line and "--exporter dynamo" in line
    assert str(tmp_path / "ts.capture.log") in line


@pytest.mark.slow
def test_data_dependent_post_processing_is_diagnosed(mymodel: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{mymodel}:data_dependent", "--input-shape", "1,3,32,32", "-o", str(tmp_path),
                     "--exporter", "dynamo")
    assert code == 1
    line = text.strip().splitlines()[-1]
    assert "data-dependent" in line and "mymodel.py:" in line and "factory return that part" in line


@pytest.mark.slow
def test_several_and_integer_inputs(mymodel: Path, tmp_path: Path) -> None:
    code, text = run("export", f"{mymodel}:tokens", "--input-shape", "1,16:int64:100", "--input-shape", "1,16,1",
                     "-o", str(tmp_path), "--variants", "fused,dynamic,dynamo")
    assert code == 0, text
    proto = onnx.load(str(tmp_path / "mymodel-dynamic.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "scale"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in proto.graph.output] == ["output0", "output1"]
    assert text.count("cpu: pass") == 3


def test_prepare_keeps_attention_off_its_fused_fast_path(mymodel: Path, tmp_path: Path) -> None:
    """nn.MultiheadAttention with frozen parameters takes aten::_native_multi_head_attention, which the
    TorchScript exporter cannot translate: prepare must not freeze them."""
    code, text = run("export", f"{mymodel}:build", "--input-shape", "1,3,64,64", "-o", str(tmp_path),
                     "--exporter", "torchscript", "--no-check")
    assert code == 0, text


# ------------------------------------------------------------------------------ timm (test dependency)


def _timm():
    from tests.timm_models import import_timm

    try:
        return import_timm()
    except ImportError as exc:
        pytest.skip(f"timm not importable: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_timm_classifiers_export_and_pass(name: str, tmp_path: Path) -> None:
    timm = _timm()
    from exporter.api import export

    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    (result,) = export(model, out_dir=tmp_path, input_shapes=(), img=(64, 64))
    assert result.ok, result.failures
    assert result.ops.get("BatchNormalization", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["keep-bn", "dynamic", "dynamo"])
def test_timm_resnet18_variants(variant: str, tmp_path: Path) -> None:
    timm = _timm()
    from exporter.api import export

    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    (result,) = export(model, out_dir=tmp_path, variants=[variant], img=(64, 64))
    assert result.ok, result.failures


@pytest.mark.slow
def test_timm_vit_exports_with_auto(tmp_path: Path) -> None:
    timm = _timm()
    from exporter.api import export
    from exporter.options import InputSpec

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64).eval()
    (result,) = export(model, out_dir=tmp_path, input_shapes=(InputSpec((1, 3, 64, 64)),))
    assert result.ok, result.failures
