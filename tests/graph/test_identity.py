"""Graph identity vs run record: snapshots and diffs compare what defines the graph; how the run was
made (parity options, stages, source path, versions, seed) only with --include run-metadata.

The README's "Gate your exports in CI" recipe runs here for real on yolov5n at --img 128."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli.main import cli
from exporter.graph.diff import diff
from exporter.graph.snapshot import snapshot
from exporter.identity import (
    GRAPH_OPTION_FIELDS,
    RUN_RECORD_KEYS,
    graph_identity,
    is_run_record,
    split_options,
)

GRAPH_META = {"yexport.model": "m", "yexport.keep_bn": "0", "yexport.head": "decode", "yexport.img": "640,640",
              "yexport.dynamic": "none", "stride": "32", "names": "{0: 'person'}",
              "yexport.graph_options": json.dumps({"keep_bn": False, "opset": 18}, sort_keys=True)}


def _run_meta(**changes: str) -> dict[str, str]:
    run = {"yexport.version": "0.1.0", "yexport.source": "checkpoint:my.pt", "yexport.seed": "0",
           "yexport.stages": "prepare,capture,metadata,checker,parity", "yexport.weights": "my.pt",
           "yexport.run": json.dumps({"atol": 0.001, "check": True, "providers": ["cpu"]}, sort_keys=True)}
    run.update(changes)
    return run


def test_key_table_classifies_run_record_and_identity() -> None:
    for key in ("yexport.version", "yexport.source", "yexport.seed", "yexport.stages", "yexport.run",
                "yexport.weights"):
        assert is_run_record(key), key
    for key in ("stride", "names", "yexport.model", "yexport.keep_bn", "yexport.head", "yexport.img",
                "yexport.dynamic", "yexport.stride", "yexport.names", "yexport.graph_options", "user.key"):
        assert not is_run_record(key), key
    assert RUN_RECORD_KEYS.isdisjoint(GRAPH_META)


def test_options_split_into_graph_and_run_parts() -> None:
    from exporter.options import ExportOptions

    graph, run = split_options(ExportOptions().describe())
    assert set(graph) <= GRAPH_OPTION_FIELDS and {"keep_bn", "img", "opset", "dynamic", "head"} <= set(graph)
    assert {"check", "atol", "rtol", "providers", "require", "inputs", "images", "seed"} <= set(run)
    assert set(graph).isdisjoint(run)


def test_legacy_options_blob_is_split_by_field() -> None:
    legacy = {"yexport.options": json.dumps({"keep_bn": False, "opset": 18, "check": True, "atol": 0.001})}
    ident = graph_identity(legacy)
    assert ident == {"yexport.graph_options": json.dumps({"keep_bn": False, "opset": 18}, sort_keys=True)}
    both = graph_identity(legacy, include_run=True)
    assert json.loads(both["yexport.run"]) == {"check": True, "atol": 0.001}
    # an old file's blob and a new file's graph_options compare equal
    new = {"yexport.graph_options": json.dumps({"opset": 18, "keep_bn": False}, sort_keys=True)}
    assert graph_identity(new) == ident


def test_snapshot_keeps_identity_and_includes_run_record_on_request(builders) -> None:
    m = builders.chain(metadata={**GRAPH_META, **_run_meta()})
    text = snapshot(m)
    assert '"stride": "32"' in text and '"yexport.graph_options"' in text
    assert "yexport.source" not in text and "yexport.run" not in text and "yexport.version" not in text
    full = snapshot(m, include="run-metadata")
    assert '"yexport.source": "checkpoint:my.pt"' in full and '"yexport.run"' in full


def test_run_record_changes_are_no_difference_by_default(builders) -> None:
    a = builders.chain(metadata={**GRAPH_META, **_run_meta()})
    b = builders.chain(metadata={**GRAPH_META, **_run_meta(**{
        "yexport.source": "checkpoint:elsewhere/my.pt", "yexport.version": "0.2.0",
        "yexport.stages": "prepare,capture,metadata,checker",
        "yexport.run": json.dumps({"atol": 0.01, "check": False, "providers": ["cpu", "cuda"]})})})
    assert diff(a, b).identical
    r = diff(a, b, include="run-metadata")
    fields = {c["field"] for c in r.metadata}
    assert {"yexport.source", "yexport.version", "yexport.stages", "yexport.run.atol", "yexport.run.check"} <= fields


def test_graph_defining_metadata_changes_are_a_difference(builders) -> None:
    a = builders.chain(metadata=GRAPH_META)
    b = builders.chain(metadata={**GRAPH_META, "yexport.keep_bn": "1", "names": "{0: 'car'}"})
    r = diff(a, b)
    assert not r.identical and {c["field"] for c in r.metadata} == {"yexport.keep_bn", "names"}


def test_unknown_include_is_a_usage_error(builders, tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(builders.chain().SerializeToString())
    res = CliRunner().invoke(cli, ["diff", str(p), str(p), "--include", "everything"])
    assert res.exit_code == 2 and "run-metadata" in res.output


# ---------------------------------------------------------------------------------------------
# the README's CI recipe, for real


@pytest.fixture(scope="module")
def ci(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint at two paths; an approved snapshot from a checked export of the first; CI exports
    of the second with --no-check and other parity options, and with --keep-bn. Each exported once."""
    from exporter.models import load_model
    from exporter.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ci")
    lm = load_model("yolov5n")
    names = ["person", "bicycle", "car"] + [f"thing{i}" for i in range(3, lm.model.nc)]
    dev = root / "dev" / "my.pt"
    dev.parent.mkdir()
    save_checkpoint(lm.model, dev, names=names)
    elsewhere = root / "checkout" / "elsewhere" / "my.pt"
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(dev, elsewhere)
    runner = CliRunner()

    def export(*args: str) -> None:
        res = runner.invoke(cli, ["export", *args, "--img", "128"])
        assert res.exit_code == 0, res.output

    export(str(dev), "-o", str(root / "dev-out"), "--name", "model")  # checked (parity on)
    approved = root / "approved" / "model.graph.txt"
    approved.parent.mkdir()
    res = runner.invoke(cli, ["snapshot", str(root / "dev-out" / "model.onnx"), "-o", str(approved)])
    assert res.exit_code == 0, res.output
    export(str(elsewhere), "-o", str(root / "build"), "--name", "model", "--no-check", "--atol", "0.01",
           "--rtol", "0.01", "--providers", "cpu")
    export(str(elsewhere), "-o", str(root / "build-bn"), "--name", "model", "--no-check", "--keep-bn")
    return {"approved": approved, "build": root / "build" / "model.onnx", "build_bn": root / "build-bn" / "model.onnx",
            "dev": root / "dev-out" / "model.onnx"}


