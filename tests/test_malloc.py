"""The CLI tunes glibc's allocator for PyTorch forwards (:mod:`exporter.cli._malloc`): a freed big block
stays in the process for the next layer instead of going back to the kernel."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt thresholds are glibc's")

# how far the resident size falls when one 64 MiB block (above glibc's largest default mmap
# threshold, 32 MiB) is written and freed
PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "keep":
    from exporter.cli._malloc import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # once per process, then a no-op
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
n = 64 << 20
p = libc.malloc(n)
libc.memset(p, 1, n)
before = rss()
libc.free(p)
print((before - rss()) >> 20)
"""


def _released_mib(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


@glibc
def test_a_freed_big_block_stays_in_the_process() -> None:
    assert _released_mib("default") >= 48  # glibc's default: mmapped, and unmapped on free
    assert _released_mib("keep") <= 8  # kept for the next allocation


def test_every_model_command_tunes_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.cli import _malloc
    from exporter.cli._options import load_from_cli

    calls: list[int] = []
    monkeypatch.setattr(_malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    lm = load_from_cli(str(ROOT / "fixtures" / "models" / "yolov5n.yaml"), None, None, 0, False)
    assert calls == [1] and lm.model is not None


def test_without_mallopt_nothing_is_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library has no mallopt (macOS) or cannot be opened by None (Windows), it says so."""
    from exporter.cli import _malloc

    class NoMallopt:  # a C library without the symbol: attribute access fails
        def __init__(self, name: object) -> None:
            self.name = name

    monkeypatch.setattr(_malloc, "_done", False)
    monkeypatch.setattr(_malloc.ctypes, "CDLL", NoMallopt)
    assert _malloc.keep_freed_memory() is False

    def windows(name: object) -> None:
        raise TypeError("LoadLibrary() argument 1 must be str, not None")

    monkeypatch.setattr(_malloc.ctypes, "CDLL", windows)
    assert _malloc.keep_freed_memory() is False
