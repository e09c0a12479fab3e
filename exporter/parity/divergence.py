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
    ratio: float  # the layer's ONNX error at the 99.9th percentile over PyTorch fp32's own
    ratio_max: float
    checked: int  # layers compared before and including this one

    def __str__(self) -> str:
        return (f"first diverging layer: {self.layer} ({self.module}), tensor {self.tensor!r}: its error against "
                f"float64 is {self.ratio:.3g}x PyTorch fp32's own (max {self.ratio_max:.3g}x); "
                f"the {self.checked - 1} layer(s) before it are within their fp32 noise")


def layer_outputs(proto: Any) -> dict[int, str]:
    """Layer index -> the tensor leaving that layer (consumed by another layer or a graph output)."""
    from exporter.graph.scopes import node_scope

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


def _layer_forward(model: Any, x: np.ndarray, keep: set[int], dtype: Any) -> dict[int, np.ndarray]:
    import torch

    layers = model.model
    seen: dict[int, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o.detach().cpu().numpy())
                                     if isinstance(o, torch.Tensor) else None)
             for k, m in enumerate(layers) if k in keep]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x).to(dtype))
    finally:
        for h in hooks:
            h.remove()
    return seen


def locate(proto: Any, model: Any, x: np.ndarray, *, provider: str = "CPUExecutionProvider",
           training: bool = False, head: str = "decode") -> Divergence | str:
    """The first layer whose ONNX output stands out from its own fp32 noise (the same noise-floor rule as
    the outputs, per layer: error against a float64 forward compared with PyTorch fp32's), or why none."""
    import copy

    import onnx
    import onnxruntime as ort
    import torch

    from exporter.parity.compare import compare_floor, whole
    from exporter.parity.reference import reference_model

    outs = layer_outputs(proto)
    if not outs:
        return "no layer could be located (the graph records no module scopes)"
    ref = reference_model(model, head=head, training=training).cpu()
    if getattr(ref, "model", None) is None:
        return "no layer could be located (the PyTorch model has no YOLOv5 layer list)"
    probe = copy.deepcopy(proto)
    known = {vi.name: vi for vi in probe.graph.value_info}
    existing = {o.name for o in probe.graph.output}
    for name in outs.values():
        if name not in existing:
            probe.graph.output.append(known[name] if name in known else onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=[provider])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {probe.graph.input[0].name: x}), strict=True))
    seen32 = _layer_forward(ref, x, set(outs), torch.float32)
    seen64 = _layer_forward(copy.deepcopy(ref).double(), x, set(outs), torch.float64)
    checked = 0
    for k, name in outs.items():
        if k not in seen32 or k not in seen64 or got[name].shape != seen32[k].shape:
            continue
        checked += 1
        c = compare_floor(name, got[name], seen32[k], seen64[k], whole())
        if not c.passed:
            module = str(getattr(ref.model[k], "type", type(ref.model[k]).__name__))
            return Divergence(k, module, name, c.ratio, c.ratio_max, checked)
    if not checked:
        return "no layer output has the shape of the PyTorch model's: is this the model the file was exported from?"
    return (f"all {checked} layer outputs are within their fp32 noise; the difference arises in the last layer "
            "(the Detect head: its convs, grid, anchors or strides)")
