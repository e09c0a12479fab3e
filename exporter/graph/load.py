"""The one guarded loader for ONNX files; never imports torch.

Every command that reads an ONNX file goes through :func:`load_onnx`. An ONNX file is untrusted
input (a pull request can carry one), so before anything is read:

* the file itself must be a regular file (a FIFO or a device would hang or never end) of at most
  2 GiB, the most a protobuf message can hold;
* every tensor's declared size (dtype x shape) must match what it holds inline, so nothing is ever
  allocated from a declaration alone;
* every external-data ``location`` must name a regular file inside the model's folder: absolute
  paths, ``..`` and symlinks that lead out of the folder are refused, and ``offset`` + the declared
  size must fit in the file (checked with ``stat``, before any read).

External data is then read only by the commands that need values (hashes and value differences
are streamed in chunks by :func:`iter_external` and :func:`exporter.graph.tensors.compare_streamed`); shape inference runs
on a weight-free copy (:mod:`exporter.graph.infer`).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import InputError

#: the most a protobuf message (and so an .onnx file without external data) can hold
MAX_MODEL_BYTES = 2 << 30
CHUNK = 1 << 20

_EXTERNAL = 1  # TensorProto.EXTERNAL
_STRING = 8
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True, slots=True)
class ExternalData:
    """A checked external-data reference: ``nbytes`` bytes at ``offset`` of ``path`` (resolved)."""

    location: str
    path: Path
    offset: int
    nbytes: int
    exists: bool


def model_dir(path: str | Path) -> Path:
    """The folder external data must stay inside: the resolved folder of the model file."""
    return Path(path).resolve().parent


@dataclass(slots=True)
class Scan:
    """What the loader's one quick pass over a plain model (:func:`_all_plain`) read, handed on so
    that the canonicalizer does not read it again: the initializers' names, messages, element types
    and dims in file order, and per node its serialized attributes (None: it has none)."""

    init_names: list[str]
    init_tensors: list[Any]
    init_meta: list[tuple[int, tuple[int, ...]]]
    attr_keys: list[bytes | None]


def load_onnx(path: str | Path, *, load_weights: bool = False):  # -> onnx.ModelProto
    """Parse ``path`` as an ONNX model and check every tensor it declares (see the module doc).

    With ``load_weights=False`` external data stays unread (a missing data file is then allowed:
    shapes and dtypes are still known); with ``load_weights=True`` it is read into the tensors.
    Raises :class:`InputError` (one line) for anything missing, unreadable, corrupt or hostile.
    """
    return load_scanned(path, load_weights=load_weights)[0]


def load_scanned(path: str | Path, *, load_weights: bool = False) -> tuple[Any, Scan | None]:
    """:func:`load_onnx`, and the :class:`Scan` of its quick pass when the model is plain (else None)."""
    p = Path(path)
    model, scan, _ = _checked(p, _parse(p, _read_model_file(p)), load_weights)
    return model, scan


def load_with_bytes(path: str | Path) -> tuple[Any, bytes | None]:
    """:func:`load_onnx` (weights unread), and the file's bytes as read when they hold the whole model (no
    external data; else None): what onnxruntime is handed, so that it runs the very bytes that were checked
    and parsed, without a second read or a serialization of the parsed copy."""
    p = Path(path)
    data = _read_model_file(p)
    model, _, external = _checked(p, _parse(p, data), False)
    return model, None if external else data


def _parse(p: Path, data: bytes) -> Any:
    from google.protobuf.message import DecodeError

    from exporter.graph.onnx_pb import messages

    try:
        model = messages().ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a readable ONNX model (corrupt, truncated or another format): "
                         f"{_first_line(exc)}") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and not model.opset_import):
        raise InputError(f"{p}: not an ONNX model (no graph found; is it another format?)")
    return model


def _checked(p: Path, model: Any, load_weights: bool) -> tuple[Any, Scan | None, bool]:
    """``model`` (parsed from ``p``) with every tensor checked (see the module doc), its :class:`Scan`, and
    whether any tensor is external data (left so: ``load_weights`` reads it in)."""
    scan = _all_plain(model)
    if scan is not None:  # the common case, checked in one quick pass: nothing external, nothing to read
        return model, scan, False
    base = model_dir(p)
    external = False
    for where, tensor in iter_tensors(model):
        ref = check_tensor(tensor, base, where=f"{p}: {where}", need_data=load_weights)
        if ref is None:
            continue
        if load_weights:
            tensor.raw_data = b"".join(_read_external(ref, f"{p}: {where}"))
            tensor.data_location = 0
            del tensor.external_data[:]
        else:
            external = True
    return model, None, external


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_model_file(p: Path) -> bytes:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file (give the path of an .onnx file)") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a directory, not an ONNX file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: not a regular file (a pipe, socket or device): give the path of an .onnx file")
    if st.st_size > MAX_MODEL_BYTES:
        raise InputError(f"{p}: {st.st_size / 2**30:.1f} GiB is more than the 2 GiB an ONNX protobuf can hold "
                         "(store the weights as external data)")
    try:  # O_NONBLOCK: a FIFO swapped in after the stat must not block the open
        with os.fdopen(os.open(p, os.O_RDONLY | _NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MODEL_BYTES:  # swapped after the stat
                raise InputError(f"{p}: changed while being opened: give the path of an .onnx file")
            return fh.read()
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------
# tensors


def iter_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto of ``model`` with where it sits: initializers, sparse initializers and
    tensor attributes, in the main graph, its subgraphs and the model's functions."""
    yield from _graph_tensors(model.graph, "")
    for f in model.functions:
        yield from _node_tensors(f.node, f"function {f.name!r} ")


