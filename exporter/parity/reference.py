"""The PyTorch side of a parity check: per input, the source model's fp32 forward, its float64 forward
(the truth), and the fp32 forward of the exact module that was exported (the fused copy when fused).

Every forward runs on a private copy: the caller's model is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exporter.errors import first_line
from exporter.parity.compare import YoloLayout
from exporter.parity.inputs import make_inputs, shape_text


@dataclass
class Case:
    label: str
    x: np.ndarray
    fp32: list[np.ndarray]  # the source model (unfused), fp32, on the reference device
    f64: list[np.ndarray] | None  # the source model in float64 on the CPU: the truth
    exported: list[np.ndarray] | None = None  # the module exported (e.g. fused), fp32; first input only
    floor: list[np.ndarray] | None = None  # the source model in the file's precision when not fp32
    floor_cuda: list[np.ndarray] | None = None  # the same forward by PyTorch on CUDA, for the CUDA provider
    more: tuple[np.ndarray, ...] = ()  # the inputs after the first, for a model with several

    @property
    def feeds(self) -> tuple[np.ndarray, ...]:
        """Every input of the case, in the forward's order (``x`` is the first)."""
        return (self.x, *self.more)

    @property
    def noise(self) -> list[np.ndarray]:
        """The forward whose error against float64 is the noise floor (the file's precision)."""
        return self.floor if self.floor is not None else self.fp32

    def noise_for(self, provider: str) -> list[np.ndarray]:
        """The noise floor for an onnxruntime provider: CUDA's own where PyTorch measured it on CUDA (its
        convolutions may run in TF32), the CPU's otherwise."""
        if provider in ("cuda", "tensorrt") and self.floor_cuda is not None:
            return self.floor_cuda
        return self.noise


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
    floor: str = "PyTorch fp32"  # what the noise floor is: PyTorch in the file's precision
    precision: str = "float32"  # the file's: float32 or float16
    #: the exported module's forwards per case (:func:`exported_forwards`), made only when called: for a
    #: fused file checked on its own, whose capture and fusion figures wait for a failure to explain
    exported_later: Callable[[], list[list[np.ndarray] | None]] | None = None


# The fp32 forward of the exported module (the fused copy) runs on the first input only: it gives the
# capture figure (ONNX vs the exact module exported) and the fusion figure (fused vs unfused PyTorch),
# diagnostics beside the verdict, which the float64 truth and the source's fp32 floor decide on every input.
# One more forward per input would cost a sixth of the check for figures that one input already shows.
EXPORTED_CASES = 1


def detect_of(model: Any) -> Any:
    """The YOLOv5 Detect layer of ``model``, or None."""
    from exporter.models.common import Detect

    layers = getattr(model, "model", None)
    try:
        last = layers[-1] if layers is not None else None
    except (TypeError, IndexError, KeyError):
        return None
    return last if isinstance(last, Detect) else None


def reference_model(model: Any, *, head: str = "decode", training: bool = False, copy: bool = True) -> Any:
    """A copy of ``model`` configured like an export (Detect output mode; with the raw head, the network
    part of a detector with post-processing), in eval or train mode. ``copy=False`` configures ``model``
    itself: for a module that is already a private copy."""
    from exporter.models.detection import network_part

    ref = (deepcopy(model) if copy else model).float()
    det = detect_of(ref)
    if det is not None:
        det.output, det.int_shapes = head, False
    elif head == "raw":
        ref = network_part(ref) or ref
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


def file_precision(proto: Any) -> str:
    """'float16' when the file computes in float16 (float16 initializers), else 'float32'."""
    from exporter.graph.onnx_pb import messages

    f16 = messages().TensorProto.FLOAT16
    return "float16" if any(t.data_type == f16 for t in proto.graph.initializer) else "float32"


def _rounded(y: Any) -> Any:
    import torch

    if isinstance(y, torch.Tensor) and y.is_floating_point():
        return y.half().float()
    if isinstance(y, (list, tuple)):
        return type(y)(_rounded(v) for v in y) if isinstance(y, tuple) else [_rounded(v) for v in y]
    return y


def fp16_storage(model: Any) -> Any:
    """A float32 copy of ``model`` that stores everything in float16: parameters and buffers rounded to
    float16, and every module's output rounded as it leaves the module; arithmetic inside a module
    (a convolution's sums) stays float32. This is what onnxruntime's CPU kernels and cuDNN do with a
    float16 graph (float16 tensors, float32 accumulation), at the cost of one fp32 forward; PyTorch's
    own float16 kernels on a CPU are about 100x slower. Used as the float16 noise floor on the CPU."""
    import torch

    m = deepcopy(model).float()
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    for mod in m.modules():
        mod.register_forward_hook(lambda _m, _i, out: _rounded(out))
    return m


def _forward(model: Any, x: np.ndarray | tuple[np.ndarray, ...], dtype: Any, device: Any) -> list[np.ndarray]:
    """One forward on ``x`` (one array, or one per input); only floating inputs take ``dtype``."""
    import torch

    feeds = x if isinstance(x, tuple) else (x,)
    args = [torch.from_numpy(a).to(device=device, dtype=dtype if a.dtype.kind == "f" else None) for a in feeds]
    with torch.no_grad():
        return flatten(model(*args))


