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
    from exporter.cli.main import main
    sys.argv = ["yexport", "export", "yolov5n", "--img", "256", "--no-check", "-o", sys.argv[2], "--name", "n"]
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
