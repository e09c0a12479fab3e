"""Analysis of any ``nn.Module`` (not YOLO): the ``yexport info`` figures, the example inputs, tracing.

The stride method of counting FLOPs (a stride-sized input scaled by ``(img / stride)^2``) assumes a
fully convolutional network with a known largest stride: it means something for YOLO and nothing for a
model with a fixed-size head or per-image post-processing (an SSD counted that way reads 116.6 "GFLOPs"
against 1.17 exact). Other models get the exact count of one forward (torch.utils.flop_counter) at the
example inputs.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn

from exporter.options import InputSpec


def is_yolo(model: nn.Module) -> bool:
    """A YOLOv5 model of this package (YAML layers ending in Detect)."""
    from exporter.models.common import Detect

    layers = getattr(model, "model", None)
    try:
        return isinstance(layers[-1], Detect) if layers is not None else False  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return False


def example_specs(input_shapes: tuple[InputSpec, ...] | list[InputSpec] = (), img: tuple[int, int] = (224, 224),
                  batch: int = 1) -> tuple[InputSpec, ...]:
    """``--input-shape`` values, or one ``batch x 3 x H x W`` image batch."""
    return tuple(input_shapes) or (InputSpec((batch, 3, *img)),)


def example_args(model: nn.Module, specs: tuple[InputSpec, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded example tensors for ``specs``, on the model's device."""
    from exporter.stages.prepare import example_inputs

    p = next(iter(model.parameters()), None)
    dev = p.device if p is not None else torch.device("cpu")
    ex = example_inputs(tuple(specs), seed, dev)
    return ex if isinstance(ex, tuple) else (ex,)


def shapes_named(y: Any) -> dict[str, list[int]]:
    """Output name (as the ONNX file will have it) -> shape."""
    from exporter.parity.reference import flatten
    from exporter.stages.capture import leaf_names

    return {n: list(a.shape) for n, a in zip(leaf_names(y), flatten(y), strict=True)}


def summarize_module(model: nn.Module, specs: tuple[InputSpec, ...], *, seed: int = 0) -> dict[str, Any]:
    """The ``yexport info`` figures of a model other than YOLO: modules, parameters, gradients, buffers,
    BatchNorm layers and the parameters once they are folded (as export's prepare folds them), exact
    GFLOPs and the output shapes of one forward at the example inputs. ``model`` is not changed."""
    from torch.utils.flop_counter import FlopCounterMode

    from exporter.stages.prepare import fold_leftover_batchnorms

    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    fused = deepcopy(model).eval()
    with torch.no_grad():
        fold = fold_leftover_batchnorms(fused)
    params_fused = sum(p.numel() for p in fused.parameters())
    args = example_args(fused, specs, seed)
    from exporter.stages.capture_attempts import _mha_fastpath_off

    # the fused attention fast path (taken under no_grad) is one kernel the flop counter does not know
    with _mha_fastpath_off(), torch.no_grad(), FlopCounterMode(display=False) as fc:
        y = fused(*args)
    by_op: dict[str, int] = {}
    for op, n in fc.get_flop_counts().get("Global", {}).items():
        key = str(getattr(op, "__name__", op)).split(".")[0]
        by_op[key] = by_op.get(key, 0) + int(n)
    return {
        "class": type(model).__name__,
        "modules": len(list(model.modules())),
        "parameters": params,
        "gradients": grads,
        "buffers": sum(b.numel() for b in model.buffers()),
        "batchnorm_layers": len(bns),
        "batchnorm_folded": fold.folded + fold.sliced,
        "parameters_fused": params_fused,
        "inputs": [s.text() for s in specs],
        "gflops_exact": fc.get_total_flops() / 1e9,
        "gflops_method": "exact (torch.utils.flop_counter, one forward at the example inputs); the stride "
                         "method applies to YOLO only",
        "gflops_by_op": {k: v / 1e9 for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "outputs": shapes_named(y),
    }


def format_summary(name: str, kind: str, weights: str, s: dict[str, Any]) -> list[str]:
    """The text lines of ``yexport info`` for :func:`summarize_module`'s figures."""
    outs = ", ".join(f"{n} {'x'.join(map(str, shape))}" for n, shape in s["outputs"].items())
    ops = ", ".join(f"{k} {v:.4g}" for k, v in list(s["gflops_by_op"].items())[:4])
    return [
        f"{name} ({kind}, {s['class']}, weights: {weights})",
        f"summary: {s['modules']} modules, {s['parameters']:,} parameters, {s['gradients']:,} gradients, "
        f"{s['buffers']:,} buffer values",
        f"fused: {s['parameters_fused']:,} parameters ({s['batchnorm_folded']} of {s['batchnorm_layers']} "
        "BatchNorm layers fold into a conv)",
        f"GFLOPs: {s['gflops_exact']:.4g} exact at {' + '.join(s['inputs'])}" + (f" ({ops})" if ops else ""),
        f"outputs: {outs}",
    ]
