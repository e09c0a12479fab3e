"""Reference forwards reused within one process: ``--variants`` exports one model several times, and
every variant's parity check needs the same PyTorch forwards (fp32, the float64 truth) on the same
inputs. :func:`cached_reference` builds them once per source model, head, training mode, shapes,
inputs, seed, device and precision, and recomputes only the forward of the exported module (the
fused copy) when that module differs.

Models are recognised by content (a hash of their structure and every parameter and buffer), never
by identity alone, so a model changed in place between two calls gets a fresh reference. The cache
holds at most a few entries and a bounded number of bytes; :func:`clear` empties it.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from exporter.parity.reference import Reference, build_reference, exported_forwards

MAX_ENTRIES = 2
MAX_BYTES = 768 << 20  # a dynamic-batch yolov5x reference is ~0.4 GB; more is not kept


@dataclass
class _Entry:
    ref: Reference  # cases without the exported forward
    exported: dict[str, list[list[np.ndarray] | None]] = field(default_factory=dict)  # fingerprint -> per case
    nbytes: int = 0


_CACHE: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()


def clear() -> None:
    """Forget every cached reference (frees its memory)."""
    _CACHE.clear()


def fingerprint(model: Any) -> str:
    """A hash of ``model``'s structure (its repr) and the bytes of every parameter and buffer."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(model).encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        a = t.detach()
        if a.device.type != "cpu":
            a = a.cpu()
        if a.dtype == torch.bfloat16:
            a = a.view(torch.int16)
        h.update(np.ascontiguousarray(a.numpy()).data)
    for attr in ("training",):
        h.update(f"{attr}={getattr(model, attr, None)}".encode())
    return h.hexdigest()


def _images_key(images: str | None) -> Any:
    if not images:
        return None
    try:
        st = os.stat(images)
        return (str(images), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(images),)


def _arrays_bytes(ref: Reference) -> int:
    total = 0
    for c in ref.cases:
        for v in vars(c).values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, (list, tuple)):
                total += sum(a.nbytes for a in v if isinstance(a, np.ndarray))
    return total


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def cached_reference(model: Any, shapes: list[tuple[int, ...]], *, exported: Any = None, **kwargs: Any) -> Reference:
    """:func:`exporter.parity.build_reference` (same arguments) with its forwards reused across calls in
    this process: same model content, shapes and other arguments give the same forwards; a different
    ``exported`` module only costs its own forward. Returns a Reference whose cases are fresh objects
    (their arrays are shared and must not be written to)."""
    head = kwargs.get("head", "decode")
    training = bool(kwargs.get("training", False))
    device = str(kwargs.get("device", "cpu"))
    try:
        key = (fingerprint(model), _hashable(shapes), _images_key(kwargs.get("images")),
               tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))
        hash(key)
        efp = fingerprint(exported) if exported is not None else None
    except Exception:  # a model whose tensors cannot be read as bytes, an unhashable argument: no cache
        return build_reference(model, shapes, exported=exported, **kwargs)
    entry = _CACHE.get(key)
    if entry is None:
        ref = build_reference(model, shapes, exported=None, **kwargs)
        entry = _Entry(ref, nbytes=_arrays_bytes(ref))
        _store(key, entry)
    else:
        _CACHE.move_to_end(key)
    base = entry.ref
    if exported is None:
        return replace(base, cases=[replace(c) for c in base.cases], notes=list(base.notes))
    assert efp is not None
    ye = entry.exported.get(efp)
    if ye is None:
        ye = exported_forwards(exported, base, head=head, training=training, device=device)
        entry.exported = {efp: ye}  # one exported module per entry: the variants of one run share it
        entry.nbytes = _arrays_bytes(base) + sum(a.nbytes for outs in ye if outs for a in outs)
        _trim()
    cases = [replace(c, exported=y) for c, y in zip(base.cases, ye, strict=True)]
    return replace(base, cases=cases, fused=True, notes=list(base.notes))


def _store(key: tuple[Any, ...], entry: _Entry) -> None:
    _CACHE[key] = entry
    _CACHE.move_to_end(key)
    _trim()


def _trim() -> None:
    while len(_CACHE) > MAX_ENTRIES or (len(_CACHE) > 1 and sum(e.nbytes for e in _CACHE.values()) > MAX_BYTES):
        _CACHE.popitem(last=False)
    if _CACHE and sum(e.nbytes for e in _CACHE.values()) > MAX_BYTES:  # one entry too big to keep
        _CACHE.clear()
