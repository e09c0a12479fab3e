"""Checkpoints in the pickle layout Ultralytics writes for YOLOv8 / YOLO11 detectors, made from our own
modules (exporter.models.v8) re-labelled with Ultralytics' class names in a stand-in ``ultralytics``
package that exists only while the file is written."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from exporter.io import load_yaml
from exporter.models import common, v8
from exporter.models.weights import calibrate

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"yolov8n": ROOT / "fixtures/models/v8/yolov8n.yaml", "yolo11n": ROOT / "fixtures/models/v8/yolo11n.yaml"}
COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light"]
_PLACES = {
    "ultralytics.nn.modules.conv": {"Conv": common.Conv, "DWConv": v8.DWConv, "Concat": common.Concat},
    "ultralytics.nn.modules.block": {n: getattr(v8, n) for n in ("C2f", "C3k2", "C3k", "C3", "SPPF", "Bottleneck",
                                                                  "C2PSA", "PSABlock", "Attention", "DFL")},
    "ultralytics.nn.modules.head": {"Detect": v8.Detect},
    "ultralytics.nn.tasks": {"DetectionModel": v8.DetectionModel},
}
_NAMES = ("ultralytics", "ultralytics.nn", "ultralytics.nn.modules", *_PLACES, "ultralytics.utils")


@contextmanager
def fake_ultralytics() -> Iterator[dict[type, type]]:
    """``{our class: re-labelled class}`` while a stand-in ``ultralytics`` package is importable."""
    mods = {n: types.ModuleType(n) for n in _NAMES}
    for n in ("ultralytics", "ultralytics.nn", "ultralytics.nn.modules"):
        mods[n].__path__ = []  # type: ignore[attr-defined]
    mapping: dict[type, type] = {}
    for where, classes in _PLACES.items():
        for name, base in classes.items():
            cls = type(name, (base,), {"__module__": where, "__qualname__": name})
            setattr(mods[where], name, cls)
            mapping[base] = cls
    ns = type("IterableSimpleNamespace", (types.SimpleNamespace,),
              {"__module__": "ultralytics.utils", "__qualname__": "IterableSimpleNamespace"})
    mods["ultralytics.utils"].IterableSimpleNamespace = ns  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in _NAMES}
    sys.modules.update(mods)
    try:
        yield mapping
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def build(name: str, seed: int = 0) -> v8.DetectionModel:
    """Our model of config ``name`` with seeded weights and calibrated BatchNorm statistics (eval)."""
    cfg = load_yaml(CONFIGS[name])
    torch.manual_seed(seed)
    model = v8.DetectionModel(cfg)
    calibrate(model, seed=seed)
    return model.eval()


def write(model: v8.DetectionModel, path: Path, *, names: list[str] | None = None, as_ema: bool = False) -> Path:
    """``model`` saved as Ultralytics saves a trained detector: the fp16 model object (``model``, or
    ``ema`` with ``model: None`` as a training run leaves it) in a dict with the training record."""
    with fake_ultralytics() as mapping:
        m = deepcopy(model)
        for mod in m.modules():
            if type(mod) in mapping:
                mod.__class__ = mapping[type(mod)]
        det = m.model[-1]
        det.__dict__.update(dynamic=False, export=False, format=None, max_det=300, xyxy=False, shape=None,
                            anchors=torch.empty(0), strides=torch.empty(0))
        names = names or [COCO[i % len(COCO)] + ("" if i < len(COCO) else str(i)) for i in range(m.nc)]
        ns = sys.modules["ultralytics.utils"].IterableSimpleNamespace
        m.names = dict(enumerate(names))
        m.yaml = {**m.yaml, "ch": 3, "yaml_file": f"{m.yaml.get('scale', '')}.yaml"}
        m.args = ns(task="detect", mode="train", imgsz=640, batch=16, model="yolo.yaml")
        m.inplace = True
        m = m.half()
        ckpt = {"date": "2025-06-01T12:00:00", "version": "8.4.0", "license": "AGPL-3.0 License (https://ultralytics.com/license)",
                "docs": "https://docs.ultralytics.com", "epoch": -1 if not as_ema else 99, "best_fitness": None,
                "model": None if as_ema else m, "ema": m if as_ema else None, "updates": None, "optimizer": None,
                "train_args": {"task": "detect", "imgsz": 640, "batch": 16}, "train_metrics": {"metrics/mAP50(B)": 0.5},
                "train_results": None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(ckpt, path)
    assert "ultralytics" not in sys.modules
    return path


def real_ultralytics_classes(model: nn.Module) -> set[str]:
    return {f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()}
