"""Shared test configuration: markers that skip with a reason where a GPU or a browser is missing."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


@cache
def cuda_unusable_reason() -> str | None:
    """None when CUDA really works for both torch and onnxruntime, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # The tests check numbers and structure, not speed. One intra-op thread keeps them steady: at test
    # sizes more threads gain little, and spinning OpenMP workers on a busy 2-core machine cost a lot.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_reason = None
    browser_reason = None if shutil.which("chromium") else (
        "no 'chromium' on PATH: Debian's chromium package is not installed (make install-browser); Ubuntu has no "
        "chromium deb (chromium-browser is a snap that does not run headless here), see README")
    for item in items:
        if "gpu" in item.keywords:
            gpu_reason = gpu_reason or cuda_unusable_reason()
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu: {gpu_reason}"))
        if "browser" in item.keywords and browser_reason:
            item.add_marker(pytest.mark.skip(reason=f"browser: {browser_reason}"))
