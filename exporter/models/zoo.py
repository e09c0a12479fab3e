"""Built-in model names: one per YAML config shipped in ``fixtures/models``. No torch import."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import ConfigError, InputError, ModelError

DEFAULT_MODEL = "yolov5s"


def configs_dir() -> Path:
    """The shipped configs: inside the wheel, or ``fixtures/models`` in a source checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parents[1] / "fixtures" / "models"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def builtin_path(name: str) -> Path | None:
    p = configs_dir() / f"{name}.yaml"
    return p if p.is_file() else None


def read_config(path: str | Path) -> dict:
    """Read a YOLOv5 YAML config with one-line errors for missing files and bad YAML."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file (give a YAML config, a checkpoint or a built-in name; see `yexport info --list`)")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (expected a YAML config)") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{p}: expected a YAML mapping with nc, anchors, backbone and head")
    return cfg
