"""onnxruntime sessions: the provider that really ran, read from the session, and honest run errors."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from exporter.errors import InputError, ParityError, first_line
from exporter.options import PROVIDER_NAMES
from exporter.parity.report import ProviderParity


@contextlib.contextmanager
def _captured_stderr() -> Iterator[dict[str, str]]:
    """Capture what native code prints on file descriptor 2 (onnxruntime's provider errors)."""
    buf: dict[str, str] = {"text": ""}
    try:
        saved = os.dup(2)
    except OSError:
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf["text"] = tmp.read(64 << 10).decode("utf-8", "replace")


def open_session(model_bytes: bytes | str, requested: str) -> tuple[Any, ProviderParity]:
    """An onnxruntime session for provider ``requested`` ('cpu', 'cuda', 'tensorrt') and what ran.

    A file that the CPU provider cannot load (dangling edges, cycles, unknown operators, an opset that
    onnxruntime lacks) is an input error; another provider that cannot load it did not run."""
    import onnxruntime as ort

    provider = PROVIDER_NAMES[requested]
    result = ProviderParity(requested, provider, False, [])
    available = ort.get_available_providers()
    if provider not in available:
        result.reason = f"this onnxruntime build has no {provider} (installed: {', '.join(available)})"
        return None, result
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # A parity check runs a few forwards, with PyTorch's between them: idle pool threads sleep instead of
    # spinning (measured on yolov5s at 640 on 2 cores: the same wall time, a fifth less CPU for the runs)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    with _captured_stderr() as err:
        try:
            sess = ort.InferenceSession(model_bytes, sess_options=so, providers=chain)
        except Exception as exc:  # onnxruntime raises its own exception types
            if provider == "CPUExecutionProvider":
                raise InputError(f"onnxruntime cannot load the file: {first_line(exc)[:300]}") from None
            sess, result.reason = None, f"session failed: {first_line(exc)[:300]}"
    if sess is None:
        return None, result
    result.ran_on = sess.get_providers()
    result.ran = result.ran_on[:1] == [provider]
    if not result.ran:
        why = _fallback_reason(err["text"])
        result.reason = f"{provider} is listed but the session fell back to {result.ran_on[0]}" + (f" ({why})" if why else "")
    return sess, result


def check_input(proto: Any, x: np.ndarray, index: int = 0) -> None:
    """Refuse an input the file's declared input ``index`` cannot take (rank, static sizes), as an input error."""
    dims = proto.graph.input[index].type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    shown = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in dims]
    if len(want) != x.ndim or any(w is not None and w != s for w, s in zip(want, x.shape, strict=False)):
        raise InputError(f"input {'x'.join(map(str, x.shape))} does not fit the file's input {shown} "
                         "(give --shapes that match it)")


def run(sess: Any, proto: Any, x: np.ndarray | tuple[np.ndarray, ...], requested: str) -> list[np.ndarray]:
    """One onnxruntime run on ``x`` (one array, or one per graph input in order); a failure inside
    onnxruntime is a parity failure naming its message."""
    from exporter.graph.onnx_pb import messages

    feeds = x if isinstance(x, tuple) else (x,)
    if len(feeds) != len(proto.graph.input):
        raise InputError(f"the file has {len(proto.graph.input)} inputs but {len(feeds)} were given")
    named = {}
    for k, (graph_input, a) in enumerate(zip(proto.graph.input, feeds, strict=True)):
        check_input(proto, a, k)
        if graph_input.type.tensor_type.elem_type == messages().TensorProto.FLOAT16 and a.dtype.kind == "f":
            a = a.astype(np.float16)
        named[graph_input.name] = a
    shown = "+".join("x".join(map(str, a.shape)) for a in feeds)
    try:
        return list(sess.run(None, named))
    except Exception as exc:  # onnxruntime's RuntimeException, Fail, InvalidArgument...
        raise ParityError(f"onnxruntime failed running the file on {requested} for input "
                          f"{shown}: {first_line(exc)[:300]}") from None


def _fallback_reason(log: str) -> str:
    """The useful part of onnxruntime's provider error log, without local paths."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    parts = []
    m = re.search(r"with error: ([^\n]+)", text)
    if m:
        parts.append(m.group(1).strip())
    m = re.search(r"(Require [^\n]+?)\. Please", text)
    if m:
        parts.append(m.group(1).strip())
    return "; ".join(re.sub(r"/\S+/", "", p) for p in parts)[:240]
