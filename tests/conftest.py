"""Shared test configuration: one thread per runtime, the calibrated-weights cache, a quieter garbage collector,
and markers that skip with a reason where a GPU or a browser is missing."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from exporter.models import load_model as _load_model

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
    # The same for onnxruntime (its pool spins between the small runs of the parity checks) and for the
    # yexport processes that some tests start.
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    onnxruntime.SessionOptions = _one_thread_session_options(onnxruntime.SessionOptions)  # type: ignore[misc]
    # Calibrated built-in weights (exporter.models.weights) are cached in the project's pytest cache, not
    # in the user's ~/.cache: the tests neither read what another version left there nor write to it,
    # and the CLI processes they start share the cache. Tests of the cache itself set their own folder.
    os.environ.pop("YEXPORT_NO_CACHE", None)
    os.environ["YEXPORT_CACHE_DIR"] = str(_weights_cache(config))
    # Tracing, deep copies and onnx protos allocate millions of small objects: with the default gen-0
    # threshold (700) the cyclic collector runs thousands of times per export and takes about a tenth of
    # the suite's CPU. Collect rarely, and never rescan what is alive once the test modules are imported.
    gc.set_threshold(50_000, 20, 100)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


def _one_thread_session_options(base: type) -> type:
    class OneThread(base):  # type: ignore[valid-type,misc]
        """``onnxruntime.SessionOptions`` with one intra-op and one inter-op thread by default."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.intra_op_num_threads = 1
            self.inter_op_num_threads = 1

    OneThread.__name__ = OneThread.__qualname__ = base.__name__
    return OneThread


def _weights_cache(config: pytest.Config) -> Path:
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("yexport-weights"))
    folder = Path(tempfile.mkdtemp(prefix="yexport-tests-cache-"))  # not the exporter's own prefix
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    return folder


# --------------------------------------------------------------------------- built-in models, shared

_LOADED: dict[tuple[str, int], Any] = {}


def builtin(name: str, seed: int = 0) -> Any:
    """``load_model(name, seed=seed)`` (a LoadedModel), loaded once per session."""
    key = (name, seed)
    if key not in _LOADED:
        _LOADED[key] = _load_model(name, seed=seed)
    return _LOADED[key]


@contextmanager
def shared_builtin_models() -> Iterator[None]:
    """Let the CLI's ``load_model`` hand out the session's already loaded built-ins (same name, seed,
    no --cfg/--nc/--weights); anything else loads as usual. The commands never modify the model they are
    given (the pipeline and the analyses work on copies; tests of each say so)."""
    import exporter.models as models
    from exporter.models.zoo import builtin_path

    original = models.load_model  # a test's own patch, or the real one

    def load(source: Any = models.DEFAULT_MODEL, *, cfg: Any = None, nc: int | None = None, seed: int = 0,
             trust_checkpoint: bool = False, **factory: Any) -> Any:
        if cfg is None and nc is None and not factory and builtin_path(str(source)) is not None:
            return builtin(str(source), seed)
        return original(source, cfg=cfg, nc=nc, seed=seed, trust_checkpoint=trust_checkpoint, **factory)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "load_model", load)
        yield


@pytest.fixture(autouse=True)
def _shared_builtin_models() -> Iterator[None]:
    """Every test's in-process commands share the built-in models loaded once (building and calibrating
    one costs a second or more); a test that patches ``load_model`` itself still wins."""
    with shared_builtin_models():
        yield


# --------------------------------------------------------------------------- a user's model file


def user_module_fixture(name: str, source: str) -> Any:
    """A module-scoped fixture ``name``: the path of a user's model file ``NAME.py`` holding ``source``,
    in a folder of its own, as ``yexport export NAME.py:factory`` is given it."""

    @pytest.fixture(scope="module", name=name)
    def user_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
        path = tmp_path_factory.mktemp("user") / f"{name}.py"
        path.write_text(source)
        return path

    return user_module


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
