"""The YOLOv5 model zoo, safe checkpoint loading, and one entry point for every model source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import InputError, ModelError
from exporter.io import regular_file
from exporter.models.zoo import DEFAULT_MODEL, builtin_names, builtin_path, read_config

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_MODEL", "LoadedModel", "build_model", "builtin_names", "load_model"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(
    source: str | Path = DEFAULT_MODEL,
    *,
    cfg: str | Path | None = None,
    nc: int | None = None,
    seed: int = 0,
    trust_checkpoint: bool = False,
    weights: str | Path | None = None,
    strict_weights: bool = True,
) -> LoadedModel:
    """Resolve what a user named: a built-in name, a YAML config, a checkpoint (optionally with ``cfg``
    for a plain state_dict), or the user's own code, ``pkg.module:factory`` / ``file.py:factory``
    (importing it runs that code; ``weights``: a state_dict loaded over the factory's model, see
    :mod:`exporter.models.factory`). Models built from a config get seeded realistic weights
    (see :func:`exporter.models.weights.calibrate`), so the same name and seed always give the same model.
    """
    from exporter.models.factory import load_factory, parse_factory
    from exporter.models.weights import calibrate_cached

    src = str(source)
    if parse_factory(src) is not None:
        return load_factory(src, seed=seed, weights=weights, strict=strict_weights, trust_checkpoint=trust_checkpoint)
    if weights is not None:
        raise InputError(f"--weights {weights}: only for a factory model (pkg.module:factory or file.py:factory); "
                         "a YOLOv5 state_dict is the MODEL itself, with --cfg")
    path = builtin_path(src)
    kind = "builtin" if path else None
    if path is None:
        path = Path(src)
        if not path.exists():
            names = ", ".join(builtin_names())
            raise InputError(f"{src}: no such file or built-in model (built-ins: {names})")
        if path.is_dir():
            raise InputError(f"{src}: is a directory; give a YAML config or a checkpoint file")
        regular_file(path, "model file")  # a FIFO or a device would hang the reader; permission denied says so
        kind = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "checkpoint"
    if kind in ("builtin", "yaml"):
        model = build_model(path, nc=nc, seed=seed)
        sha = _sha256(path)
        calibrate_cached(model, sha, seed=seed, nc=nc)  # the BatchNorm state from the user's cache when there
        return LoadedModel(model, path.stem, src, kind, sha, f"synthetic (seed {seed})",
                           {"generation": model.generation})
    from exporter.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(path, cfg=cfg, nc=nc, trust=trust_checkpoint)
    return LoadedModel(model.eval(), path.stem, src, info.pop("kind", "checkpoint"), _sha256(path),
                       f"checkpoint {path.name}", info)
