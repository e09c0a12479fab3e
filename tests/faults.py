"""Seeded faults: broken copies of a good decoded YOLOv5 export, for proving that the parity check fails
them. Used by tests/pipeline/test_faults.py and bench/parity_rule.py (which measures the rule's margins).

Each fault edits initializers of a fused, decoded, static export (TorchScript names: ``model.K...weight``
for convs, the Detect decode's constants ``2 * stride``, ``grid * stride`` and ``4 * anchors``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper


def _init(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _set(t: onnx.TensorProto, a: np.ndarray) -> None:
    t.CopyFrom(numpy_helper.from_array(a.astype(numpy_helper.to_array(t).dtype), t.name))


def conv_weights(model: onnx.ModelProto) -> list[str]:
    """Conv weight initializers in graph order."""
    inits = _init(model)
    return [n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]


def pick_convs(model: onnx.ModelProto) -> dict[str, str]:
    """The first conv, a middle one and the first Detect conv (the last convs of the graph)."""
    ws = conv_weights(model)
    return {"first": ws[0], "middle": ws[len(ws) // 2], "detect": ws[-3]}


def scale_weight(name: str, factor: float) -> Callable[[onnx.ModelProto], None]:
    def f(m: onnx.ModelProto) -> None:
        t = _init(m)[name]
        _set(t, numpy_helper.to_array(t) * factor)
    return f


def swap_channels(name: str) -> Callable[[onnx.ModelProto], None]:
    """Swap output channels 0 and 1 of a conv (weights and bias)."""
    def f(m: onnx.ModelProto) -> None:
        inits = _init(m)
        node = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[1] == name)
        for inp in node.input[1:]:
            t = inits[inp]
            a = numpy_helper.to_array(t).copy()
            a[[0, 1]] = a[[1, 0]]
            _set(t, a)
    return f


def _decode_mul_constants(m: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """(Mul node, constant input) of the Detect decode in level order: Mul by 2*stride (scalar) and by
    4*anchors (shape (1, na, 1, 1, 2))."""
    inits = _init(m)
    out = []
    for n in m.graph.node:
        if n.op_type == "Mul":
            for i in n.input:
                if i in inits and numpy_helper.to_array(inits[i]).ndim in (0, 5):
                    out.append((n, i))
    return out


def anchor_off_by_one_pixel(level: int = 0) -> Callable[[onnx.ModelProto], None]:
    """The first anchor of a level 1 px wider (the constant holds 4 * anchor in pixels)."""
    def f(m: onnx.ModelProto) -> None:
        inits = _init(m)
        anchors = [i for _, i in _decode_mul_constants(m) if numpy_helper.to_array(inits[i]).ndim == 5]
        t = inits[anchors[level]]
        a = numpy_helper.to_array(t).copy()
        a[0, 0, 0, 0, 0] += 4.0
        _set(t, a)
    return f


def stride_doubled(level: int = 0) -> Callable[[onnx.ModelProto], None]:
    """One level decoded with twice its stride: ``xy * 2s + grid * s`` with s doubled in both constants."""
    def f(m: onnx.ModelProto) -> None:
        inits = _init(m)
        scalars = [(n, i) for n, i in _decode_mul_constants(m) if numpy_helper.to_array(inits[i]).ndim == 0]
        mul, name = scalars[level]
        _set(inits[name], numpy_helper.to_array(inits[name]) * 2)
        add = next(n for n in m.graph.node if n.op_type == "Add" and mul.output[0] in n.input)
        grid = next(i for i in add.input if i in inits)
        _set(inits[grid], numpy_helper.to_array(inits[grid]) * 2)
    return f


def fp16_rounded(m: onnx.ModelProto) -> None:
    """Every float32 initializer rounded to float16 and back (an fp32 file with fp16 weights)."""
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            _set(t, numpy_helper.to_array(t).astype(np.float16).astype(np.float32))


def faults(model: onnx.ModelProto) -> dict[str, Callable[[onnx.ModelProto], None]]:
    """Every seeded fault for ``model`` by name."""
    convs = pick_convs(model)
    out: dict[str, Callable[[onnx.ModelProto], None]] = {}
    for where, name in convs.items():
        for factor in (1.001, 1.01, 1.1):
            out[f"{where} conv x{factor}"] = scale_weight(name, factor)
    out["middle conv channels 0/1 swapped"] = swap_channels(convs["middle"])
    out["anchor +1 px"] = anchor_off_by_one_pixel(0)
    out["stride doubled (P3)"] = stride_doubled(0)
    out["fp16-rounded weights"] = fp16_rounded
    return out


def broken(model: onnx.ModelProto, fault: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    fault(m)
    return m
