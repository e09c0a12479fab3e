"""A model and how it was obtained (:class:`LoadedModel`), and building a model from its config: the
leaf that the loaders (checkpoints, factories) and the package's :func:`~exporter.models.load_model` share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ModelError
from exporter.models.zoo import builtin_path, read_config

if TYPE_CHECKING:
    from torch import nn


@dataclass
class LoadedModel:
    """A model plus how it was obtained (for manifests and reports)."""

    model: nn.Module
    name: str  # short name for output files, e.g. 'yolov5s'
    source: str  # what the user gave
    kind: str  # 'builtin' | 'yaml' | 'checkpoint' | 'state_dict'
    sha256: str  # of the config text or checkpoint file
    weights: str  # 'synthetic (seed 0)' or where the weights came from
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "kind": self.kind, "sha256": self.sha256,
                "weights": self.weights, **self.extra}


def build_model(cfg: str | Path | dict, *, nc: int | None = None, anchors: list | None = None, seed: int | None = None):
    """Build a YOLOv5 ``Model`` from a config dict, a YAML path or a built-in name (default init).

    With ``seed`` the initial weights are reproducible (torch's global RNG is left untouched).
    """
    import torch

    from exporter.models.v8 import DetectionModel, is_ultralytics_config
    from exporter.models.yolo import Model

    where = "config"
    if not isinstance(cfg, dict):
        path = builtin_path(str(cfg)) or Path(cfg)
        where = str(path)
        cfg = read_config(path)
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            if is_ultralytics_config(cfg):  # YOLOv8 / YOLO11: scales, an anchor-free Detect
                return DetectionModel(cfg, nc=nc)
            return Model(cfg, nc=nc, anchors=anchors)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
