"""ONNX element types: the short names of snapshot text (``f32``), numpy-style names for reports
(``float32``), sizes in bytes. Never imports torch; onnx only for names this table lacks."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from typing import Any

_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_TEN = Fraction(10)

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
    """A float as float32 prints it (``0.1``, not ``0.10000000149011612``): the text of numpy's
    ``str(np.float32(x))`` without importing numpy (about 0.2 s of CPU, most of a small snapshot): the fewest
    digits that read back as the same float32 (the nearest such, ties to even), positional for
    1e-4 <= |x| < 1e6, scientific otherwise. ``tests/graph/test_f32_text.py`` holds it to numpy."""
    try:
        bits = _U32.unpack(_F32.pack(x))[0]
    except OverflowError:  # beyond float32: numpy makes it inf
        return "inf" if x > 0 else "-inf"
    sign = "-" if bits >> 31 else ""
    e, m = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if e == 0xFF:
        return "nan" if m else f"{sign}inf"
    if e == 0 and m == 0:
        return f"{sign}0.0"
    # the exact value, and the interval of reals that round to it (ties to the even mantissa)
    if e == 0:
        exact, ulp, below = Fraction(m, 1 << 149), Fraction(1, 1 << 149), Fraction(1, 1 << 149)
    else:
        ulp = Fraction(2) ** (e - 150)
        exact = (m + (1 << 23)) * ulp
        below = ulp / 2 if m == 0 and e > 1 else ulp
    lo, hi, closed = exact - below / 2, exact + ulp / 2, m % 2 == 0
    k = math.floor(math.log10(exact))  # decimal exponent: 10**k <= exact < 10**(k + 1)
    if _TEN ** k > exact:
        k -= 1
    elif _TEN ** (k + 1) <= exact:
        k += 1
    for p in range(1, 10):
        scale = _TEN ** (k - p + 1)
        n = math.floor(exact / scale)
        best = None
        for c in (n, n + 1):
            q = c * scale
            if lo < q < hi or (closed and (q == lo or q == hi)):
                d = abs(q - exact)
                if best is None or d < best[0] or (d == best[0] and c % 2 == 0):
                    best = (d, c)
        if best is not None:
            digits = str(best[1])
            exp = k + len(digits) - p  # c may have carried into one more digit (9.99 -> 10.0)
            digits = digits.rstrip("0") or "0"
            return sign + _layout(digits, exp, exact)
    raise AssertionError("no float32 needs more than 9 digits")


def _layout(digits: str, exp: int, exact: Fraction) -> str:
    """numpy's float32 str: positional for 1e-4 <= |x| < 1e6, else scientific."""
    if Fraction(1, 10**4) <= exact < 10**6:
        if exp >= 0:
            whole = digits[:exp + 1].ljust(exp + 1, "0")
            frac = digits[exp + 1:] or "0"
            return f"{whole}.{frac}"
        return "0." + "0" * (-exp - 1) + digits
    mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mant}e{exp:+03d}"
