"""The YOLOv5 model zoo, safe checkpoint loading, and one entry point for every model source."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import InputError
from exporter.io import regular_file
from exporter.models.build import LoadedModel, build_model, sha256_file
from exporter.models.zoo import DEFAULT_MODEL, builtin_names, builtin_path

__all__ = ["DEFAULT_MODEL", "LoadedModel", "build_model", "builtin_names", "load_model"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


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
        sha = sha256_file(path)
        calibrate_cached(model, sha, seed=seed, nc=nc)  # the BatchNorm state from the user's cache when there
        return LoadedModel(model, path.stem, src, kind, sha, f"synthetic (seed {seed})",
                           {"generation": model.generation})
    from exporter.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(path, cfg=cfg, nc=nc, trust=trust_checkpoint)
    return LoadedModel(model.eval(), path.stem, src, info.pop("kind", "checkpoint"), sha256_file(path),
                       f"checkpoint {path.name}", info)
