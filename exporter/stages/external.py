"""External data: models whose weights do not fit one protobuf (2 GiB).

A model whose parameters and buffers reach :func:`external_threshold` bytes (1.5 GiB by default, or
``YEXPORT_EXTERNAL_DATA_THRESHOLD``) is captured to a private working folder instead of to memory:
the exporter writes the weights there as external data, and the pipeline carries a weight-free
``ModelProto`` whose tensors point into that folder (``Context.external_dir``). The stages only ever
hold the graph; the weights are read back once, in chunks, when the file is written
(:func:`write_external`: ``NAME.onnx`` + ``NAME.onnx.data``, committed as a set by
:class:`exporter.io.PairWriter`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from exporter.errors import ConfigError
from exporter.pipeline import GRAPH, PREPARED, Condition, Context, Stage, Verdict

if TYPE_CHECKING:
    from onnx import ModelProto, TensorProto

THRESHOLD_ENV = "YEXPORT_EXTERNAL_DATA_THRESHOLD"
DEFAULT_THRESHOLD = 3 << 29  # 1.5 GiB: well under the 2 GiB a protobuf can hold, graph and metadata included
INLINE_LIMIT = 1024  # tensors smaller than this stay inside the .onnx (shapes, scalars), as onnx.save does
ALIGN = 4096  # offsets of tensors in the data file (page-aligned: onnxruntime can map them)
CHUNK = 16 << 20
_EXTERNAL = 1  # TensorProto.EXTERNAL
_WORK_DIRS: set[Path] = set()


def external_threshold() -> int:
    """Bytes of weights from which a model is written with external data (``YEXPORT_EXTERNAL_DATA_THRESHOLD``)."""
    raw = os.environ.get(THRESHOLD_ENV, "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{THRESHOLD_ENV}={raw!r}: give a number of bytes") from None
    if value < 0:
        raise ConfigError(f"{THRESHOLD_ENV}={raw!r}: give a number of bytes, at least 0")
    return value


def has_external(model: ModelProto | None) -> bool:
    """True when an initializer of ``model`` keeps its data outside the protobuf."""
    return model is not None and any(t.data_location == _EXTERNAL for t in model.graph.initializer)


def module_bytes(module: Any) -> int:
    """Bytes of a torch module's parameters and buffers (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def inline_bytes(model: ModelProto) -> int:
    """Bytes the initializers of ``model`` hold inside the protobuf."""
    return sum(len(t.raw_data) for t in model.graph.initializer if t.data_location != _EXTERNAL) \
        + sum(4 * len(t.float_data) + 8 * (len(t.int64_data) + len(t.double_data)) + 4 * len(t.int32_data)
              for t in model.graph.initializer if t.data_location != _EXTERNAL)


# ------------------------------------------------------------------------------------- capture


def work_dir() -> Path:
    """A private folder for one export's weights; removed by :func:`discard` (or at exit)."""
    d = Path(tempfile.mkdtemp(prefix="yexport-weights-"))
    _WORK_DIRS.add(d)
    return d


def discard(d: Path | None) -> None:
    if d is not None:
        shutil.rmtree(d, ignore_errors=True)
        _WORK_DIRS.discard(d)


@atexit.register
def _discard_all() -> None:
    for d in list(_WORK_DIRS):
        discard(d)


def capture_any(ctx: Context) -> Context:
    """The capture stage: in memory (:func:`exporter.stages.capture.capture`), or to a working folder
    with external data when the prepared model's weights reach :func:`external_threshold`."""
    from exporter.stages import capture as capture_mod

    size = module_bytes(ctx.prepared)
    if size < external_threshold():
        return capture_mod.capture(ctx)
    return capture_external(ctx, size)


