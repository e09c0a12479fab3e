"""Built-in model names: one per YAML config shipped in ``fixtures/models``. No torch import."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import InputError, ModelError

DEFAULT_MODEL = "yolov5s"


def configs_dir() -> Path:
    """The shipped configs: inside the wheel, or ``fixtures/models`` in a source checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parents[1] / "fixtures" / "models"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def builtin_path(name: str) -> Path | None:
    """The shipped config of a built-in name; only a bare name (no folder) is a built-in."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != Path(name).name:
        return None
    p = configs_dir() / f"{name}.yaml"
    return p if p.is_file() else None


def read_config(path: str | Path) -> dict:
    """Read a YOLOv5 YAML config with one-line errors for missing, non-regular or oversized files and
    bad YAML (bounded nesting and alias expansion, see :func:`exporter.io.load_yaml`)."""
    from exporter.io import load_yaml

    p = Path(path)
    try:
        cfg = load_yaml(p, "YAML config")
    except InputError:
        if not p.exists() and not p.is_symlink():
            raise InputError(f"{p}: no such file (give a YAML config, a checkpoint or a built-in name; "
                             "see `yexport info --list`)") from None
        raise
    if not isinstance(cfg, dict):
        raise ModelError(f"{p}: expected a YAML mapping with nc, anchors, backbone and head")
    return cfg
