"""capture: run a torch exporter (TorchScript or dynamo) on the prepared model.

Capture strategies, as torch.onnx has its own: the exporters of ``ExportOptions.capture_strategies`` are
tried in order (``auto``: TorchScript, then dynamo), each attempt recorded (``ctx.capture_attempts``:
exporter, ok, error). A failed attempt is one line naming the operator or construct and what to do next
(:func:`~exporter.stages.capture_attempts.diagnose`); the exporter's whole output (traceback, native
log, warnings) goes to a log file beside the output (``NAME.capture.log``). That machinery around the
attempts is in :mod:`exporter.stages.capture_attempts`; this module holds the names, the example
arguments, the two exporters' calls and the stage itself (:func:`capture`, :func:`captured`).

Names: the input is ``images`` for an image model, else the forward's parameter names; the outputs are
``output0`` for one tensor (YOLOv5's decoded output, any single tensor), ``output0..`` for a tuple or
list, the keys of a dict or namedtuple (``logits``, ``features``), joined with dots when nested
(``out.boxes``, ``output1.0``), in the order PyTorch's output flattens (the order parity compares).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from exporter.pipeline import Context
from exporter.stages.capture_attempts import CaptureError, attempts_note, run_strategies, tracer_warnings

if TYPE_CHECKING:
    from torch import nn

INPUT_NAME = "images"


# ------------------------------------------------------------------------------------------ names


def _detect(ctx: Context) -> Any:
    from exporter.models.common import Detect

    with contextlib.suppress(AttributeError, IndexError, TypeError):
        det = cast("nn.Sequential", ctx.prepared.model)[-1]
        return det if isinstance(det, Detect) else None
    return None


def example_args(ctx: Context) -> tuple[Any, ...]:
    """The positional arguments of the capture: one example tensor, or one per ``--input-shape``."""
    ex = ctx.example
    return tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)


def leaf_names(y: Any, prefix: str = "") -> list[str]:
    """ONNX output names for an output structure, in its flatten order (see the module docstring)."""
    import torch

    def path(key: object) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if isinstance(y, torch.Tensor):
        return [prefix or "output0"]
    if isinstance(y, dict):
        return [n for k, v in y.items() for n in leaf_names(v, path(k))]
    if isinstance(y, tuple) and hasattr(y, "_fields"):  # namedtuple
        return [n for k, v in zip(y._fields, y, strict=True) for n in leaf_names(v, path(k))]
    if isinstance(y, (list, tuple)):
        return [n for i, v in enumerate(y) for n in leaf_names(v, f"{prefix}.{i}" if prefix else f"output{i}")]
    where = f"output {prefix!r}" if prefix else "the model's output"
    raise CaptureError(f"{where} is a {type(y).__name__}: an ONNX graph's outputs are tensors (in tuples, lists, "
                       "dicts or namedtuples); make the factory's module return tensors only")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out


def output_names(ctx: Context) -> list[str]:
    """YOLOv5: ``output0`` (decoded) or one per level (raw). Any other model: from its output structure
    (one forward of the prepared model on the example)."""
    det = _detect(ctx)
    if det is not None:
        return [f"output{i}" for i in range(det.nl)] if ctx.options.head == "raw" else ["output0"]
    if ctx.model is None or ctx.example is None:
        return ["output0"]
    import torch

    with torch.no_grad():
        y = ctx.model(*example_args(ctx))
    return _unique(leaf_names(y))


def input_names(ctx: Context) -> list[str]:
    """``images`` for one image input (YOLOv5 and other image models); else the forward's parameter names."""
    specs = ctx.options.example_inputs
    if len(specs) == 1 and specs[0].is_image:
        return [INPUT_NAME]
    names: list[str] = []
    with contextlib.suppress(TypeError, ValueError):
        params = inspect.signature(ctx.prepared.forward).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = names[:len(specs)] if len(names) >= len(specs) else [f"input{i}" for i in range(len(specs))]
    return _unique(names)


def _is_yolo(ctx: Context) -> bool:
    return _detect(ctx) is not None


# ------------------------------------------------------------------------------------ the exporters


