"""Fixtures for the model tests: checkpoints written in the official YOLOv5 pickle layout."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from exporter.models import common
from exporter.models.yolo import Model

FAKE_MODULES = ("models", "models.yolo", "models.common")
COMMON_CLASSES = ("Conv", "C3", "Bottleneck", "BottleneckCSP", "Concat", "SPPF", "SPP", "Focus")


@contextmanager
def fake_yolov5_package() -> Iterator[dict[type, type]]:
    """Put a stand-in for the official ``models`` package into ``sys.modules``: subclasses of our
    modules re-labelled ``models.common.Conv``, ``models.yolo.DetectionModel``, ... Yields
    ``{our class: re-labelled class}`` (``Model`` maps to ``DetectionModel``; ``Model`` itself is in
    ``models.yolo`` too). The package is removed again on exit."""
    pkg = types.ModuleType("models")
    pkg.__path__ = []  # a package
    yolo = types.ModuleType("models.yolo")
    com = types.ModuleType("models.common")
    pkg.yolo, pkg.common = yolo, com  # type: ignore[attr-defined]

    def relabel(base: type, module: types.ModuleType, name: str) -> type:
        cls = type(name, (base,), {"__module__": module.__name__, "__qualname__": name})
        setattr(module, name, cls)
        return cls

    mapping: dict[type, type] = {getattr(common, n): relabel(getattr(common, n), com, n) for n in COMMON_CLASSES}
    mapping[common.Detect] = relabel(common.Detect, yolo, "Detect")
    relabel(Model, yolo, "Model")
    mapping[Model] = relabel(Model, yolo, "DetectionModel")
    saved = {k: sys.modules.get(k) for k in FAKE_MODULES}
    sys.modules.update({"models": pkg, "models.yolo": yolo, "models.common": com})
    try:
        yield mapping
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def as_official(model: Model, mapping: dict[type, type], generation: str) -> torch.nn.Module:
    """A copy of ``model`` whose classes carry the official names, in the layout of that generation."""
    m = deepcopy(model)
    for mod in m.modules():
        if type(mod) in mapping:
            mod.__class__ = mapping[type(mod)]
    det = m.model[-1]
    if generation == "v5.0":
        m.__class__ = sys.modules["models.yolo"].Model
        # v5.0 keeps the pixel-sized anchor grid as a buffer
        det.register_buffer("anchor_grid", (det.anchors * det.stride.view(-1, 1, 1)).view(det.nl, 1, -1, 1, 1, 2))
        m.names = list(m.names)
    else:
        m.names = dict(enumerate(m.names))  # v7.0 keeps names as a dict
    m.yaml = {**m.yaml, "ch": 3}
    return m


def write_official(model: Model, path: Path, generation: str = "v6+", *, ema: Model | None = None,
                   legacy: bool = False) -> Path:
    """Write ``model`` (and ``ema``, if given) as an official YOLOv5 checkpoint: fp16 model objects in a
    training dict, as ``torch.save`` writes it when the YOLOv5 source is importable (``legacy``: in the
    pre-zip format of torch < 1.6)."""
    with fake_yolov5_package() as mapping:
        ckpt = {"epoch": -1, "best_fitness": None, "model": as_official(model, mapping, generation).half(),
                "ema": as_official(ema, mapping, generation).half() if ema is not None else None,
                "updates": None, "optimizer": None, "opt": {"imgsz": 640, "weights": "yolov5s.pt"},
                "git": {"remote": "https://github.com/ultralytics/yolov5", "branch": "master"},
                "date": "2022-11-22T12:00:00"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy format warns that it cannot find the classes' source
            torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    assert "models" not in sys.modules
    return path


@pytest.fixture(scope="session")
def yolov5_official() -> types.SimpleNamespace:
    """``.write(model, path, generation="v6+", ema=None)`` writes an official-layout checkpoint;
    ``.package()`` is the context manager that makes the fake ``models`` package importable."""
    return types.SimpleNamespace(write=write_official, package=fake_yolov5_package)