def _opset_asked(ctx: Context) -> Verdict:
    if ctx.onnx is None:
        return Verdict(False, "there is no ONNX graph")
    opset = next((i.version for i in ctx.onnx.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset != ctx.options.opset:
        return Verdict(False, f"the graph has opset {opset} but --opset {ctx.options.opset} was asked for (the "
                              "exporter switched opsets); choose an opset the exporter supports, e.g. 18")
    return Verdict(True, f"opset {opset}")


OPSET = Condition("the opset asked for", _opset_asked)
STAGE = Stage("capture", capture_any, requires=(PREPARED,), ensures=(GRAPH, OPSET),
              numerics=lambda o: "BatchNorm normalises with batch statistics: outputs depend on the whole batch"
              if o.training else "none (eval mode)")


def capture_external(ctx: Context, size: int) -> Context:
    """Capture to a working folder with the capture stage's exporters, strategies and log
    (:func:`exporter.stages.capture_attempts.run_strategies`); the context then holds the weight-free
    graph and ``external_dir``. TorchScript writes the weights beside the path it is given (it refuses a
    file object over 2 GiB); dynamo's program is saved with external data, never turned into one protobuf."""
    import onnx

    from exporter.stages import capture as cap
    from exporter.stages.capture_attempts import attempts_note, run_strategies

    folder = work_dir()
    path = folder / "model.onnx"

    def attempt(exporter: str) -> tuple[str, tuple[str, ...]]:
        for leftover in folder.iterdir():  # a failed attempt's files
            leftover.unlink()
        if exporter == "torchscript":
            return cap.torchscript_export(ctx, str(path))
        program, how = cap.dynamo_program(ctx)
        program.save(str(path), external_data=True)
        return how, ()

    try:
        (how, traced), exporter, attempts, log = run_strategies(ctx, attempt)
        model = onnx.load(str(path), load_external_data=False)
    except BaseException:
        discard(folder)
        raise
    for node in model.graph.node:  # as capture does: no stack traces (local paths) or fx dumps
        keep = [p for p in node.metadata_props if p.key not in ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    path.unlink()  # the graph lives in the context; the folder keeps only the weights
    if inline_bytes(model) >= INLINE_LIMIT:  # under 2 GiB the exporter kept them inline: move them out too
        with open(folder / "inline.data", "wb") as f:
            write_external(model, folder, f, "inline.data", inline_only=True)
    change = (f"{how}; weights as external data ({size / 2**30:.2f} GiB, threshold "
              f"{external_threshold() / 2**30:.2f} GiB)" + attempts_note(attempts, log))
    ctx = ctx.replace(onnx=model, external_dir=folder, change=change)
    return cap.captured(ctx, attempts, exporter, log, traced)


# ------------------------------------------------------------------------------------- reading and writing


def _info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def tensor_chunks(t: TensorProto, base: Path | None) -> Iterator[bytes]:
    """The bytes of initializer ``t``: from its external file under ``base`` (a working folder this
    process wrote), or from the protobuf."""
    if t.data_location != _EXTERNAL:
        if t.HasField("raw_data"):
            yield t.raw_data
        else:
            from onnx import numpy_helper

            arr = numpy_helper.to_array(t)
            yield arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        return
    if base is None:
        raise RuntimeError(f"initializer {t.name!r} is external data but no working folder is known")
    info = _info(t)
    from exporter.graph.load import declared_bytes

    offset = int(info.get("offset") or 0)
    left = int(info["length"]) if info.get("length") else declared_bytes(t)
    with open(base / info["location"], "rb") as f:
        f.seek(offset)
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                raise RuntimeError(f"initializer {t.name!r}: external data ends early")
            left -= len(block)
            yield block


def write_external(model: ModelProto, base: Path | None, out: IO[bytes], location: str, *,
                   inline_only: bool = False) -> int:
    """Write the weights of ``model`` to ``out`` (the data file, named ``location`` beside the .onnx) and
    point its initializers there; tensors under :data:`INLINE_LIMIT` bytes stay inline (``inline_only``:
    tensors already external stay where they are). Returns the bytes written. ``model`` is changed in
    place (it is the graph about to be written)."""
    from exporter.graph.load import declared_bytes

    offset = 0
    for t in model.graph.initializer:
        if t.data_location == _EXTERNAL and inline_only:
            continue
        if t.data_location != _EXTERNAL and declared_bytes(t) < INLINE_LIMIT:
            continue
        pad = -offset % ALIGN
        if pad:
            out.write(b"\0" * pad)
            offset += pad
        start = offset
        for block in tensor_chunks(t, base):
            out.write(block)
            offset += len(block)
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(field)
        del t.external_data[:]
        t.data_location = _EXTERNAL
        for k, v in (("location", location), ("offset", str(start)), ("length", str(offset - start))):
            t.external_data.add(key=k, value=v)
    return offset


def saved_copy(ctx: Context) -> Path:
    """The graph of ``ctx`` saved as ``model.onnx`` in its working folder, beside the weights it points
    to: what onnxruntime and ``onnx.checker`` open by path (they read external data themselves)."""
    import onnx

    assert ctx.external_dir is not None
    path = ctx.external_dir / "model.onnx"
    onnx.save(ctx.graph, str(path))
    return path


def onnx_source(ctx: Context) -> ModelProto | Path:
    """What to hand to parity for the current graph: the proto, or its path when the weights are external."""
    return saved_copy(ctx) if ctx.external_dir is not None and has_external(ctx.onnx) else ctx.graph
