"""External data (weights beside the .onnx), the file set written atomically, and rewriting stages that
verify their result and fall back to their input.

The external-data path is forced on small models with ``YEXPORT_EXTERNAL_DATA_THRESHOLD=0``; the real
thing (weights over 2 GiB) is ``test_model_over_2_gib`` (slow, a few GiB of memory)."""

from __future__ import annotations

import gc
import importlib
import json
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import exporter
from exporter.errors import InputError, StageError
from exporter.io import PairWriter, read_manifest
from tests.pipeline.conftest import yexport


def small_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1)).eval()


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YEXPORT_EXTERNAL_DATA_THRESHOLD", "0")


def test_forced_external_data_exports_checks_and_round_trips(tmp_path: Path, forced: None) -> None:
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="m", img=(64, 64))
    assert r.ok, r.failures
    onnx_path, data_path = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx", "m.onnx.data"]
    model = onnx.load(str(onnx_path), load_external_data=False)
    ext = external_tensors(model)
    assert ext and {e.value for t in ext for e in t.external_data if e.key == "location"} == {"m.onnx.data"}
    manifest = read_manifest(onnx_path)  # both hashes checked
    assert manifest["data_file"] == "m.onnx.data" and manifest["data_bytes"] == data_path.stat().st_size
    capture = next(s for s in manifest["stages"] if s["name"] == "capture")
    assert "weights as external data" in capture["changed"]
    tidy = next(s for s in manifest["stages"] if s["name"] == "tidy")
    assert "fell back" not in tidy["changed"], tidy["changed"]
    assert "m.onnx.data" in manifest["stages"][-1]["changed"]
    assert r.parity and manifest["parity"]["passed"] is True
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("yexport-weights-*"))  # working folder removed

    # every reader: check (onnxruntime opens the path), inspect, snapshot, diff, graph
    res = yexport("inspect", onnx_path)
    assert res.exit_code == 0 and "Conv" in res.output, res.output
    res = yexport("snapshot", onnx_path, "-o", tmp_path / "snap.txt")
    assert res.exit_code == 0, res.output
    res = yexport("diff", onnx_path, onnx_path)
    assert res.exit_code == 0, res.output
    res = yexport("graph", onnx_path, "-o", tmp_path / "g.dot")
    assert res.exit_code == 0, res.output
    report = exporter.check_parity(onnx_path, small_module())
    assert report, report.format()

    # the data file is part of the set: changing it is seen by the manifest check
    with open(data_path, "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(InputError, match="does not match m.onnx.data"):
        read_manifest(onnx_path)


def test_same_graph_with_and_without_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [inline] = exporter.export(small_module(), out_dir=tmp_path / "a", name="m", img=(64, 64), check=False)
    monkeypatch.setenv("YEXPORT_EXTERNAL_DATA_THRESHOLD", "0")
    [ext] = exporter.export(small_module(), out_dir=tmp_path / "b", name="m", img=(64, 64), check=False)
    res = yexport("diff", inline.path, ext.path)
    assert res.exit_code == 0 and "identical" in res.output, res.output  # same weights, stored apart


@pytest.mark.slow
def test_dynamo_capture_with_external_data(tmp_path: Path, forced: None) -> None:
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="d", img=(64, 64), exporter="dynamo")
    assert r.ok, r.failures
    assert external_tensors(onnx.load(str(r.path), load_external_data=False))
    read_manifest(r.path)


def test_simplify_is_skipped_with_the_reason(tmp_path: Path, forced: None) -> None:
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="s", img=(64, 64), simplify=True, check=False)
    rec = next(x for x in r.records if x.name == "simplify")
    assert rec.ok and rec.changed.startswith("simplify skipped: the weights are external data")
    assert any("simplify skipped" in n for n in r.notes)


def test_a_later_inline_export_removes_the_old_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YEXPORT_EXTERNAL_DATA_THRESHOLD", "0")
    exporter.export(small_module(), out_dir=tmp_path, name="m", img=(64, 64), check=False)
    assert (tmp_path / "m.onnx.data").exists()
    monkeypatch.delenv("YEXPORT_EXTERNAL_DATA_THRESHOLD")
    exporter.export(small_module(), out_dir=tmp_path, name="m", img=(64, 64), check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]
    assert "data_file" not in read_manifest(tmp_path / "m.onnx")


def test_bad_threshold_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YEXPORT_EXTERNAL_DATA_THRESHOLD", "lots")
    with pytest.raises(StageError, match="YEXPORT_EXTERNAL_DATA_THRESHOLD='lots'"):
        exporter.export(small_module(), out_dir=tmp_path, name="m", img=(64, 64), check=False)


