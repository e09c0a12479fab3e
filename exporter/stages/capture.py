"""capture: run a torch exporter (TorchScript or dynamo) on the prepared model.

Capture strategies, as torch.onnx has its own: the exporters of ``ExportOptions.capture_strategies`` are
tried in order (``auto``: TorchScript, then dynamo), each attempt recorded (``ctx.capture_attempts``:
exporter, ok, error). A failed attempt is one line naming the operator or construct and what to do next
(:func:`diagnose`); the exporter's whole output (traceback, native log, warnings) goes to a log file
beside the output (``NAME.capture.log``).

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
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from exporter.errors import YexportError, first_line
from exporter.options import torchscript_available
from exporter.pipeline import Context

if TYPE_CHECKING:
    from torch import nn

INPUT_NAME = "images"
R = TypeVar("R")


class CaptureError(YexportError):
    """Every capture strategy failed; the message says why for each and where the full log is."""

    exit_code = 1


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


# ------------------------------------------------------------------------------------ native output


NATIVE_OUTPUT_LIMIT = 4000  # characters of the exporter's native output kept: the end, where the error is


def _flush_c_stdout() -> None:
    with contextlib.suppress(Exception):  # no C library to ask: nothing buffered there either
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _native_stdout_captured(fd: int = 1, full: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Send what native code writes to file descriptor ``fd`` (1) to a temporary file instead of the
    terminal: the TorchScript exporter always turns its C++ ONNX log on, which prints the whole IR graph
    there when an export fails (the error itself is raised and reported in one line). After the block the
    yielded dict's ``"text"`` holds the output (its last ``NATIVE_OUTPUT_LIMIT`` characters; ``full``,
    when given, receives all of it under ``"text"``, for the capture log); when the block raises, a
    non-empty text is also attached to the exception as a note, which ``--debug`` prints with the
    traceback. The descriptor is the process's: other threads' output during the block lands there too."""
    out = {"text": ""}
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):  # no usable descriptor
        yield out
        return
    failed: BaseException | None = None
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield out
        except BaseException as exc:
            failed = exc
            raise
        finally:
            _flush_c_stdout()
            with contextlib.suppress(Exception):
                stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            size = sink.seek(0, os.SEEK_END)
            if full is not None:
                sink.seek(0)
                full["text"] = sink.read(32 << 20).decode("utf-8", errors="replace")
            sink.seek(max(0, size - 4 * NATIVE_OUTPUT_LIMIT))
            text = sink.read().decode("utf-8", errors="replace")
            if len(text) > NATIVE_OUTPUT_LIMIT or size > 4 * NATIVE_OUTPUT_LIMIT:
                text = f"[... {size} bytes in all, the end kept]\n" + text[-NATIVE_OUTPUT_LIMIT:]
            out["text"] = text
            if failed is not None and text.strip() and hasattr(failed, "add_note"):
                failed.add_note(f"native output of the exporter (file descriptor {fd}):\n{text.rstrip()}")


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


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """nn.MultiheadAttention / TransformerEncoderLayer have a fused fast path
    (``aten::_native_multi_head_attention``) that no ONNX exporter translates; it is taken under no_grad
    or with frozen parameters. Off during capture, restored after."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


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


# ------------------------------------------------------------------------------------ strategies


@dataclass(frozen=True)
class CaptureAttempt:
    """One capture strategy tried: which exporter, whether it worked, and why not (one line)."""

    exporter: str
    ok: bool
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (torch.onnx wraps torch.export's error in its own)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 20:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


_SITE = re.compile(r"(site-packages|dist-packages|/torch/|/onnxscript/|/exporter/)")


def _user_frame(excs: list[BaseException]) -> str:
    """``file.py:line`` of the deepest frame in the model's own code (not torch, not yexport), if any."""
    for e in reversed(excs):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if not _SITE.search(f.filename)]
        if frames:
            return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
        for m in re.finditer(r'File "([^"]+)", line (\d+)', str(e)):
            if not _SITE.search(m.group(1)):
                return f"{os.path.basename(m.group(1))}:{m.group(2)}"
    return ""


