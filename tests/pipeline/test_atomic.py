"""Killing a writer mid-write never leaves a partial .onnx: a child process whose os.fsync hangs (so the
temporary file is complete on disk but not yet renamed) is SIGKILLed, and the target is either absent
or the old file, byte for byte."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exporter.io import atomic_write
from tests.pipeline.conftest import Exported

ROOT = Path(__file__).resolve().parents[2]

SLOW_FSYNC = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    marker = Path(sys.argv[1])

    def slow_fsync(fd):
        marker.write_text(str(os.fstat(fd).st_size))
        time.sleep(300)

    os.fsync = slow_fsync
""")

WRITE = SLOW_FSYNC + textwrap.dedent("""
    from exporter.io import atomic_write
    atomic_write(sys.argv[2], b"new data " * 200_000)
""")

EXPORT = SLOW_FSYNC + textwrap.dedent("""
    import torch
    torch.set_num_threads(1)
    from exporter.cli.export import export
    from exporter.cli.main import main
    force = ["--force"] if any(p.name == "force" for p in export.params) else []  # replace the 320 file
    sys.argv = ["yexport", "export", "yolov5n", "--img", "256", "--no-check", "-o", sys.argv[2], "--name", "n", *force]
    main()
""")


def kill_in_fsync(script: str, marker: Path, *args: str | Path, wait: float = 180.0) -> int:
    """Run ``script`` in a child; SIGKILL it as soon as it sits in fsync. Returns the size of the file
    being synced when it was killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(marker), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + wait
        while not marker.exists() or not marker.read_text():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the writer ended (rc {proc.returncode}) before fsync:\n{out.decode()}\n{err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the writer never reached fsync")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    return int(marker.read_text())


def temp_files(d: Path) -> list[Path]:
    return sorted(d.glob(".*.tmp"))


def test_killed_writer_leaves_no_onnx(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    size = kill_in_fsync(WRITE, tmp_path / "marker", target)
    assert size == len(b"new data " * 200_000)  # the whole payload was in the temporary file
    assert not target.exists()
    assert list(tmp_path.glob("*.onnx")) == []
    (tmp,) = temp_files(tmp_path)  # what the killed writer left: a hidden temporary file, not an .onnx
    assert tmp.name.startswith(".model.onnx.") and tmp.stat().st_size == size
    # the next writer of that file removes the leftover
    atomic_write(target, b"complete")
    assert target.read_bytes() == b"complete" and temp_files(tmp_path) == []


def test_killed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old, good file")
    kill_in_fsync(WRITE, tmp_path / "marker", target)
    assert target.read_bytes() == b"old, good file"
    assert list(tmp_path.glob("*.onnx")) == [target]


@pytest.mark.slow
def test_killed_export_leaves_the_old_file(tmp_path: Path, n320: Exported) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old = out / "n.onnx"
    shutil.copy(n320.path, old)
    before = old.read_bytes()
    size = kill_in_fsync(EXPORT, tmp_path / "marker", out)
    assert size > 1_000_000 and size != len(before)  # it was writing the new graph (256, not 320)
    assert old.read_bytes() == before
    assert sorted(p.name for p in out.glob("*.onnx")) == ["n.onnx"]
    assert not (out / "n.json").exists()  # the manifest comes after the file: never one without the other
    (tmp,) = temp_files(out)
    assert tmp.name.startswith(".n.onnx.")


# ------------------------------------------------------------------------- the .onnx + manifest pair

PAIR_WRITER = textwrap.dedent("""
    import sys
    from exporter.io import PairWriter
    target, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(rounds):
        data = (f"{tag}-{i}-".encode()) * (1000 + 7919 * i % 50_000)
        with PairWriter(target) as w:
            w.stage(data)
            w.commit({"file": None, "sha256": None, "bytes": None, "writer": tag, "round": i})
""")


def test_concurrent_pair_writers_always_leave_a_matching_pair(tmp_path: Path) -> None:
    """Two processes commit 40 pairs each to one name: the final pair agrees, and so does every pair a
    reader sees between commits, except in the moment between one writer's two renames."""
    from exporter.io import read_manifest

    target = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", PAIR_WRITER, str(target), tag, "40"], cwd=ROOT, env=env)
             for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    manifest = read_manifest(target)
    assert manifest["writer"] in ("a", "b") and manifest["round"] == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]  # no temporaries left


@pytest.mark.slow
def test_concurrent_exports_to_one_name_agree(tmp_path: Path) -> None:
    """Two real `yexport export` runs (different seeds, so different bytes) into one folder and name."""
    from exporter.io import read_manifest

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "exporter.cli.main", "export", "yolov5n", "--img", "64", "--no-check", "-o", str(out),
           "--name", "n"]
    procs = [subprocess.Popen([*cmd, "--seed", seed], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for seed in ("1", "2")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    manifest = read_manifest(out / "n.onnx")  # raises when the manifest names other bytes
    assert manifest["model"]["weights"] in ("synthetic (seed 1)", "synthetic (seed 2)")
    assert sorted(p.name for p in out.iterdir()) == ["n.json", "n.onnx"]


def test_a_kill_between_the_renames_is_detected_by_the_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.io as eio
    from exporter.errors import InputError
    from exporter.io import PairWriter, read_manifest

    target = tmp_path / "m.onnx"
    with PairWriter(target) as w:
        w.stage(b"old model")
        w.commit({"v": "old"})
    assert read_manifest(target)["v"] == "old"
    real_replace = os.replace
    calls: list[str] = []

    def replace_then_die(src, dst):
        calls.append(str(dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill between the two renames leaves
        real_replace(src, dst)

    monkeypatch.setattr(eio.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt), PairWriter(target) as w:
        w.stage(b"new model")
        w.commit({"v": "new"})
    monkeypatch.undo()
    assert calls == [str(target), str(target.with_suffix(".json"))]  # the .onnx is renamed first
    assert target.read_bytes() == b"new model"
    with pytest.raises(InputError, match="does not match"):
        read_manifest(target)
    assert temp_files(tmp_path) == []  # the manifest's temporary was removed on the way out
    with PairWriter(target) as w:  # the next export of that name repairs the pair
        w.stage(b"newer model")
        w.commit({"v": "newer"})
    assert read_manifest(target)["v"] == "newer"


def test_the_sweep_spares_a_live_writers_temporary(tmp_path: Path) -> None:
    from exporter.io import STALE_SECONDS, atomic_write

    target = tmp_path / "m.onnx"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".m.onnx.{sleeper.pid}.abcd1234.tmp"
        live.write_bytes(b"being written")
        dead = tmp_path / ".m.onnx.999999999.abcd1234.tmp"
        dead.write_bytes(b"left by a killed writer")
        old = tmp_path / ".m.onnx.XyZ12345.tmp"  # an old-style name without a pid
        old.write_bytes(b"ancient")
        os.utime(old, (time.time() - STALE_SECONDS - 10,) * 2)
        young = tmp_path / ".m.onnx.AbC12345.tmp"
        young.write_bytes(b"someone's, unknown")
        atomic_write(target, b"data")
        assert live.exists() and young.exists()
        assert not dead.exists() and not old.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