def exported_forwards(exported: Any, ref: Reference, *, head: str, training: bool, device: str,
                      copy: bool = True) -> list[list[np.ndarray] | None]:
    """The fp32 forward of the exported module on the first case(s) of ``ref`` (the inputs the other forwards
    saw; :data:`EXPORTED_CASES`), None for the others. ``copy=False``: ``exported`` is a private copy, run
    as it is."""
    import torch

    dev = torch.device(device)
    m = reference_model(exported, head=head, training=training, copy=copy).to(dev)
    return [_forward(m, c.feeds, torch.float32, dev) if i < EXPORTED_CASES else None for i, c in enumerate(ref.cases)]


def fused_copy(model: Any) -> Any | None:
    """A fused copy of a YOLOv5 model (what a fused export captures), or None when it has no fuse()."""
    if not hasattr(model, "fuse"):
        return None
    m = deepcopy(model)
    m.fuse()
    return m


def _truth(ref: Any, cases: list[Case], dtype: Any) -> str:
    """The float64 forward of ``ref`` (cast in place, on the CPU) for every case; '' when it ran, else why not
    (then no case has a truth)."""
    import torch

    try:
        ref = ref.cpu().to(dtype)
    except Exception as exc:  # a module that cannot be cast
        return f"the model cannot be cast to float64: {first_line(exc)}"
    for c in cases:
        try:
            c.f64 = _forward(ref, c.feeds, dtype, torch.device("cpu"))
        except Exception as exc:  # an op without a float64 kernel
            for d in cases:
                d.f64 = None
            return f"the model cannot run in float64: {first_line(exc)}"
    return ""


def build_reference(model: Any, shapes: list[tuple[int, ...]], *, inputs: int | None = None,
                    images: str | None = None, training: bool = False, head: str = "decode", seed: int = 0,
                    device: str = "cpu", exported: Any = None, truth: bool = True,
                    precision: str = "float32", cuda_floor: bool = False, own_exported: bool = False) -> Reference:
    """Forwards of ``model`` for every parity input: the noise floor in the file's ``precision`` (fp32 on
    ``device``; for float16 files PyTorch's float16 on CUDA, or :func:`fp16_storage` on the CPU) and the
    float64 truth on the CPU; with ``exported`` (the module that was captured, when it differs from
    ``model``), its fp32 forward too, on the first input (:data:`EXPORTED_CASES`). ``truth=False`` skips
    the float64 forward (the explicit tolerance rule needs none). For float16 files every input is rounded
    to float16 first, so all forwards see the values the file sees. ``cuda_floor``: also measure the floor with PyTorch on CUDA (for the CUDA
    provider), where torch can use CUDA. ``own_exported``: ``exported`` is a private copy made for this call
    (:func:`fused_copy`), configured and run as it is rather than copied again."""
    import torch

    dev = torch.device(device)
    ref32 = reference_model(model, head=head, training=training).to(dev)
    floor_model, floor_dtype, floor = None, torch.float32, "PyTorch fp32"
    if precision == "float16":
        if dev.type == "cuda":
            floor_model, floor_dtype, floor = deepcopy(ref32).half(), torch.float16, "PyTorch float16"
        else:
            floor_model, floor = fp16_storage(ref32), "PyTorch float16 storage (emulated on the CPU)"
    no_f64 = "" if truth else "not needed by the tolerance rule"
    exp32 = (reference_model(exported, head=head, training=training, copy=not own_exported).to(dev)
             if exported is not None else None)
    cuda_model, cuda_dtype = None, torch.float32
    if cuda_floor and torch.cuda.is_available() and dev.type != "cuda":
        cuda_model = deepcopy(ref32).cuda()
        if precision == "float16":
            cuda_model, cuda_dtype = cuda_model.half(), torch.float16
    cases = []
    for i, (label, x_in) in enumerate(make_inputs(shapes, inputs, seed, images)):
        x = tuple(x_in) if isinstance(x_in, tuple) else x_in  # several inputs: a tuple of arrays
        if precision == "float16":
            x = tuple(a.astype(np.float16).astype(np.float32) if a.dtype.kind == "f" else a
                      for a in (x if isinstance(x, tuple) else (x,)))
            x = x if len(x) > 1 else x[0]
        y32 = _forward(ref32, x, torch.float32, dev)
        yf = _forward(floor_model, x, floor_dtype, dev) if floor_model is not None else None
        ye = _forward(exp32, x, torch.float32, dev) if exp32 is not None and i < EXPORTED_CASES else None
        yc: list[np.ndarray] | None = None
        if dev.type == "cuda":  # the floor measured here is CUDA's
            yc = yf if yf is not None else y32
        else:
            yc = _forward(cuda_model, x, cuda_dtype, torch.device("cuda")) if cuda_model is not None else None
        feeds = x if isinstance(x, tuple) else (x,)
        cases.append(Case(label, feeds[0], y32, None, ye, [a.astype(np.float32) for a in yf] if yf is not None else None,
                          [a.astype(np.float32) for a in yc] if yc is not None else None, more=feeds[1:]))
    del floor_model, exp32, cuda_model
    if truth:  # the fp32 forwards are done: the same private copy becomes the float64 model (no second copy)
        no_f64 = _truth(ref32, cases, torch.float64)
    del ref32
    where = ", ".join(shape_text(s) for s in shapes)
    desc = f"{len(cases)} input(s) at {where}" + (f" from {images}" if images else " (seeded synthetic images)")
    return Reference(cases, "train" if training else "eval", desc, head, layout_of(model, head), no_f64,
                     fused=exported is not None, floor=floor, precision=precision)
