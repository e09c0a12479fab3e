"""``yexport report``: manifests merged into one table, each validated against its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from exporter.cli.main import cli
from exporter.report import collect, render


def _manifest(folder: Path, stem: str, *, parity: object = None, ops: dict | None = None, tamper: bool = False,
              **extra: object) -> Path:
    onnx = folder / f"{stem}.onnx"
    onnx.write_bytes(b"onnx bytes of " + stem.encode())
    sha = hashlib.sha256(onnx.read_bytes()).hexdigest()
    if tamper:
        onnx.write_bytes(b"changed after export")
    m = {"file": onnx.name, "sha256": sha, "bytes": 29_000_000, "variant": stem.rpartition("-")[2],
         "model": {"name": "yolov5s", "kind": "builtin"}, "options": {}, "stages": [], "nodes": 287,
         "ops": ops if ops is not None else {"Conv": 60, "BatchNormalization": 57, "Shape": 2, "Gather": 1},
         "parity": parity, "seconds": 12.34, **extra}
    p = folder / f"{stem}.json"
    p.write_text(json.dumps(m))
    return p


NEW_PARITY = {"passed": False, "providers": [
    {"requested": "cpu", "ran": True, "passed": True,
     "cases": [{"detections": {"onnx": {"truth": 12, "got": 12, "matched": 12, "class_changes": 0}}}]},
    {"requested": "cuda", "ran": False, "passed": False, "required": True}]}


def test_rows_columns_and_verdicts(tmp_path: Path) -> None:
    _manifest(tmp_path, "yolov5s-keep-bn", parity=NEW_PARITY)
    _manifest(tmp_path, "yolov5s-fused", ops={"Conv": 60})
    rows, notes = collect([tmp_path])
    assert notes == []
    by = {r.file: r for r in rows}
    bn = by["yolov5s-keep-bn.onnx"]
    assert (bn.model, bn.variant, bn.nodes, bn.batchnorm, bn.shape_gather) == ("yolov5s", "bn", 287, 57, 3)
    assert bn.parity == "cpu: pass, cuda: not run (required)"
    assert bn.detections == "cpu: 12/12 boxes"
    assert bn.file_check == "ok" and bn.seconds == 12.34
    fused = by["yolov5s-fused.onnx"]
    assert fused.parity == "not checked" and fused.batchnorm == 0 and fused.detections == ""
    text = render(rows, notes)
    assert text.splitlines()[0].split()[:4] == ["file", "model", "variant", "nodes"]
    assert "29.0 MB" in text and "12.3" in text


def test_sha256_mismatch_missing_file_and_non_manifests(tmp_path: Path) -> None:
    _manifest(tmp_path, "a", tamper=True)
    _manifest(tmp_path, "b")
    (tmp_path / "b.onnx").unlink()
    (tmp_path / "package.json").write_text(json.dumps({"name": "x", "version": "1"}))
    (tmp_path / "broken.json").write_text("{not json")
    rows, notes = collect([tmp_path])
    assert {r.file: r.file_check for r in rows} == {"a.onnx": "sha256 mismatch", "b.onnx": "file missing"}
    assert any("package.json: not a yexport manifest" in n for n in notes)
    assert any("broken.json: not readable JSON" in n for n in notes)


def test_tolerates_old_and_partial_parity_objects(tmp_path: Path) -> None:
    _manifest(tmp_path, "old", parity={"passed": True})
    _manifest(tmp_path, "older", parity={"providers": {"cpu": {"passed": True}}})
    _manifest(tmp_path, "partial", parity={"providers": [{"provider": "CPUExecutionProvider"}]},
              ops=None)
    rows, _ = collect([tmp_path])
    by = {r.file: r for r in rows}
    assert by["old.onnx"].parity == "pass"
    assert by["older.onnx"].parity == "cpu: pass"
    assert by["partial.onnx"].parity == "CPUExecutionProvider: ?"


def test_cli_formats_several_paths_and_exit_codes(tmp_path: Path) -> None:
    a, b = tmp_path / "job1", tmp_path / "job2"
    a.mkdir()
    b.mkdir()
    _manifest(a, "yolov5s-fused", parity=NEW_PARITY)
    m2 = _manifest(b, "yolov5n-fused")
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(a), str(m2)])
    assert res.exit_code == 0, res.output
    assert "yolov5s-fused.onnx" in res.output and "yolov5n-fused.onnx" in res.output
    md = runner.invoke(cli, ["report", str(a), str(b), "--format", "markdown"]).output
    lines = md.splitlines()
    assert lines[0].startswith("| file | model | variant |") and lines[1].startswith("|---|")
    assert len(lines) == 4
    data = json.loads(runner.invoke(cli, ["report", str(a), "--format", "json"]).output)
    assert data["rows"][0]["providers"][1] == {"provider": "cuda", "ran": False, "passed": False,
                                               "verdict": "not run (required)"}
    _manifest(b, "bad", tamper=True)
    assert runner.invoke(cli, ["report", str(b)]).exit_code == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli, ["report", str(empty)])
    assert res.exit_code == 2 and "no yexport manifests" in res.output
    assert runner.invoke(cli, ["report", str(tmp_path / "nope")]).exit_code == 2
