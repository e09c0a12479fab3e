"""The calibrated BatchNorm state cached on disk: bit-identical to calibrating, never trusted blindly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from exporter.models import load_model
from exporter.models.weights import cache_dir
from exporter.models.zoo import builtin_path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """yolov5n's layout at a tenth of its width: quick to calibrate."""
    cfg = yaml.safe_load(builtin_path("yolov5n").read_text())
    cfg["width_multiple"] = 0.0625
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _state(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(path, seed=seed).model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("bn-*.npz"))


def test_cached_load_is_bit_identical(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YEXPORT_NO_CACHE", "1")
    uncached = _state(tiny)
    monkeypatch.delenv("YEXPORT_NO_CACHE")
    folder = tmp_path / "cache"
    monkeypatch.setenv("YEXPORT_CACHE_DIR", str(folder))
    first = _state(tiny)  # calibrates and writes
    assert len(_files(folder)) == 1
    second = _state(tiny)  # reads
    assert _same(uncached, first) and _same(uncached, second)
    assert not _same(uncached, _state(tiny, seed=1))  # the seed is part of the key
    assert len(_files(folder)) == 2


@pytest.mark.parametrize("garbage", [b"", "pickle", "nan", *(pytest.param(g, marks=pytest.mark.slow) for g in (
    b"not a zip at all", b"PK\x03\x04" + b"\0" * 64, "wrong shape", "wrong names"))])
def test_corrupt_cache_is_ignored_and_replaced(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               garbage: object) -> None:
    folder = tmp_path / "cache"
    monkeypatch.setenv("YEXPORT_CACHE_DIR", str(folder))
    good = _state(tiny)
    (path,) = _files(folder)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if isinstance(garbage, bytes):
        path.write_bytes(garbage)
    else:
        k = next(iter(arrays))
        if garbage == "pickle":
            arrays[k] = np.array([{"a": 1}], dtype=object)
        elif garbage == "wrong shape":
            arrays[k] = arrays[k][:-1]
        elif garbage == "wrong names":
            arrays["model.99.bn.weight"] = arrays.pop(k)
        else:
            arrays[k] = np.full_like(arrays[k], np.nan) if arrays[k].dtype.kind == "f" else arrays[k]
            k2 = next(n for n in arrays if n.endswith("running_var"))
            arrays[k2] = np.full_like(arrays[k2], np.nan)
        with path.open("wb") as f:
            np.savez(f, **arrays)
    assert _same(good, _state(tiny))
    with np.load(path, allow_pickle=False) as npz:  # replaced by a sound file
        assert all(np.array_equal(npz[k], good[k].numpy()) for k in npz.files)


def test_unwritable_cache_dir_still_loads(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes anyway: refuse as the kernel would
        import exporter.io

        def refuse(path: object, data: object) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(exporter.io, "atomic_write", refuse)
    try:
        monkeypatch.setenv("YEXPORT_CACHE_DIR", str(folder))
        assert _same(_state(tiny), _state(tiny))
        assert _files(folder) == []
    finally:
        folder.chmod(0o700)


def test_cache_dir_is_a_file_still_loads(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("YEXPORT_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setenv("YEXPORT_NO_CACHE", "1")
    reference = _state(tiny)
    monkeypatch.delenv("YEXPORT_NO_CACHE")
    assert _same(reference, _state(tiny))


def test_cache_dir_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("YEXPORT_CACHE_DIR", raising=False)
    monkeypatch.delenv("YEXPORT_NO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "yexport"
    monkeypatch.setenv("YEXPORT_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.setenv("YEXPORT_NO_CACHE", "1")
    assert cache_dir() is None