def _torchscript_axes(ctx: Context, ins: list[str], outs: list[str]) -> dict[str, dict[int, str]] | None:
    o = ctx.options
    if not o.dynamic:
        return None
    if _is_yolo(ctx) or not o.input_shapes and len(ins) == 1:
        axes = {0: "batch"} if o.dynamic == "batch" else {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {ins[0]: axes}
        if _is_yolo(ctx):
            dynamic_axes.update({n: {0: "batch"} for n in outs})
            if o.dynamic == "all":
                dynamic_axes.update({n: {0: "batch", 1: "anchors"} for n in outs} if o.head == "decode" else
                                    {n: {0: "batch", 2: "ny", 3: "nx"} for n in outs})
        return dynamic_axes  # other models: the exporter works out which output sizes follow
    labels = {0: "batch"}
    return {n: {a: labels.get(a, f"{n}_dim{a}") for a in spec.dynamic_axes(o.dynamic)}
            for n, spec in zip(ins, o.example_inputs, strict=True)}


def torchscript_export(ctx: Context, f: Any) -> tuple[str, tuple[str, ...]]:
    """The TorchScript export of the prepared model to ``f`` (a file object or a path); returns how it
    was made and the TracerWarnings."""
    import torch

    o = ctx.options
    outs, ins = output_names(ctx), input_names(ctx)
    if o.training:
        mode, how = torch.onnx.TrainingMode.TRAINING, "TrainingMode.TRAINING"
    elif o.bn_kept:
        # PRESERVE on an eval model keeps BatchNormalization(training_mode=0); EVAL would fold it
        mode, how = torch.onnx.TrainingMode.PRESERVE, "TrainingMode.PRESERVE (keeps BatchNorm)"
    else:
        mode, how = torch.onnx.TrainingMode.EVAL, "TrainingMode.EVAL"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, not printed: tracer warnings are kept, the rest dropped
        torch.onnx.export(ctx.model, example_args(ctx), f, dynamo=False,  # type: ignore[arg-type]
                          opset_version=o.opset, training=mode, do_constant_folding=True,
                          input_names=ins, output_names=outs, dynamic_axes=_torchscript_axes(ctx, ins, outs))
    return f"torchscript, {how}, opset {o.opset}", tracer_warnings(caught)


def dynamo_program(ctx: Context) -> tuple[Any, str]:
    """The dynamo (torch.export) ONNXProgram of the prepared model, and how it was made."""
    import torch

    o = ctx.options
    dynamic_shapes: tuple[dict[int, Any] | None, ...] | None = None
    if o.dynamic:
        dim = torch.export.Dim.DYNAMIC
        if _is_yolo(ctx) or not o.input_shapes:
            dynamic_shapes = ({0: dim} if o.dynamic == "batch" else {0: dim, 2: dim, 3: dim},)
        else:
            dynamic_shapes = tuple({a: dim for a in s.dynamic_axes(o.dynamic)} or None for s in o.example_inputs)
    # torch.onnx: "Tensor 'model.24.stride' is not one of the initializers" (a constant); onnxscript: the
    # version converter's fallback warnings and tracebacks (the checker stage reports a wrong opset)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # optimize=False: the onnxscript optimizer folds BatchNorm into Conv; our tidy stage optimizes
            # with the same passes but honours --keep-bn
            program = torch.onnx.export(ctx.prepared, example_args(ctx), dynamo=True, opset_version=o.opset,
                                        optimize=False, input_names=input_names(ctx), output_names=output_names(ctx),
                                        dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    return program, f"dynamo (torch.export), opset {o.opset}"


def _torchscript(ctx: Context) -> tuple[bytes, str, tuple[str, ...]]:
    f = io.BytesIO()
    how, traced = torchscript_export(ctx, f)
    return f.getvalue(), how, traced


def _dynamo(ctx: Context) -> tuple[bytes, str, tuple[str, ...]]:
    program, how = dynamo_program(ctx)
    proto = program.model_proto
    for node in proto.graph.node:  # drop stack traces (local file paths) and fx dumps; keep module scopes
        keep = [p for p in node.metadata_props if p.key not in ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return proto.SerializeToString(), how, ()


def capture(ctx: Context) -> Context:
    import onnx

    def attempt(exporter: str) -> tuple[bytes, str, tuple[str, ...]]:
        return _torchscript(ctx) if exporter == "torchscript" else _dynamo(ctx)

    try:
        (data, how, traced), exporter, attempts, log = run_strategies(ctx, attempt)
    except CaptureError as exc:
        from exporter.models.detection import post_processing

        post = post_processing(ctx.source.model) if ctx.options.head != "raw" else ""
        if not post:
            raise
        raise CaptureError(f"{exc}; the model ends in {post}: export the network up to it with --raw-head "
                           "(the head's raw outputs)") from None
    ctx = ctx.replace(onnx=onnx.load_from_string(data), change=how + attempts_note(attempts, log))
    return captured(ctx, attempts, exporter, log, traced)


def captured(ctx: Context, attempts: Sequence[Any], exporter: str, log: str, traced: tuple[str, ...]) -> Context:
    """``ctx`` after a capture: its attempts, a note when the first exporter failed, and its TracerWarnings."""
    ctx = ctx.replace(tracer_warnings=traced, capture_attempts=tuple(a.as_dict() for a in attempts))
    if len(attempts) > 1:
        ctx = ctx.note(f"capture: {attempts[0].exporter} failed ({attempts[0].error}); the file was made by "
                       f"{exporter}" + (f"; the first exporter's log: {log}" if log else ""))
    if traced:
        ctx = ctx.note(f"{len(traced)} TracerWarning(s) in capture: the trace may have baked in values of the "
                       "example input (the parity check runs on other inputs to find out)")
    return ctx
