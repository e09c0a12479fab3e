"""Name the first layer where an ONNX graph and its PyTorch model part ways.

Each top-level layer's output tensor is found from the module scopes the exporters record (TorchScript
node names such as ``/model.17/cv3/act/Mul``, dynamo's name-scope metadata), exposed as an extra graph
output, and compared with the same layer's PyTorch output on the failing input, in layer order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Divergence:
    layer: int
    module: str
    tensor: str
    max_abs: float
    max_rel: float
    checked: int  # layers compared before and including this one

    def __str__(self) -> str:
        return (f"first diverging layer: {self.layer} ({self.module}), tensor {self.tensor!r}: "
                f"max abs {self.max_abs:.2e}, max rel {self.max_rel:.2e}")


def layer_outputs(proto: Any) -> dict[int, str]:
    """Layer index -> the tensor leaving that layer (consumed by another layer or a graph output)."""
    from exporter.graph.graphviz import node_scope

    layer_of: dict[str, int] = {}
    for node in proto.graph.node:
        scope = node_scope(node)
        if scope is not None:
            for out in node.output:
                layer_of[out] = scope[1]
    leaving: dict[int, set[str]] = {}
    for node in proto.graph.node:
        scope = node_scope(node)
        here = scope[1] if scope else None
        for name in node.input:
            src = layer_of.get(name)
            if src is not None and src != here:
                leaving.setdefault(src, set()).add(name)
    return {i: next(iter(names)) for i, names in sorted(leaving.items()) if len(names) == 1}


def locate(proto: Any, model: Any, x: np.ndarray, *, atol: float, rtol: float, provider: str = "CPUExecutionProvider",
           training: bool = False, head: str = "decode") -> Divergence | str:
    """The first layer whose output differs beyond ``atol + rtol * |ref|``, or why none was found."""
    import copy

    import onnx
    import onnxruntime as ort
    import torch

    from exporter.parity import compare, reference_model

    outs = layer_outputs(proto)
    if not outs:
        return "no layer could be located (the graph records no module scopes)"
    probe = copy.deepcopy(proto)
    known = {vi.name: vi for vi in probe.graph.value_info}
    existing = {o.name for o in probe.graph.output}
    for name in outs.values():
        if name not in existing:
            probe.graph.output.append(known[name] if name in known else onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=[provider])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {probe.graph.input[0].name: x}), strict=True))
    ref = reference_model(model, head=head, training=training)
    layers = getattr(ref, "model", None)
    if layers is None:
        return "no layer could be located (the PyTorch model has no YOLOv5 layer list)"
    seen: dict[int, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o.detach().float().numpy())
                                     if isinstance(o, torch.Tensor) else None)
             for k, m in enumerate(layers) if k in outs]
    try:
        with torch.no_grad():
            ref(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    checked = 0
    for k, name in outs.items():
        if k not in seen or got[name].shape != seen[k].shape:
            continue
        checked += 1
        c = compare(name, seen[k], got[name], atol, rtol)
        if not c.passed:
            module = str(getattr(layers[k], "type", type(layers[k]).__name__))
            return Divergence(k, module, name, c.max_abs, c.max_rel, checked)
    if not checked:
        return "no layer output has the shape of the PyTorch model's: is this the model the file was exported from?"
    return f"all {checked} layer outputs agree within the tolerance; the difference is in the final head"