def _graph_tensors(g: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for t in g.initializer:
        yield f"{prefix}initializer {t.name!r}", t
    for st in g.sparse_initializer:
        yield f"{prefix}sparse initializer {st.values.name!r}", st.values
        yield f"{prefix}sparse initializer {st.values.name!r} indices", st.indices
    yield from _node_tensors(g.node, prefix)


def _node_tensors(nodes: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for n in nodes:
        for a in n.attribute:
            where = f"{prefix}node {n.name or n.op_type!r} attribute {a.name!r}"
            if a.HasField("t"):
                yield where, a.t
            for t in a.tensors:
                yield where, t
            if a.HasField("sparse_tensor"):
                yield where, a.sparse_tensor.values
                yield where, a.sparse_tensor.indices
            for st in a.sparse_tensors:
                yield where, st.values
                yield where, st.indices
            if a.HasField("g"):
                yield from _graph_tensors(a.g, f"{where} > ")
            for sg in a.graphs:
                yield from _graph_tensors(sg, f"{where} > ")


# bytes per element of the types whose inline ``raw_data`` :func:`_plain_meta` checks itself
_PLAIN_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _plain_meta(t: Any) -> tuple[int, tuple[int, ...]] | None:
    """(element type, dims) of an inline tensor whose ``raw_data`` holds exactly what its dtype and
    non-negative dims declare; None for any other tensor."""
    dtype = t.data_type
    size = _PLAIN_BYTES.get(dtype)
    if size is None or t.data_location == _EXTERNAL or not t.HasField("raw_data"):
        return None
    dims = tuple(t.dims)
    if dims and min(dims) < 0 or len(t.raw_data) != size * math.prod(dims):
        return None
    return dtype, dims


def _all_plain(model: Any) -> Scan | None:
    """A :class:`Scan` when every tensor of ``model`` passes :func:`check_tensor` trivially: no functions,
    no sparse tensors, no subgraphs, and each initializer and tensor attribute is inline raw data of its
    declared size; None otherwise. Anything else (or any doubt) goes through the full per-tensor checks,
    which name the culprit. A node's attributes are looked at once per distinct serialized form (equal
    bytes, equal verdict): most nodes share a few attribute sets."""
    g = model.graph
    if len(model.functions) or len(g.sparse_initializer):
        return None
    names: list[str] = []
    tensors = list(g.initializer)
    meta: list[tuple[int, tuple[int, ...]]] = []
    for t in tensors:  # what the canonicalizer needs is read on the way
        m = _plain_meta(t)
        if m is None:
            return None
        names.append(t.name)
        meta.append(m)
    keys: list[bytes | None] = []
    seen: dict[bytes, bytes] = {}
    for n in g.node:
        attrs = n.attribute
        if not attrs:
            keys.append(None)
            continue
        key = b"".join([a.SerializeToString() for a in attrs])
        known = seen.get(key)
        if known is not None:
            keys.append(known)  # one bytes object per distinct set, however many nodes share it
            continue
        seen[key] = key
        keys.append(key)
        for a in attrs:
            if a.HasField("t"):
                if _plain_meta(a.t) is None:
                    return None
            if len(a.tensors) or a.HasField("sparse_tensor") or len(a.sparse_tensors) or a.HasField("g") \
                    or len(a.graphs):
                return None
    return Scan(names, tensors, meta, keys)


def declared_bytes(tensor: Any) -> int:
    """Bytes the tensor's dtype and shape call for (0 for strings, whose size is not declared)."""
    from exporter.graph.dtypes import dtype_bytes, numel

    return dtype_bytes(int(tensor.data_type), numel(tensor.dims))


_TYPED_FIELDS = {1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data", 5: "int32_data",
                 6: "int32_data", 7: "int64_data", 9: "int32_data", 10: "int32_data", 11: "double_data",
                 12: "uint64_data", 13: "uint64_data", 14: "float_data", 15: "double_data", 16: "int32_data",
                 17: "int32_data", 18: "int32_data", 19: "int32_data", 20: "int32_data"}


def check_tensor(tensor: Any, base: Path, *, where: str, need_data: bool = False) -> ExternalData | None:
    """Check one tensor against its declaration; for external data return the checked reference.

    ``need_data`` also requires the external file to exist (hashing or loading it comes next)."""
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{where}: negative dimension in shape {list(tensor.dims)}")
    if tensor.data_location == _EXTERNAL:
        return external_data(tensor, base, where=where, need_file=need_data)
    from exporter.graph.dtypes import numel

    n = numel(tensor.dims)
    if tensor.data_type == _STRING:
        held, want = len(tensor.string_data), n
    elif tensor.HasField("raw_data"):
        held, want = len(tensor.raw_data), declared_bytes(tensor)
    elif tensor.data_type in _TYPED_FIELDS:
        held = len(getattr(tensor, _TYPED_FIELDS[tensor.data_type]))
        want = 2 * n if tensor.data_type in (14, 15) else n
    elif tensor.data_type in (21, 22, 23):  # packed 4-bit types: at least one int32 per pair
        held, want = len(tensor.int32_data), (n + 1) // 2
        if held >= want:
            return None
    else:
        return None
    if held != want:
        raise InputError(f"{where}: shape {list(tensor.dims)} declares {want:,} "
                         f"{'bytes' if tensor.HasField('raw_data') else 'values'} but the file holds {held:,}")
    return None


def external_data(tensor: Any, base: Path, *, where: str, need_file: bool = True) -> ExternalData:
    """The checked external-data reference of ``tensor`` (see the module doc for the rules).

    Only ``stat`` is called, never ``open``; a path outside ``base`` is not even looked at unless a
    symlink inside the folder leads there."""
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    if tensor.data_type == _STRING:
        raise InputError(f"{where}: string tensors cannot be stored as external data")
    if not loc:
        raise InputError(f"{where}: external data without a location")
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(f"{where}: external data offset/length are not whole numbers") from None
    if offset < 0 or (length is not None and length < 0):
        raise InputError(f"{where}: negative external data offset or length")
    parts = loc.replace("\\", "/").split("/")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise InputError(f"{where}: external data location {loc!r} is an absolute path: "
                         "only files inside the model's folder are read")
    if ".." in parts:
        raise InputError(f"{where}: external data location {loc!r} leaves the model's folder: "
                         "only files inside it are read")
    if "\0" in loc:
        raise InputError(f"{where}: external data location {loc!r} holds a NUL byte")
    nbytes = declared_bytes(tensor)
    if length is not None and length != nbytes:
        raise InputError(f"{where}: external data length {length:,} does not match the declared shape "
                         f"{list(tensor.dims)} ({nbytes:,} bytes)")
    root = base.resolve()
    target = Path(os.path.realpath(root / loc))
    if os.path.commonpath([root, target]) != str(root):
        raise InputError(f"{where}: external data location {loc!r} is a link that leads out of the model's "
                         "folder: only files inside it are read")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if need_file:
            raise InputError(f"{where}: external data file {loc!r} not found next to the model") from None
        return ExternalData(loc, target, offset, nbytes, False)
    except OSError as exc:
        raise InputError(f"{where}: external data {loc!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where}: external data location {loc!r} is not a regular file")
    if offset + nbytes > st.st_size:
        raise InputError(f"{where}: declares {nbytes:,} bytes at offset {offset:,} of {loc!r}, "
                         f"which holds {st.st_size:,} bytes")
    return ExternalData(loc, target, offset, nbytes, True)


def _read_external(ref: ExternalData, where: str, chunk: int = CHUNK) -> Iterator[bytes]:
    if not ref.exists:
        raise InputError(f"{where}: external data file {ref.location!r} not found next to the model")
    try:  # the path is resolved: a link put there since the check is not followed
        with os.fdopen(os.open(ref.path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOFOLLOW", 0)), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or ref.offset + ref.nbytes > st.st_size:
                raise InputError(f"{where}: external data {ref.location!r} changed while being read")
            fh.seek(ref.offset)
            left = ref.nbytes
            while left > 0:
                block = fh.read(min(chunk, left))
                if not block:
                    raise InputError(f"{where}: external data {ref.location!r} ended early")
                left -= len(block)
                yield block
    except OSError as exc:
        raise InputError(f"{where}: external data {ref.location!r} unreadable: {exc.strerror or exc}") from None


def iter_external(tensor: Any, base_dir: str | Path | None, chunk: int = CHUNK) -> Iterator[bytes]:
    """The external data of ``tensor`` in chunks of at most ``chunk`` bytes, checked first."""
    where = f"initializer {tensor.name!r}"
    ref = external_data(tensor, Path(base_dir or "."), where=where, need_file=True)
    yield from _read_external(ref, where, chunk)
