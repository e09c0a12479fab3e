"""No silent overwrites: an export refuses to replace a file made with other graph-defining options.

The existing file's metadata is read without its weights (``load_onnx(load_weights=False)``), and
its graph-defining options (``yexport.graph_options``, or the graph part of a legacy
``yexport.options``) and model name are compared with the new export's. Run-record options
(parity tolerances, providers, ``--no-check``, ...) never block a refresh; neither do new weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, InputError

__all__ = ["export_targets", "graph_differences", "refuse_overwrite"]


def export_targets(stem: str, out_dir: str | Path, options: Any, variants: list[str] | None) -> list[tuple[Path, Any]]:
    """(path, options) of each file an export writes (the naming of :func:`exporter.api.export`)."""
    from exporter.options import variant_options

    out = Path(out_dir)
    if not variants:
        return [(out / f"{stem}.onnx", options)]
    return [(out / f"{stem}-{v}.onnx", variant_options(options, v)) for v in variants]


def _existing_identity(path: Path) -> dict[str, Any] | None:
    """Graph-defining options and model name of a yexport file; None when it has none."""
    from exporter.graph.load import load_onnx
    from exporter.identity import graph_identity

    meta = graph_identity({p.key: p.value for p in load_onnx(path, load_weights=False).metadata_props})
    if "yexport.graph_options" not in meta:
        return None
    try:
        opts = json.loads(meta["yexport.graph_options"])
    except ValueError:
        return None
    if not isinstance(opts, dict):
        return None
    if "yexport.model" in meta:
        opts = {"model": meta["yexport.model"], **opts}
    return opts


def graph_differences(path: Path, model_name: str, options: Any) -> list[str] | None:
    """``['keep_bn: true -> false', ...]`` between the file at ``path`` and a new export of
    ``model_name`` with ``options``; [] when they agree; None when ``path`` is no yexport file."""
    from exporter.identity import ABSENT_GRAPH_OPTIONS, split_options

    old = _existing_identity(path)
    if old is None:
        return None
    graph, _ = split_options(options.describe())
    new = {"model": model_name, **json.loads(json.dumps(graph))}
    old, new = {**ABSENT_GRAPH_OPTIONS, **old}, {**ABSENT_GRAPH_OPTIONS, **new}
    return [f"{k}: {json.dumps(old[k])} -> {json.dumps(new[k])}"
            for k in sorted(set(old) & set(new)) if old[k] != new[k]]


def refuse_overwrite(targets: list[tuple[Path, Any]], model_name: str, *, force: bool = False) -> None:
    """Raise :class:`ConfigError` (exit 2) when a target exists and was made differently."""
    if force:
        return
    for path, options in targets:
        if not path.exists():
            continue
        try:
            diffs = graph_differences(path, model_name, options)
        except InputError as exc:
            raise ConfigError(f"{path} exists and cannot be read as an ONNX file ({exc}); "
                              "remove it, choose another --name or -o, or give --force to replace it") from None
        if diffs is None:
            raise ConfigError(f"{path} exists and was not made by yexport (no graph options in its metadata); "
                              "choose another --name or -o, or give --force to replace it")
        if diffs:
            raise ConfigError(f"{path} exists and was made with other graph-defining options "
                              f"({'; '.join(diffs)}); choose another --name (or -o), or give --force to replace it")