def diagnose(exporter: str, exc: BaseException, other: str | None = None) -> str:
    """One line: the operator or construct that stopped ``exporter``, and the next step."""
    excs = _chain(exc)
    text = "\n".join(str(e) for e in excs)
    where = _user_frame(excs)
    at = f" at {where}" if where else ""
    try_other = f"; try --exporter {other}" if other else ""
    m = re.search(r"Exporting the operator '([^']+)' to ONNX opset version (\d+) is not supported", text)
    if m:
        op = m.group(1)
        if "multi_head_attention" in op:
            return (f"operator {op} (nn.MultiheadAttention's fused fast path) has no ONNX translation{at}; "
                    f"capture runs with the fast path off, so a module calls it directly{try_other}")
        return (f"operator {op} has no TorchScript-to-ONNX translation at opset {m.group(2)}{at}"
                f"{try_other or '; try another --opset'}, or replace it in the module your factory returns")
    m = re.search(r"(Could not guard on data-dependent expression|Could not extract specialized integer from "
                  r"data-dependent expression|data-dependent expression) ([^\n]*?)(?: \(| because|\n|$)", text)
    if m or "GuardOnDataDependentSymNode" in text or "DataDependentOutputException" in text:
        expr = f" {m.group(2).strip()}" if m and m.group(2).strip() else ""
        return (f"data-dependent control flow or shape{expr}{at} (typical of post-processing: score "
                "thresholds, NMS, per-image loops): export the network before it, by letting your factory "
                f"return that part{try_other}")
    m = re.search(r"Constraints violated \(([^)]*)\)[^\n]*\n?([^\n]*)", text)
    if m or "specialized" in text and "Dim" in text:
        why = first_line(m.group(2)) if m and m.group(2).strip() else "a dimension was specialized to the example"
        return (f"dynamic shapes: the model fixes a size marked dynamic ({why[:160]}){at}; use --dynamic batch, "
                "or no --dynamic")
    m = re.search(r"Unsupported: ([^\n]+)", text)
    if m:
        return f"torch.export does not support {m.group(1)[:160]}{at}{try_other}"
    # the innermost message is the cause; torch.onnx's wrapper only says which step failed
    inner = next((first_line(e) for e in reversed(excs) if str(e).strip()), type(exc).__name__)
    return f"{type(excs[-1]).__name__}: {inner[:220]}{at}{try_other}"


def _log_path(ctx: Context) -> Path:
    """``NAME.capture.log`` beside the output (``ctx.output``), else in the temporary folder."""
    out = getattr(ctx, "output", None)
    if out is not None:
        return Path(out).parent / f"{Path(out).stem}.capture.log"
    name = getattr(ctx.source, "name", "model") or "model"
    return Path(tempfile.gettempdir()) / f"yexport-{name}.capture.log"


def _write_log(ctx: Context, sections: list[str]) -> Path | None:
    path = _log_path(ctx)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(sections), encoding="utf-8")
    except OSError:
        return None
    return path


def _drop_stale_log(ctx: Context) -> None:
    """A capture log left by an earlier run of the same file would describe failures that did not happen."""
    path = _log_path(ctx)
    with contextlib.suppress(OSError):
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace")[:4] == "=== ":
            path.unlink()


def run_strategies(ctx: Context, attempt: Callable[[str], R]) -> tuple[R, str, tuple[CaptureAttempt, ...], str]:
    """Try ``attempt(exporter)`` for each exporter of ``ctx.options.capture_strategies`` in order, each with
    its native output and log captured. Returns (the first result, the exporter that gave it, every
    attempt, the capture log's path or ""); when all fail, raises :class:`CaptureError`: one line per
    attempt and the log's path."""
    order = ctx.options.capture_strategies
    attempts: list[CaptureAttempt] = []
    log: list[str] = []
    for exporter in order:
        # the next step names the other exporter only where auto would not try it anyway
        other = None
        if ctx.options.exporter != "auto" and not ctx.options.training:
            other = "dynamo" if exporter == "torchscript" else "torchscript" if torchscript_available() else None
        fd1: dict[str, str] = {}
        fd2: dict[str, str] = {}
        records: list[str] = []
        handler = _ListHandler(records)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with _mha_fastpath_off(), _native_stdout_captured(1, fd1), _native_stdout_captured(2, fd2):
                result = attempt(exporter)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - exporters raise anything; each failure is recorded
            line = diagnose(exporter, exc, other)
            attempts.append(CaptureAttempt(exporter, False, line))
            log.append(f"=== {exporter}: FAILED\n{line}\n\n--- traceback\n"
                       + "".join(traceback.format_exception(exc))
                       + f"\n--- native output (stdout)\n{fd1.get('text', '')}\n--- stderr\n{fd2.get('text', '')}"
                       + "\n--- log records\n" + "\n".join(records))
            continue
        finally:
            root.removeHandler(handler)
        attempts.append(CaptureAttempt(exporter, True))
        if log:
            return result, exporter, tuple(attempts), str(_write_log(ctx, log) or "")
        _drop_stale_log(ctx)
        return result, exporter, tuple(attempts), ""
    path = _write_log(ctx, log)
    where = f" (full log: {path})" if path else ""
    lines = "; ".join(f"{a.exporter}: {a.error}" for a in attempts)
    raise CaptureError(f"no exporter could capture the model: {lines}{where}")


class _ListHandler(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if len(self.out) < 10000:
                self.out.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def attempts_note(attempts: tuple[CaptureAttempt, ...], log: str) -> str:
    """The record's text for the fallbacks before the exporter that worked ("" when the first worked)."""
    failed = [a for a in attempts if not a.ok]
    if not failed:
        return ""
    return "; after " + "; ".join(f"{a.exporter} failed: {a.error}" for a in failed) + (f" (log: {log})" if log else "")


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
