"""capture: run a torch exporter (TorchScript or dynamo) on the prepared model."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from functools import cache

from exporter.pipeline import Context

INPUT_NAME = "images"


@cache
def torchscript_available() -> bool:
    import torch.onnx

    return hasattr(torch.onnx, "TrainingMode") and hasattr(torch.onnx, "export")


def output_names(ctx: Context) -> list[str]:
    with contextlib.suppress(AttributeError, IndexError):
        det = ctx.model.model[-1]
        if ctx.options.head == "raw":
            return [f"output{i}" for i in range(det.nl)]
    return ["output0"]


NATIVE_OUTPUT_LIMIT = 4000  # characters of the exporter's native output kept: the end, where the error is


def _flush_c_stdout() -> None:
    with contextlib.suppress(Exception):  # no C library to ask: nothing buffered there either
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _native_stdout_captured() -> Iterator[dict[str, str]]:
    """Send what native code writes to file descriptor 1 to a temporary file instead of the terminal: the
    TorchScript exporter always turns its C++ ONNX log on, which prints the whole IR graph there when an
    export fails (the error itself is raised and reported in one line). After the block the yielded
    dict's ``"text"`` holds the output (its last ``NATIVE_OUTPUT_LIMIT`` characters); when the block
    raises, a non-empty text is also attached to the exception as a note, which ``--debug`` prints with
    the traceback. Descriptor 1 is the process's: other threads' output during the block lands there too."""
    out = {"text": ""}
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable descriptor 1
        yield out
        return
    failed: BaseException | None = None
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield out
        except BaseException as exc:
            failed = exc
            raise
        finally:
            _flush_c_stdout()
            os.dup2(saved, 1)
            os.close(saved)
            size = sink.seek(0, os.SEEK_END)
            sink.seek(max(0, size - 4 * NATIVE_OUTPUT_LIMIT))
            text = sink.read().decode("utf-8", errors="replace")
            if len(text) > NATIVE_OUTPUT_LIMIT or size > 4 * NATIVE_OUTPUT_LIMIT:
                text = f"[... {size} bytes in all, the end kept]\n" + text[-NATIVE_OUTPUT_LIMIT:]
            out["text"] = text
            if failed is not None and text.strip() and hasattr(failed, "add_note"):
                failed.add_note(f"native output of the exporter (file descriptor 1):\n{text.rstrip()}")


def tracer_warnings(caught: list[warnings.WarningMessage]) -> tuple[str, ...]:
    """The TracerWarnings among ``caught``, one line each with where in the model's code they arose
    (file name and line, no folders), duplicates once."""
    import torch

    out: dict[str, None] = {}
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            text = str(w.message).split(". ")[0].strip()
            out[f"{os.path.basename(w.filename)}:{w.lineno}: {text}"[:300]] = None
    return tuple(out)


def _torchscript(ctx: Context) -> tuple[bytes, str, tuple[str, ...]]:
    import torch

    o = ctx.options
    outs = output_names(ctx)
    if o.training:
        mode, how = torch.onnx.TrainingMode.TRAINING, "TrainingMode.TRAINING"
    elif o.bn_kept:
        # PRESERVE on an eval model keeps BatchNormalization(training_mode=0); EVAL would fold it
        mode, how = torch.onnx.TrainingMode.PRESERVE, "TrainingMode.PRESERVE (keeps BatchNorm)"
    else:
        mode, how = torch.onnx.TrainingMode.EVAL, "TrainingMode.EVAL"
    dynamic_axes = None
    if o.dynamic:
        axes = {0: "batch"} if o.dynamic == "batch" else {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {INPUT_NAME: axes, **{n: {0: "batch"} for n in outs}}
        if o.dynamic == "all":
            dynamic_axes.update({n: {0: "batch", 1: "anchors"} for n in outs} if o.head == "decode" else
                                {n: {0: "batch", 2: "ny", 3: "nx"} for n in outs})
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, _native_stdout_captured():
        warnings.simplefilter("always")  # recorded, not printed: tracer warnings are kept, the rest dropped
        torch.onnx.export(ctx.model, (ctx.example,), f, dynamo=False,  # type: ignore[arg-type]
                          opset_version=o.opset, training=mode, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=outs, dynamic_axes=dynamic_axes)
    ctx_warnings = tracer_warnings(caught)
    return f.getvalue(), f"torchscript, {how}, opset {o.opset}", ctx_warnings


def _dynamo(ctx: Context) -> tuple[bytes, str, tuple[str, ...]]:
    import torch

    o = ctx.options
    dynamic_shapes = None
    if o.dynamic:
        dim = torch.export.Dim.DYNAMIC
        axes = {0: dim} if o.dynamic == "batch" else {0: dim, 2: dim, 3: dim}
        dynamic_shapes = {"x": axes}
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
            program = torch.onnx.export(ctx.model, (ctx.example,), dynamo=True, opset_version=o.opset,
                                        optimize=False, input_names=[INPUT_NAME], output_names=output_names(ctx),
                                        dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    assert program is not None
    proto = program.model_proto
    for node in proto.graph.node:  # drop stack traces (local file paths) and fx dumps; keep module scopes
        keep = [p for p in node.metadata_props if p.key not in ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return proto.SerializeToString(), f"dynamo (torch.export), opset {o.opset}", ()


def capture(ctx: Context) -> Context:
    import onnx

    exporter = ctx.options.capture_exporter
    data, how, traced = _torchscript(ctx) if exporter == "torchscript" else _dynamo(ctx)
    ctx = ctx.replace(onnx=onnx.load_from_string(data), change=how, tracer_warnings=traced)
    if traced:
        ctx = ctx.note(f"{len(traced)} TracerWarning(s) in capture: the trace may have baked in values of the "
                       "example input (the parity check runs on other inputs to find out)")
    return ctx
