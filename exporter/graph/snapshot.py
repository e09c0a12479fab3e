"""Canonical snapshot text of an ONNX graph, for golden files reviewed as a unified diff.

The text lists graph inputs and outputs, initializers (shape, dtype and a content hash, never the
values) and the nodes in canonical topological order with op, attributes and the dtype and shape of
every input and output. Node and value names are replaced by positions (``%in0``, ``%w3``, ``%12``),
so re-exporting the same model, renaming its nodes and values, or reordering its node list gives
byte-identical text. Graph input and output names are the model's interface and stay (``io_names``).

Content hashes are sha256 over the tensor bytes (first 16 hex digits); external data is read in
1 MiB chunks, so a snapshot of a model with gigabytes of weights stays small in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, InputError
from exporter.graph._canon import canonicalize, load_any, no_gc, render_snapshot

__all__ = ["snapshot", "write_snapshot"]


def snapshot(path_or_model: str | os.PathLike[str] | Any, *, io_names: bool = True, metadata: bool = True,
             include: Any = ()) -> str:
    """Canonical, deterministic snapshot text of an ONNX file or ModelProto.

    The metadata is what defines the graph (stride, names, head and BatchNorm mode, image size,
    dynamic axes, graph-defining options); ``include=("run-metadata",)`` adds the run record
    (parity options, stage list, source path, versions, seed)."""
    model, base_dir, path, scan = load_any(path_or_model)
    with no_gc():
        g = canonicalize(model, base_dir=base_dir, path=path, text=True, scan=scan)
        text = render_snapshot(g, io_names=io_names, metadata=metadata, run_metadata=_run_metadata(include))
    if g.notes:
        head, _, rest = text.partition("\n")
        text = head + "\n" + "".join(f"# note: {n}\n" for n in g.notes) + rest
    return text


def _run_metadata(include: Any) -> bool:
    from exporter.identity import RUN_METADATA

    items = [include] if isinstance(include, str) else list(include or ())
    names = {x.strip() for it in items for x in str(it).split(",") if x.strip()}
    bad = names - {RUN_METADATA}
    if bad:
        raise ConfigError(f"unknown --include value {sorted(bad)[0]!r} (choose from {RUN_METADATA})")
    return RUN_METADATA in names


def write_snapshot(text: str, out: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``out`` atomically (temp file in the same folder, then ``os.replace``)."""
    from exporter.io import atomic_write

    p = Path(out)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{p}: folder {folder} does not exist")
    return atomic_write(p, text)