def test_pair_writer_renames_data_then_onnx_then_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        order.append(Path(dst).name)
        real(src, dst)

    w = PairWriter(tmp_path / "x.onnx")
    w.stage_data(lambda f: f.write(b"weights" * 1000))
    w.stage(b"graph")
    monkeypatch.setattr(os, "replace", spy)
    w.commit({"variant": "export"})
    assert order == ["x.onnx.data", "x.onnx", "x.json"]
    m = json.loads((tmp_path / "x.json").read_text())
    assert m["data_file"] == "x.onnx.data" and m["data_bytes"] == 7000 and m["bytes"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pair_writer_discard_removes_the_staged_data(tmp_path: Path) -> None:
    with PairWriter(tmp_path / "x.onnx") as w:
        w.stage_data(lambda f: f.write(b"w" * 10))
        w.stage(b"g")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ stages that verify themselves


def test_tidy_that_breaks_topological_order_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tidy = importlib.import_module("exporter.stages.tidy")

    real = tidy.lift_constants

    def scrambled(model: onnx.ModelProto) -> onnx.ModelProto:
        out = real(model)
        nodes = list(out.graph.node)[::-1]  # consumers before producers
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        return out

    monkeypatch.setattr(tidy, "lift_constants", scrambled)
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="t", img=(64, 64))
    assert r.ok, r.failures  # the export goes on with the captured graph
    manifest = read_manifest(r.path)
    rec = next(s for s in manifest["stages"] if s["name"] == "tidy")
    assert rec["ok"] is True and rec["changed"].startswith("tidy fell back to its input graph: onnx.checker refused")
    assert "topologically sorted" in rec["changed"]
    assert any(n.startswith("tidy fell back") for n in manifest["notes"])
    assert manifest["parity"]["passed"] is True


def test_tidy_that_changes_the_numbers_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from onnx import numpy_helper

    tidy = importlib.import_module("exporter.stages.tidy")

    def wrong(model: onnx.ModelProto, keep_bn: bool, base_dir: Path | None = None) -> onnx.ModelProto:
        out = tidy.lift_constants(model)
        t = max(out.graph.initializer, key=lambda t: len(t.raw_data))
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.5), t.name))
        return out

    monkeypatch.setattr(tidy, "tidy_model", wrong)
    monkeypatch.setattr(tidy, "only_constant_nodes_to_fold", lambda m: False)
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="t", img=(64, 64))
    assert r.ok, r.failures
    rec = next(x for x in r.records if x.name == "tidy")
    assert rec.changed.startswith("tidy fell back to its input graph: output 0 moved by"), rec.changed


def test_tidy_that_raises_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tidy = importlib.import_module("exporter.stages.tidy")

    def boom(model: onnx.ModelProto) -> onnx.ModelProto:
        raise ValueError("rewrite exploded")

    monkeypatch.setattr(tidy, "lift_constants", boom)
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="t", img=(64, 64), check=False)
    rec = next(x for x in r.records if x.name == "tidy")
    assert r.ok and "the rewrite raised ValueError: rewrite exploded" in rec.changed


def test_simplify_result_that_fails_the_checker_keeps_the_unsimplified_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    def scrambled(model: onnx.ModelProto, **kwargs: object) -> tuple[onnx.ModelProto, bool]:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        nodes = list(out.graph.node)[::-1]
        del out.graph.node[:]
        out.graph.node.extend(nodes)
        return out, True

    monkeypatch.setattr(onnxsim, "simplify", scrambled)
    [r] = exporter.export(small_module(), out_dir=tmp_path, name="s", img=(64, 64), simplify=True)
    rec = next(x for x in r.records if x.name == "simplify")
    assert not rec.ok and rec.error.startswith("simplify fell back to its input graph: onnx.checker refused")
    assert rec.error.endswith("kept the unsimplified graph")
    assert r.parity and r.parity_unsimplified is None


# ------------------------------------------------------------------------------ over 2 GiB


class Big(nn.Module):
    """About 590M float32 parameters (2.2 GiB) in a few Linear layers over a 3x32x32 image."""

    def __init__(self, width: int = 16384, depth: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(3 * 32 * 32, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 16)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():  # cheap fill: a random row pattern, scaled to keep activations O(1)
                fan_in = p.shape[-1]
                row = torch.rand(fan_in, generator=g) * 2 - 1
                p.copy_(row.expand_as(p) if p.dim() == 2 else row[: p.shape[0]].expand_as(p))
                p.mul_(1.0 / fan_in ** 0.5)
                if p.dim() == 2:  # vary the rows too
                    p.mul_(torch.linspace(0.5, 1.5, p.shape[0]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.inp(x.flatten(1)))
        for h in self.hidden:
            y = torch.tanh(h(y))
        return self.out(y)


@pytest.mark.slow
def test_model_over_2_gib(tmp_path: Path) -> None:
    model = Big().eval()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert size > 2 << 30
    # export and check one after the other: the check's float64 copy of the model need not meet the
    # pipeline's prepared copy (peak about 7 GB for the export, 10.5 GB for the check; bench/big_model.py)
    [r] = exporter.export(model, out_dir=tmp_path, name="big", img=(32, 32), check=False)
    assert r.ok, r.failures
    gc.collect()
    report = exporter.check_parity(tmp_path / "big.onnx", model, inputs=1)
    assert report, report.format()
    del model, report
    gc.collect()
    data = tmp_path / "big.onnx.data"
    assert data.stat().st_size >= size - 4096 and (tmp_path / "big.onnx").stat().st_size < 1 << 20  # biases inline
    read_manifest(tmp_path / "big.onnx")
    for args in (("inspect", tmp_path / "big.onnx"), ("snapshot", tmp_path / "big.onnx", "-o", tmp_path / "s.txt"),
                 ("diff", tmp_path / "big.onnx", tmp_path / "big.onnx")):
        res = yexport(*args)
        assert res.exit_code == 0, (args, res.output)
