"""Tensor contents for snapshot and diff: content hashes, canonical bytes, arrays, and the text of
tensor-valued attributes. External data is read in 1 MiB chunks, never all at once."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from exporter.errors import InputError
from exporter.graph.dtypes import _DTYPE_BITS, dtype_short, f32_text, numel

# tensor attributes with at most this many elements show their values instead of a hash
_SHOW_VALUES_MAX = 8
_HASH_CHARS = 16
_CHUNK = 1 << 20
_EXTERNAL = 1  # TensorProto.EXTERNAL


@dataclass(slots=True)
class CInit:
    """One initializer: canonical ref, type, and (for ONNX files) a handle on its data."""

    ref: str
    type: str
    elem_type: int | None = None
    dims: tuple[int, ...] = ()
    name: str | None = None  # original name (ONNX files only; never in snapshots)
    tensor: Any = None  # TensorProto (ONNX files only)
    base_dir: str | None = None
    _digest: str | None = None
    raw: bytes | None = None  # inline bytes kept by detach(), when the ModelProto is let go

    @property
    def external(self) -> bool:
        return self.tensor is not None and self.tensor.data_location == _EXTERNAL

    @property
    def has_values(self) -> bool:
        """The values can be read (an ONNX file's initializer; a snapshot holds hashes only)."""
        return self.tensor is not None or self.raw is not None

    def detach(self) -> None:
        """Hold the values without the ModelProto they came from (a TensorProto keeps the whole
        model alive): inline raw bytes as they are, any other tensor as a copy of its own (external
        data stays in its file)."""
        t = self.tensor
        if t is None:
            return
        if t.data_location != _EXTERNAL and t.HasField("raw_data"):
            self.raw, self.tensor = t.raw_data, None
        else:
            from exporter.graph.onnx_pb import messages

            copy = messages().TensorProto()
            copy.CopyFrom(t)
            self.tensor = copy

    def _inline(self) -> bytes | None:
        if self.raw is not None:
            return self.raw
        t = self.tensor
        if t is not None and t.data_location != _EXTERNAL and t.HasField("raw_data"):
            return t.raw_data
        return None

    def chunks(self) -> Iterator[bytes]:
        """The canonical little-endian bytes, in chunks (external data in 1 MiB reads)."""
        if self.raw is not None:
            yield self.raw
        else:
            yield from _tensor_chunks(self.tensor, self.base_dir)

    def digest(self) -> str:
        """Content hash (sha256 of the little-endian bytes, first 16 hex digits). External data is
        read in 1 MiB chunks, never all at once."""
        if self._digest is None:
            data = self._inline()
            if data is not None:
                self._digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
            else:
                self._digest = _tensor_digest(self.tensor, self.base_dir)
        return self._digest

    def same_content(self, other: CInit) -> bool:
        """Both hold the same bytes: inline raw data is compared as it is, anything else by hash."""
        if self._digest is None and other._digest is None:
            xa = self._inline()
            if xa is not None:
                xb = other._inline()
                if xb is not None:
                    return xa == xb
        return self.digest() == other.digest()

    def data(self) -> bytes:
        """The tensor's canonical little-endian bytes (external data read from its file)."""
        chunks = list(self.chunks())
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def array(self, data: bytes | None = None) -> Any:
        """The values as a numpy array; ``data`` reuses bytes already read by :meth:`data`."""
        import numpy as np
        from onnx import helper

        elem_type = int(self.elem_type or 0)
        if self.raw is not None or self.tensor.data_location == _EXTERNAL or self.tensor.HasField("raw_data"):
            if _DTYPE_BITS.get(elem_type, 0) < 8:
                raise ValueError("packed sub-byte tensors are compared by bytes only")
            np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).newbyteorder("<")
            return np.frombuffer(self.data() if data is None else data, dtype=np_dtype).reshape(self.dims)
        from onnx import numpy_helper

        return numpy_helper.to_array(self.tensor)


