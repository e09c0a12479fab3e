"""The PyTorch side of a parity check: per input, the source model's fp32 forward, its float64 forward
(the truth), and the fp32 forward of the exact module that was exported (the fused copy when fused).

Every forward runs on a private copy: the caller's model is never touched.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exporter.errors import first_line
from exporter.parity.compare import YoloLayout
from exporter.parity.inputs import make_inputs


@dataclass
class Case:
    label: str
    x: np.ndarray
    fp32: list[np.ndarray]  # the source model (unfused), fp32, on the reference device
    f64: list[np.ndarray] | None  # the source model in float64 on the CPU: the truth
    exported: list[np.ndarray] | None = None  # the module exported (e.g. fused), fp32


@dataclass
class Reference:
    """Inputs and the PyTorch outputs for them: computed once, compared with any number of graphs."""

    cases: list[Case]
    mode: str  # 'eval' | 'train'
    description: str
    head: str = "decode"
    layout: YoloLayout | None = None  # decoded YOLO outputs: how rows map to strides and anchors
    no_f64: str = ""  # why there is no float64 truth (then the tolerance rule judges)
    fused: bool = False  # the exported module is a fused copy of the source
    notes: list[str] = field(default_factory=list)


def detect_of(model: Any) -> Any:
    """The YOLOv5 Detect layer of ``model``, or None."""
    from exporter.models.common import Detect

    layers = getattr(model, "model", None)
    try:
        last = layers[-1] if layers is not None else None
    except (TypeError, IndexError, KeyError):
        return None
    return last if isinstance(last, Detect) else None


def reference_model(model: Any, *, head: str = "decode", training: bool = False) -> Any:
    """A copy of ``model`` configured like an export (Detect output mode), in eval or train mode."""
    ref = deepcopy(model).float()
    det = detect_of(ref)
    if det is not None:
        det.output, det.int_shapes = head, False
    return ref.train(training)


def layout_of(model: Any, head: str) -> YoloLayout | None:
    det = detect_of(model)
    if det is None or head != "decode" or det.stride is None:
        return None
    strides = tuple(float(s) for s in det.stride.tolist())
    anchors = tuple(tuple((float(a[0]) * s, float(a[1]) * s) for a in det.anchors[i].tolist())
                    for i, s in enumerate(strides))
    return YoloLayout(strides, anchors, int(det.no))


def flatten(y: Any) -> list[np.ndarray]:
    """Model outputs of any structure (tensor, tuple, list, dict, namedtuple, nested) as arrays, in order."""
    import torch

    if isinstance(y, torch.Tensor):
        return [y.detach().cpu().numpy()]
    if isinstance(y, dict):
        return [a for v in y.values() for a in flatten(v)]
    if isinstance(y, (list, tuple)):
        return [a for t in y for a in flatten(t)]
    raise TypeError(f"cannot compare a model output of type {type(y).__name__}")


def _forward(model: Any, x: np.ndarray, dtype: Any, device: Any) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return flatten(model(torch.from_numpy(x).to(device=device, dtype=dtype)))


def fused_copy(model: Any) -> Any | None:
    """A fused copy of a YOLOv5 model (what a fused export captures), or None when it has no fuse()."""
    if not hasattr(model, "fuse"):
        return None
    m = deepcopy(model)
    m.fuse()
    return m


def build_reference(model: Any, shapes: list[tuple[int, ...]], *, inputs: int | None = None,
                    images: str | None = None, training: bool = False, head: str = "decode", seed: int = 0,
                    device: str = "cpu", exported: Any = None, truth: bool = True) -> Reference:
    """Forwards of ``model`` for every parity input: fp32 (on ``device``) and float64 (on the CPU);
    with ``exported`` (the module that was captured, when it differs from ``model``), its fp32 forward too.
    ``truth=False`` skips the float64 forward (the explicit tolerance rule needs none)."""
    import torch

    dev = torch.device(device)
    ref32 = reference_model(model, head=head, training=training).to(dev)
    ref64, no_f64 = None, "" if truth else "not needed by the tolerance rule"
    if truth:
        try:
            ref64 = deepcopy(ref32).cpu().double()
        except Exception as exc:  # a module that cannot be cast
            no_f64 = f"the model cannot be cast to float64: {first_line(exc)}"
    exp32 = reference_model(exported, head=head, training=training).to(dev) if exported is not None else None
    cases_in = make_inputs(shapes, inputs, seed, images)
    cases = []
    for label, x in cases_in:
        y32 = _forward(ref32, x, torch.float32, dev)
        y64 = None
        if ref64 is not None:
            try:
                y64 = _forward(ref64, x, torch.float64, torch.device("cpu"))
            except Exception as exc:  # an op without a float64 kernel
                ref64, no_f64 = None, f"the model cannot run in float64: {first_line(exc)}"
        ye = _forward(exp32, x, torch.float32, dev) if exp32 is not None else None
        cases.append(Case(label, x, [a.astype(np.float32) for a in y32], y64, ye))
    if ref64 is None:
        for c in cases:
            c.f64 = None
    where = ", ".join("x".join(map(str, s)) for s in shapes)
    desc = f"{len(cases)} input(s) at {where}" + (f" from {images}" if images else " (seeded synthetic images)")
    return Reference(cases, "train" if training else "eval", desc, head, layout_of(model, head), no_f64,
                     fused=exported is not None)