@pytest.mark.slow
def test_ci_recipe_passes_when_only_the_run_differs(ci: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli, ["diff", str(ci["approved"]), str(ci["build"]), "--ignore", "initializer-values",
                                   "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "**identical**" in res.output
    # the run record does differ, and says so on request
    res = CliRunner().invoke(cli, ["diff", str(ci["dev"]), str(ci["build"]), "--include", "run-metadata"])
    assert res.exit_code == 1
    assert "yexport.source" in res.output and "yexport.run.check" in res.output and "yexport.stages" in res.output


@pytest.mark.slow
def test_ci_recipe_fails_on_keep_bn_with_the_story_first(ci: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli, ["diff", str(ci["approved"]), str(ci["build_bn"]), "--ignore", "initializer-values",
                                   "--format", "markdown"])
    assert res.exit_code == 1, res.output
    first = res.output.splitlines()[:4]
    assert any("+57 BatchNormalization" in line for line in first), first
    text = CliRunner().invoke(cli, ["diff", str(ci["approved"]), str(ci["build_bn"]), "--ignore",
                                    "initializer-values"]).output
    assert "+57 BatchNormalization" in "\n".join(text.splitlines()[:4])


@pytest.mark.slow
def test_exported_file_carries_yolov5_stride_and_checkpoint_names(ci: dict[str, Path]) -> None:
    import ast

    from exporter.graph.load import load_onnx

    meta = {p.key: p.value for p in load_onnx(ci["build"]).metadata_props}
    assert int(meta["stride"]) == 32
    names = ast.literal_eval(meta["names"])
    assert names[0] == "person" and names[2] == "car" and len(names) == 80