def _tensor_chunks(tensor: Any, base_dir: str | None) -> Iterator[bytes]:
    """Yield a tensor's content as canonical little-endian bytes, in chunks for external data."""
    if tensor is None:
        raise InputError("initializer values are not available (a snapshot holds hashes only)")
    if tensor.data_location == _EXTERNAL:  # checked (inside the model's folder, size fits) and streamed
        from exporter.graph.load import iter_external

        yield from iter_external(tensor, base_dir, _CHUNK)
        return
    if tensor.HasField("raw_data"):
        yield tensor.raw_data
        return
    if tensor.data_type == 8:  # strings: length-prefixed, so ["ab","c"] != ["a","bc"]
        for s in tensor.string_data:
            yield len(s).to_bytes(8, "little") + s
        return
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor)
    yield arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _tensor_digest(tensor: Any, base_dir: str | None) -> str:
    h = hashlib.sha256()
    for chunk in _tensor_chunks(tensor, base_dir):
        h.update(chunk)
    return h.hexdigest()[:_HASH_CHARS]


def render_tensor_attr(t: Any, base_dir: str | None) -> str:
    """``tensor<i64[2]>[1,2]`` for a small tensor, ``tensor<f32[64,3]>#<hash>`` otherwise."""
    dims = tuple(int(d) for d in t.dims)
    ty = f"{dtype_short(t.data_type)}[{','.join(map(str, dims))}]"
    n = numel(dims)
    if n <= _SHOW_VALUES_MAX and t.data_location != _EXTERNAL and t.data_type not in (8, 21, 22, 23):
        try:
            from onnx import numpy_helper

            vals = numpy_helper.to_array(t).reshape(-1).tolist()
            if t.data_type in (1, 10, 11, 16):
                text = ",".join(f32_text(v) if t.data_type != 11 else repr(float(v)) for v in vals)
            else:
                text = ",".join(str(int(v)) for v in vals)
            return f"tensor<{ty}>[{text}]"
        except Exception:  # noqa: BLE001 - odd encodings fall back to the hash
            pass
    try:
        digest = _tensor_digest(t, base_dir)
    except InputError:
        digest = "unreadable"
    return f"tensor<{ty}>#{digest}"


_HASH_RE = re.compile(rf"#[0-9a-f]{{{_HASH_CHARS}}}|#unreadable")


def strip_hashes(text: str) -> str:
    """Drop content hashes from a rendered attribute (for ``--ignore initializer-values``)."""
    return _HASH_RE.sub("", text)


# ---------------------------------------------------------------------------------------------
# comparing two tensors without holding either


def _blocks(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream of byte chunks into blocks of exactly ``size`` bytes (the last may be short)."""
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def compare_streamed(ia: Any, ib: Any, atol: float) -> dict[str, Any] | None:
    """Value difference of two initializers (``exporter.graph._canon.CInit``) whose contents differ,
    read block by block from both sides: memory stays at a few MiB whatever the tensor size.
    ``None`` when every element differs by at most ``atol``; otherwise the diff entry."""
    import numpy as np
    import onnx
    from onnx import helper

    differ = {"kind": "values", "a": ia.type, "b": ib.type, "detail": "bytes differ"}
    elem = int(ia.elem_type or 0)
    if elem != int(ib.elem_type or 0) or tuple(ia.dims) != tuple(ib.dims) or _DTYPE_BITS.get(elem, 0) < 8 \
            or elem == onnx.TensorProto.STRING:
        return differ
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).newbyteorder("<")
    except (KeyError, TypeError, ValueError):
        return differ
    if dtype.kind not in "biuf":
        return differ
    from exporter.graph.load import CHUNK

    block = CHUNK - CHUNK % dtype.itemsize
    dmax, nan = 0.0, False
    pairs = zip(_blocks(ia.chunks(), block), _blocks(ib.chunks(), block), strict=True)
    for xa, xb in pairs:
        a, b = np.frombuffer(xa, dtype=dtype), np.frombuffer(xb, dtype=dtype)
        if dtype.kind == "f" and dtype.itemsize >= 4:
            delta = np.abs(a - b)
        else:
            delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if delta.size:
            m = float(delta.max())
            nan = nan or m != m
            dmax = max(dmax, m) if m == m else dmax
    if nan:
        dmax = float("nan")
    if dmax <= atol:
        return None
    return {**differ, "detail": f"max |delta| {dmax:.4g}", "max_abs_diff": dmax}
