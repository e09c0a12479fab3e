"""``exporter.export``: the library form of ``yexport export``."""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.io import PairWriter
from exporter.options import ExportOptions, variant_options
from exporter.pipeline import Context, StageRecord, op_counts, run_pipeline


@dataclass
class ExportResult:
    """One written file (or one that failed parity), its manifest and its report."""

    variant: str
    path: Path
    manifest_path: Path | None
    options: ExportOptions
    records: tuple[StageRecord, ...]
    parity: Any  # ParityReport | None
    parity_before: dict[str, Any]  # stage name -> ParityReport of the graph before it (simplify, half)
    nodes: int
    ops: dict[str, int]
    size: int
    seconds: float
    notes: tuple[str, ...] = ()
    tracer_warnings: tuple[str, ...] = ()
    failures: list[str] = field(default_factory=list)

    @property
    def parity_unsimplified(self) -> Any:
        return self.parity_before.get("simplify")

    @property
    def ok(self) -> bool:
        return not self.failures and (self.parity is None or bool(self.parity))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"yexport": __version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim", "onnxscript"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def export_one(source: Any, options: ExportOptions, path: str | Path, variant: str = "") -> ExportResult:
    """Run the pipeline for one options set and write ``path`` (and its manifest) atomically.

    A file that fails parity is written beside the target as ``NAME.parity-failed.onnx`` so it can
    be inspected, and an existing good file at ``path`` is left as it was.
    """
    from exporter.stages import STAGES, external

    options.validate()
    path = Path(path)
    t0 = time.perf_counter()
    ctx = run_pipeline(Context(options=options, source=source, output=path), STAGES)
    try:
        return _write(ctx, source, options, path, variant, t0)
    finally:
        external.discard(ctx.external_dir)


def _write(ctx: Context, source: Any, options: ExportOptions, path: Path, variant: str, t0: float) -> ExportResult:
    """Commit the graph of ``ctx`` (and its weights, as external data when they are big) with its manifest."""
    from exporter.stages import STAGES, external

    failures = [f"{r.name}: {r.error}" for r in ctx.records if not r.ok]
    passed = ctx.parity is None or bool(ctx.parity)
    target = path if passed else path.with_name(path.stem + ".parity-failed.onnx")
    t_write = time.perf_counter()
    pair = PairWriter(target)  # the .onnx, its data file and its manifest are committed together, below
    model = ctx.graph
    if ctx.external_dir is not None or external.inline_bytes(model) >= external.external_threshold():
        pair.stage_data(lambda f: external.write_external(model, ctx.external_dir, f, pair.data_path.name))
    data = model.SerializeToString()
    pair.stage(data)
    written = f"{target.name} ({len(data):,} bytes)"
    if pair.data_sha256 is not None:
        written += f" + {pair.data_path.name} ({pair.data_size:,} bytes)"
    write_rec = StageRecord("write", True, round(time.perf_counter() - t_write, 4), None, None, written, "none")
    records = (*ctx.records, write_rec)
    ops = dict(sorted(op_counts(ctx.onnx).items()))
    seconds = time.perf_counter() - t0
    result = ExportResult(variant or "export", target, None, options, records, ctx.parity, ctx.parity_before,
                          len(model.graph.node), ops, len(data) + pair.data_size, seconds, ctx.notes,
                          ctx.tracer_warnings, failures)
    manifest = {
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "variant": result.variant,
        "model": source.describe(),
        "options": options.describe(),
        "opset": options.opset,
        "stages": [r.as_dict() for r in records],
        "nodes": result.nodes,
        "ops": ops,
        "notes": list(ctx.notes),
        "tracer_warnings": list(ctx.tracer_warnings),
        "capture_attempts": list(ctx.capture_attempts),
        "failures": failures,
        "parity": ctx.parity.to_dict() if ctx.parity is not None else None,
        # parity_before_simplify, parity_before_half: null when the stage did not run or changed nothing
        **{f"parity_before_{s.name}": ctx.parity_before[s.name].to_dict() if s.name in ctx.parity_before else None
           for s in STAGES if s.compare_before},
        "versions": versions(),
        "seconds": round(seconds, 3),
    }
    _, result.manifest_path = pair.commit(manifest)
    return result


def export(
    model: Any = "yolov5s",
    *,
    variants: list[str] | None = None,
    out_dir: str | Path = "exports",
    name: str | None = None,
    options: ExportOptions | None = None,
    **option_changes: Any,
) -> list[ExportResult]:
    """Export ``model`` (a built-in name, YAML, checkpoint, ``LoadedModel`` or ``nn.Module``) to ONNX.

    ``options`` (or keyword changes to the defaults, e.g. ``keep_bn=True``) describe one file;
    ``variants`` (e.g. ``['fused', 'keep-bn']``) make one file per variant, named ``NAME-VARIANT.onnx``.
    Returns one :class:`ExportResult` per file; the caller's model is never modified.
    """
    from exporter.models import LoadedModel, load_model

    opts = options or ExportOptions()
    if option_changes:
        opts = opts.replace(**option_changes)
    if isinstance(model, LoadedModel):
        source = model
    elif hasattr(model, "forward") and hasattr(model, "parameters"):
        source = LoadedModel(model, type(model).__name__.lower(), "nn.Module", "module", "", "caller's module")
    else:
        source = load_model(model, seed=opts.seed)
    stem = name or source.name
    out = Path(out_dir)
    if not variants:
        return [export_one(source, opts, out / f"{stem}.onnx")]
    return [export_one(source, variant_options(opts, v), out / f"{stem}-{v}.onnx", v) for v in variants]
