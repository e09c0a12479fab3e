"""The machinery around a capture attempt, for the capture stage (:mod:`exporter.stages.capture`) and
its external-data variant (:func:`exporter.stages.external.capture_external`).

Each attempt of :func:`run_strategies` runs with what the exporter writes to file descriptors 1 and 2
captured (:func:`_native_stdout_captured`: the TorchScript exporter prints its whole IR graph there on a
failure), its log records collected (:class:`_ListHandler`) and nn.MultiheadAttention's fused fast path
off (:func:`_mha_fastpath_off`). A failed attempt becomes one line (:func:`diagnose`: the operator or
construct, the model's own ``file.py:line``, the next step) and a section of the capture log
(``NAME.capture.log`` beside the output, :func:`_log_path`); all failed: :class:`CaptureError`.
Also here: :class:`CaptureAttempt` (the manifest's ``capture_attempts``), :func:`attempts_note` (the
record's text for fallbacks) and :func:`tracer_warnings` (the TracerWarnings a trace raised).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from exporter.errors import YexportError, first_line
from exporter.options import torchscript_available
from exporter.pipeline import Context

R = TypeVar("R")


class CaptureError(YexportError):
    """Every capture strategy failed; the message says why for each and where the full log is."""

    exit_code = 1


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
