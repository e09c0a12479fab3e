"""The console entry point leaves the cycle collector out of the interpreter's shutdown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# an atexit handler runs after main() has returned, during the shutdown it speeds up
PROBE = """
import atexit, gc, sys
atexit.register(lambda: print("collector", gc.isenabled(), gc.get_freeze_count() > 0))
sys.argv = ["yexport", *sys.argv[1:]]
from exporter.cli.main import main
main()
"""


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_collector_is_off_and_everything_frozen_when_the_shutdown_starts() -> None:
    proc = _probe("--version")
    assert proc.returncode == 0, proc.stderr
    assert "collector False True" in proc.stdout


def test_an_error_exit_keeps_its_code_and_message() -> None:
    proc = _probe("inspect", "no-such-file.onnx")
    assert proc.returncode == 2
    assert "collector False True" in proc.stdout
    assert proc.stderr.startswith("yexport: error: ") and "no-such-file.onnx" in proc.stderr
