"""ONNX element types: the short names of snapshot text (``f32``), numpy-style names for reports
(``float32``), sizes in bytes. Never imports torch; onnx only for names this table lacks."""

from __future__ import annotations

import math
from typing import Any

# TensorProto.DataType -> short name used in text (f32[1,3,640,640])
_DTYPE_SHORT = {
    0: "?", 1: "f32", 2: "u8", 3: "i8", 4: "u16", 5: "i16", 6: "i32", 7: "i64", 8: "str", 9: "bool",
    10: "f16", 11: "f64", 12: "u32", 13: "u64", 14: "c64", 15: "c128", 16: "bf16",
    17: "f8e4m3fn", 18: "f8e4m3fnuz", 19: "f8e5m2", 20: "f8e5m2fnuz", 21: "u4", 22: "i4", 23: "f4e2m1",
}
# bits per element, for parameter bytes (strings have no fixed size)
_DTYPE_BITS = {
    1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
    16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4,
}
_DTYPE_LONG = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
}


def dtype_short(elem_type: int) -> str:
    return _DTYPE_SHORT.get(elem_type, f"t{elem_type}")


def dtype_long(elem_type: int) -> str:
    """numpy-style name (float32, int64, ...) for reports."""
    if elem_type in _DTYPE_LONG:
        return _DTYPE_LONG[elem_type]
    from exporter.graph.onnx_pb import messages

    try:
        return messages().TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type{elem_type}"


def dtype_bytes(elem_type: int, numel: int) -> int:
    bits = _DTYPE_BITS.get(elem_type, 0)
    return (numel * bits + 7) // 8


def numel(dims: Any) -> int:
    return math.prod(dims)


def f32_text(x: float) -> str:
    """A float as float32 prints it (``0.1``, not ``0.10000000149011612``)."""
    import numpy as np

    return str(np.float32(x))
