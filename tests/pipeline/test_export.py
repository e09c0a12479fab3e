"""What `yexport export` writes: BatchNorm kept or fused, training mode, int shapes, dynamic axes, the
variants table, and the manifest and metadata every file carries."""

from __future__ import annotations

import hashlib
import json
import math
import re
from copy import deepcopy
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from exporter import __version__
from exporter.models.zoo import builtin_path
from exporter.options import ExportOptions
from exporter.stages import enabled_stages
from tests.pipeline.conftest import (
    Exported,
    TrainingExport,
    bn_modes,
    bn_nodes,
    builtin,
    check_written,
    export_cli,
    input_dims,
    metadata,
    ops,
    yexport,
)


def n_batchnorm2d(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def parity_shapes(e: Exported) -> list[list[int]]:
    (cpu,) = e.parity["providers"]
    assert cpu["requested"] == "cpu" and cpu["ran"] is True
    return [c["shape"] for c in cpu["cases"]]


def all_cases_pass(e: Exported) -> None:
    assert e.parity["passed"] is True
    for c in e.parity["providers"][0]["cases"]:
        assert c["passed"] is True, c
        for o in c["outputs"]:
            assert math.isfinite(o["max_abs"]) and math.isfinite(o["max_rel"])
            assert o["passed"] is True


# ----------------------------------------------------------------------- yolov5s (v6+) at 640


@pytest.mark.slow
def test_default_export_fuses_every_batchnorm(s640: Exported) -> None:
    check_written(s640)
    assert n_batchnorm2d(builtin("yolov5s").model) == 57  # there was something to fuse
    assert s640.ops.get("BatchNormalization", 0) == 0
    assert s640.manifest["options"]["keep_bn"] is False
    all_cases_pass(s640)
    assert parity_shapes(s640) == [[1, 3, 640, 640]] * 2  # two inputs by default, neither the capture example
    assert s640.parity["reference"] == "eval"


@pytest.mark.slow
def test_keep_bn_simplify_keeps_57_batchnorms_in_eval_mode(s640_keep_bn: Exported) -> None:
    e = s640_keep_bn
    check_written(e)
    assert len(bn_nodes(e.model)) == 57 == n_batchnorm2d(builtin("yolov5s").model)
    assert bn_modes(e.model) == {0}
    assert e.ops.get("Identity", 0) == 0
    # every BatchNormalization reads its statistics straight from initializers
    inits = {i.name for i in e.model.graph.initializer}
    assert all(set(n.input[1:]) <= inits for n in bn_nodes(e.model))
    all_cases_pass(e)
    before = e.manifest["parity_before_simplify"]
    assert before is not None and before["passed"] is True
    stages = {s["name"]: s for s in e.manifest["stages"]}
    assert stages["simplify"]["ok"] is True and stages["simplify"]["error"] == ""
    assert e.manifest["options"]["keep_bn"] is True and e.manifest["options"]["simplify"] is True


@pytest.mark.slow
def test_v5_keep_bn_keeps_59_batchnorms(tmp_path: Path) -> None:
    r = yexport("export", "yolov5s-v5.0", "--keep-bn", "--img", "320", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    e = Exported.read(tmp_path / "yolov5s-v5.0.onnx", r)
    check_written(e)
    assert len(bn_nodes(e.model)) == 59 == n_batchnorm2d(builtin("yolov5s-v5.0").model)
    assert bn_modes(e.model) == {0} and e.ops.get("Identity", 0) == 0
    all_cases_pass(e)
    assert re.search(r"yolov5s-v5\.0\.onnx\s+\d+\s+59\s", r.stdout), r.stdout


@pytest.mark.slow
def test_manifest(s640: Exported) -> None:
    m = s640.manifest
    # the CLI's --json is the manifest
    assert s640.result is not None and json.loads(s640.result.stdout) == [m]
    src = m["model"]
    assert (src["name"], src["source"], src["kind"]) == ("yolov5s", "yolov5s", "builtin")
    config = builtin_path("yolov5s")
    assert config is not None and src["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert src["weights"] == "synthetic (seed 0)"
    assert m["options"] == ExportOptions().describe()
    want = [s.name for s in enabled_stages(ExportOptions())] + ["write"]
    assert [s["name"] for s in m["stages"]] == want
    for rec in m["stages"]:
        assert set(rec) >= {"name", "seconds", "nodes_before", "nodes_after", "changed", "ok"}
        assert rec["ok"] is True and rec["seconds"] >= 0 and rec["changed"]
    stages = {s["name"]: s for s in m["stages"]}
    assert stages["prepare"]["nodes_before"] is None and stages["capture"]["nodes_before"] is None
    assert stages["capture"]["nodes_after"] == stages["tidy"]["nodes_before"] > stages["tidy"]["nodes_after"]
    assert stages["parity"]["nodes_after"] == m["nodes"] == len(s640.model.graph.node)
    assert "fused 57 Conv+BN pairs" in stages["prepare"]["changed"]
    assert {"yexport", "python", "torch", "onnx", "onnxsim", "onnxscript"} <= set(m["versions"])
    assert torch.__version__.startswith(m["versions"]["torch"])
    assert "onnxruntime" in m["versions"] or "onnxruntime-gpu" in m["versions"]
    assert m["opset"] == 18
    assert m["ops"] == dict(sorted(s640.ops.items()))
    assert m["parity"]["providers"][0]["outputs"][0]["name"] == "output0"


@pytest.mark.slow
def test_metadata_props(s640: Exported) -> None:
    meta = metadata(s640.model)
    model = builtin("yolov5s").model
    assert meta["yexport.stride"] == "8,16,32"
    names = json.loads(meta["yexport.names"])
    assert len(names) == 80 and names == list(model.names.values() if isinstance(model.names, dict) else model.names)
    assert meta["yexport.stages"] == ",".join(s.name for s in enabled_stages(ExportOptions()))
    assert meta["yexport.version"] == __version__
    assert (meta["yexport.training"], meta["yexport.keep_bn"], meta["yexport.img"]) == ("0", "0", "640,640")
    assert json.loads(meta["yexport.graph_options"])["opset"] == 18
    assert s640.model.producer_name == "yexport"


@pytest.mark.slow
def test_keep_bn_metadata(s640_keep_bn: Exported) -> None:
    meta = metadata(s640_keep_bn.model)
    assert meta["yexport.keep_bn"] == "1"
    assert meta["yexport.stages"].split(",") == ["prepare", "capture", "tidy", "infer_shapes", "simplify",
                                                  "metadata", "checker", "parity"]


# ---------------------------------------------------------------------------------- training mode


@pytest.mark.slow
def test_training_mode_batchnorm_uses_batch_statistics(n320_training: TrainingExport) -> None:
    e = n320_training.exported
    check_written(e)
    assert len(bn_nodes(e.model)) == 57
    assert bn_modes(e.model) == {1}
    all_cases_pass(e)
    assert e.parity["reference"] == "train"
    assert metadata(e.model)["yexport.training"] == "1"
    assert any("training mode" in n for n in e.manifest["notes"])


@pytest.mark.slow
def test_training_mode_leaves_caller_model_untouched(n320_training: TrainingExport) -> None:
    after = n320_training.model.state_dict()
    before = n320_training.before
    assert list(after) == list(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert any(k.endswith("num_batches_tracked") for k in before)
    assert not n320_training.model.training  # still in eval mode


@pytest.mark.slow
def test_a_train_mode_forward_would_have_changed_the_statistics(n320_training: TrainingExport) -> None:
    """What the previous test guards against: the same forward on the caller's model mutates it."""
    from exporter.models.weights import synthetic_images

    model = deepcopy(n320_training.model).train()
    with torch.no_grad():
        model(synthetic_images(1, (320, 320), 0))
    after = model.state_dict()
    changed = [k for k, v in n320_training.before.items() if not torch.equal(v, after[k])]
    assert any(k.endswith("running_mean") for k in changed)
    assert any(k.endswith("num_batches_tracked") for k in changed)


# ---------------------------------------------- BatchNorm fusion: what prepare folds, keeps and declares


def with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (seeded), so a wrong fold shows in parity; eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


class ReluThenBn(nn.Module):
    """Conv -> ReLU -> BN: a BatchNorm that follows no Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.act(self.conv(x))))


class CatThenBn(nn.Module):
    """BottleneckCSP's pattern in small: BN over the Concat of two plain convs, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(10)
        self.out = nn.Conv2d(10, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(torch.cat((self.a(x), self.b(x)), 1))))


def export_module(model: nn.Module, out: Path, **options: object) -> Exported:
    from exporter.api import export

    (res,) = export(model, out_dir=out, name="m", img=(64, 64), **options)
    assert res.ok, res.failures
    return Exported.read(res.path)


def prepare_record(e: Exported) -> str:
    return next(s["changed"] for s in e.manifest["stages"] if s["name"] == "prepare")


def test_batchnorm_after_a_relu_is_kept_and_declared(tmp_path: Path) -> None:
    model = with_statistics(ReluThenBn())
    e = export_module(model, tmp_path)
    onnx.checker.check_model(str(e.path), full_check=True)
    assert len(bn_nodes(e.model)) == 1 and bn_modes(e.model) == {0}
    assert "kept 1 BatchNorm2d" in prepare_record(e) and "bn (after act (ReLU), not a Conv)" in prepare_record(e)
    assert any("could not fold 1 BatchNorm2d" in n for n in e.manifest["notes"])
    all_cases_pass(e)
    assert n_batchnorm2d(model) == 1  # the caller's module is untouched


def test_batchnorm_right_after_a_conv_in_any_module_is_fused(tmp_path: Path) -> None:
    model = with_statistics(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU()))
    e = export_module(model, tmp_path)
    assert e.ops.get("BatchNormalization", 0) == 0
    assert prepare_record(e) == "fused 1 Conv+BN pairs"
    all_cases_pass(e)


def test_batchnorm_after_a_concat_of_convs_folds_by_slices(tmp_path: Path) -> None:
    e = export_module(with_statistics(CatThenBn()), tmp_path)
    assert e.ops.get("BatchNormalization", 0) == 0
    assert "folded 1 BatchNorm2d after a Concat of convs" in prepare_record(e)
    all_cases_pass(e)
    kept = export_module(with_statistics(CatThenBn()), tmp_path / "kb", keep_bn=True)
    assert len(bn_nodes(kept.model)) == 1


def test_checker_holds_the_graph_to_prepares_count() -> None:
    """The checker's expectation is prepare's promise: a promise of one more or one fewer
    BatchNormalization than the graph has fails."""
    from exporter.models import LoadedModel
    from exporter.pipeline import Context, run_pipeline
    from exporter.stages import STAGES
    from exporter.stages.checker import GraphCheckError, checker
    from exporter.stages.prepare import batchnorm_promise

    source = LoadedModel(with_statistics(ReluThenBn()), "m", "nn.Module", "module", "", "caller's module")
    upto = tuple(s for s in STAGES if s.name not in ("checker", "parity"))
    ctx = run_pipeline(Context(options=ExportOptions(img=(64, 64), check=False), source=source), upto)
    assert "1 BatchNormalization (the BatchNorm2d prepare could not fold)" in ctx.records[0].ensures
    assert "; 1 BatchNormalization;" in checker(ctx).change
    for wrong in (0, 2):
        with pytest.raises(GraphCheckError, match="prepare promised .*: BatchNorm fusion asked for"):
            checker(ctx.replace(promises=(("prepare", batchnorm_promise(wrong)),)))


@pytest.mark.slow
def test_yolov5s_csp_exports_by_default(tmp_path: Path) -> None:
    """BottleneckCSP's BatchNorm follows a Concat of two plain convs: folded into them, slice by slice."""
    r = yexport("export", "yolov5s-csp", "--img", "128", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    e = Exported.read(tmp_path / "yolov5s-csp.onnx", r)
    check_written(e)
    assert e.ops.get("BatchNormalization", 0) == 0
    assert "folded 8 BatchNorm2d after a Concat of convs" in prepare_record(e)
    all_cases_pass(e)


# --------------------------------------------------------------- variants: int shapes, dynamic axes


VARIANTS = "fused,keep-bn,dynamic,dynamic+no-int-shapes,dynamic-all"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Exported]]:
    out = tmp_path_factory.mktemp("variants")
    r = yexport("export", "yolov5n", "--img", "256", "--variants", VARIANTS, "-o", out)
    assert r.exit_code == 0, r.output
    return r.stdout, {v: Exported.read(out / f"yolov5n-{v}.onnx") for v in VARIANTS.split(",")}


def test_int_shapes_default_and_no_int_shapes_on_a_dynamic_batch(tmp_path: Path) -> None:
    """The quick guard of the int-shapes default (the variants tests add parity at three batch sizes)."""
    def export(*flags: str) -> Exported:
        name = "-".join(f.strip("-") for f in flags) or "static"
        return export_cli(tmp_path, "yolov5n", "--img", "128", "--no-check", *flags, name=name)

    static, dynamic = export(), export("--dynamic", "batch")
    plain = export("--dynamic", "batch", "--no-int-shapes")
    assert input_dims(dynamic.model) == input_dims(plain.model) == ["batch", 3, 128, 128]
    assert dynamic.ops.get("Shape", 0) == dynamic.ops.get("Gather", 0) == 0
    assert len(dynamic.model.graph.node) == len(static.model.graph.node)
    assert plain.ops.get("Shape", 0) > 0 and plain.ops.get("Gather", 0) > 0
    assert export("--no-int-shapes").ops == static.ops  # static: constant folding bakes the sizes anyway


@pytest.mark.slow
def test_variants_summary_table(variants: tuple[str, dict[str, Exported]]) -> None:
    stdout, files = variants
    lines = stdout.splitlines()
    assert lines[0].split() == ["file", "nodes", "BatchNorm", "Shape+Gather", "size", "parity", "seconds"]
    assert set(lines[1]) <= {"-", " "}
    rows = lines[2:2 + len(files)]
    assert [row.split()[0] for row in rows] == [f"yolov5n-{v}.onnx" for v in files]
    assert sum(1 for ln in lines if ln.startswith("file ")) == 1  # one table for all variants
    for row, e in zip(rows, files.values(), strict=True):
        check_written(e)
        cells = row.split()
        assert int(cells[1]) == len(e.model.graph.node)
        assert int(cells[2]) == e.ops.get("BatchNormalization", 0)
        assert int(cells[3]) == e.ops.get("Shape", 0) + e.ops.get("Gather", 0)
        assert "cpu: pass (" in row and "x fp32 noise)" in row
        assert re.search(r"\d+(\.\d)? (kB|MB)", row)
    assert files["keep-bn"].ops["BatchNormalization"] == 57 and files["fused"].ops.get("BatchNormalization", 0) == 0


@pytest.mark.slow
def test_dynamic_batch_gets_int_shapes_by_default(variants: tuple[str, dict[str, Exported]]) -> None:
    """Int shapes are exact for a dynamic batch at a fixed image size: the default graph is the static
    one with a symbolic batch; --no-int-shapes keeps the traced Shape -> Gather chains."""
    files = variants[1]
    e, static = files["dynamic"], files["fused"]
    assert input_dims(e.model) == ["batch", 3, 256, 256]
    assert [d.dim_param for d in e.model.graph.output[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert e.ops.get("Shape", 0) == 0 and e.ops.get("Gather", 0) == 0
    assert len(e.model.graph.node) == len(static.model.graph.node)
    assert e.manifest["options"]["int_shapes"] is True
    assert any("int shapes" in n and "batch stays dynamic" in n for n in e.manifest["notes"])
    assert parity_shapes(e) == [[1, 3, 256, 256], [2, 3, 256, 256], [4, 3, 256, 256]]
    all_cases_pass(e)
    plain = files["dynamic+no-int-shapes"]
    assert plain.ops.get("Shape", 0) > 0 and plain.ops.get("Gather", 0) > 0
    assert len(plain.model.graph.node) > len(e.model.graph.node)
    assert plain.manifest["options"]["int_shapes"] is False
    assert not any("int shapes" in n for n in plain.manifest["notes"])
    assert parity_shapes(plain) == parity_shapes(e)
    all_cases_pass(plain)


@pytest.mark.slow
def test_dynamic_all_passes_at_three_image_sizes(variants: tuple[str, dict[str, Exported]]) -> None:
    e = variants[1]["dynamic-all"]
    assert input_dims(e.model) == ["batch", 3, "height", "width"]
    assert e.manifest["options"]["int_shapes"] is False  # the sizes stay traced: they vary
    shapes = parity_shapes(e)
    assert len({(s[2], s[3]) for s in shapes}) == 3, shapes
    assert all(s[2] % 32 == 0 and s[3] % 32 == 0 for s in shapes)
    all_cases_pass(e)
    outputs = [c["outputs"][0]["shape"] for c in e.parity["providers"][0]["cases"]]
    assert len({o[1] for o in outputs}) == 3  # a different number of boxes at each size


def test_static_graph_dims_are_fixed(n320: Exported) -> None:
    check_written(n320)
    assert input_dims(n320.model) == [1, 3, 320, 320]
    assert ops(n320.model).get("Shape", 0) == 0
