"""The one check every graph-rewriting stage runs on its result before the pipeline moves on.

:func:`verified` returns the rewritten graph when it is a valid ONNX model (``onnx.checker``, which
also refuses nodes out of topological order) that computes what its input computed (one onnxruntime
run of both on the same random input, where the rewrite may change numerics); otherwise it returns
the stage's *input* and the reason, so a bad rewrite costs the rewrite, never the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import first_line
from exporter.pipeline import Context

if TYPE_CHECKING:
    from onnx import ModelProto

#: outputs of the rewritten graph may differ from its input's by this much, relative to the largest
#: output magnitude (constant folding in fp32 moves results by a few ulps; a broken rewrite by far more)
RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Verdict:
    graph: ModelProto  # the rewritten graph, or the stage's input after a fallback
    reason: str = ""  # why the rewrite was refused ("" when it was kept)

    @property
    def fell_back(self) -> bool:
        return bool(self.reason)


def check_structure(model: ModelProto, base_dir: Path | None = None) -> str:
    """``""`` when onnx.checker accepts ``model`` (topological order, types, opsets), else why not. A
    model whose weights are external data in ``base_dir`` is checked by path, beside them."""
    import onnx

    from exporter.stages.external import has_external

    try:
        if base_dir is not None and has_external(model):
            path = base_dir / "verify.onnx"
            onnx.save(model, str(path))
            try:
                onnx.checker.check_model(str(path))
            finally:
                path.unlink(missing_ok=True)
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        return f"onnx.checker refused the result: {_short(exc)}"
    except Exception as exc:  # a protobuf too large to check, or another failure inside onnx
        return f"onnx.checker could not check the result: {_short(exc)}"
    return ""


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(first_line(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _input_for(model: ModelProto, ctx: Context):  # -> np.ndarray | None
    import numpy as np
    import onnx

    if len(model.graph.input) != 1:
        return None
    t = model.graph.input[0].type.tensor_type
    if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return None
    o = ctx.options
    fallback = [o.batch, 3, *o.img]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    if len(dims) != len(fallback) and any(d is None for d in dims):
        return None
    shape = [d if d is not None else fallback[i] for i, d in enumerate(dims)]
    x = np.random.default_rng(o.seed).random(shape, dtype=np.float32)
    return x.astype(np.float16) if t.elem_type == onnx.TensorProto.FLOAT16 else x


def compare_numerics(before: ModelProto, after: ModelProto, ctx: Context) -> str:
    """``""`` when ``after`` gives ``before``'s outputs on one random input (within
    :data:`RELATIVE_TOLERANCE`), else why not. Skipped (``""``) where there is nothing to run."""
    import numpy as np
    import onnxruntime as ort

    x = _input_for(before, ctx)
    if x is None:
        return ""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    outs = []
    for which, m in (("input", before), ("result", after)):
        try:
            sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
            outs.append(sess.run(None, {m.graph.input[0].name: x}))
        except Exception as exc:  # onnxruntime's own exception types
            if which == "input":
                return ""  # the stage's input does not run either: nothing to compare against
            return f"onnxruntime cannot run the result: {_short(exc)}"
    a, b = outs
    if len(a) != len(b):
        return f"the result has {len(b)} outputs, its input {len(a)}"
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        if u.shape != v.shape:
            return f"output {i} has shape {list(v.shape)}, was {list(u.shape)}"
        if not u.size:
            continue
        u64, v64 = u.astype(np.float64), v.astype(np.float64)
        scale = max(1.0, float(np.nanmax(np.abs(u64))) if np.isfinite(u64).any() else 1.0)
        diff = float(np.nanmax(np.abs(u64 - v64))) if u64.size else 0.0
        if not np.array_equal(np.isnan(u64), np.isnan(v64)) or diff > RELATIVE_TOLERANCE * scale:
            return f"output {i} moved by {diff:.3g} (tolerance {RELATIVE_TOLERANCE * scale:.3g})"
    return ""


def verified(ctx: Context, new_graph: ModelProto, stage_name: str, *, numerics: bool = True) -> Verdict:
    """``Verdict(new_graph)`` when ``new_graph`` (the result of stage ``stage_name`` on ``ctx.graph``)
    passes onnx.checker and, with ``numerics``, gives the input graph's outputs on onnxruntime; else
    ``Verdict(ctx.graph, reason)``: the caller keeps its input and records the reason.

    A graph whose weights live in external data is checked for structure only (its numbers were not
    touched by a rewrite that only moves small constants, and running it twice would hold the weights
    twice)."""
    from exporter.stages.external import has_external

    before = ctx.graph
    why = check_structure(new_graph, ctx.external_dir)
    if not why and numerics and not has_external(new_graph) and not has_external(before):
        why = compare_numerics(before, new_graph, ctx)
    if why:
        return Verdict(before, f"{stage_name} fell back to its input graph: {why}")
    return Verdict(new_graph)
