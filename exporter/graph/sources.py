"""Where a graph command's model comes from (a path, checked by the one loader, or a ModelProto),
and a pause of the cyclic garbage collector while big acyclic structures are built. Kept apart so
that ``inspect`` needs neither the canonicalization nor the snapshot format."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporter.errors import InputError


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building tens of thousands of small acyclic objects
    otherwise triggers full collections over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if not gc.get_freeze_count():  # nothing frozen by the application: ours to use
                # what was made meanwhile joins the oldest generation without a scan (the first
                # collection after re-enabling would otherwise walk all of it at once)
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def load_any(src: Any) -> Any:
    """(ModelProto, base_dir, path, scan) from a path or a ModelProto; ``scan`` is what the loader's
    quick check read of a plain file (:class:`exporter.graph.load.Scan`), for the canonicalizer."""
    from exporter.graph.load import load_scanned

    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        model, scan = load_scanned(p, load_weights=False)
        return model, str(p.resolve().parent), str(src), scan
    if hasattr(src, "graph") and hasattr(src, "opset_import"):
        return src, None, None, None
    raise InputError(f"expected an ONNX file path or a ModelProto, got {type(src).__name__}")
