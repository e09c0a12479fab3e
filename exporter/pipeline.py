"""The export pipeline: an ordered tuple of small stages over one context.

``run_pipeline`` is the one place that decides whether a stage runs, times it, records what it
changed, and wraps its errors with the names of the stages that ran before it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter import progress
from exporter.errors import StageError, YexportError
from exporter.options import ExportOptions

if TYPE_CHECKING:
    import torch
    from onnx import ModelProto

    from exporter.models import LoadedModel
    from exporter.parity import ParityReport


@dataclass(frozen=True)
class Context:
    """What flows through the stages. Stages return a new context (``ctx.replace(...)``)."""

    options: ExportOptions
    source: LoadedModel  # the caller's model, never modified
    model: torch.nn.Module | None = None  # the prepared private copy that is captured (prepare)
    example: torch.Tensor | tuple[torch.Tensor, ...] | None = None  # example input(s) (prepare)
    bn_expected: int | None = None  # BatchNormalization nodes the graph must have (prepare; checker) ...
    bn_may_fold: int = 0  # ... of which the exporter may still fold this many (prepare could not see their input)
    onnx: ModelProto | None = None  # the graph (capture and later)
    # the graph as it was before each stage that changed it and asked for parity before and after
    # (Stage.compare_before: simplify, half), and parity's report of each
    before: dict[str, ModelProto] = field(default_factory=dict)
    parity: ParityReport | None = None  # of the final graph
    parity_before: dict[str, ParityReport] = field(default_factory=dict)
    change: str = ""  # what the current stage did (moved into its record by the pipeline)
    failure: str = ""  # a stage that failed without stopping the export (e.g. simplify) says why
    records: tuple[StageRecord, ...] = ()
    notes: tuple[str, ...] = ()  # honest statements about numerics, for the report
    tracer_warnings: tuple[str, ...] = ()  # TracerWarnings of the capture (file:line: message)
    capture_attempts: tuple[dict[str, Any], ...] = ()  # capture strategies tried: exporter, ok, error (capture)
    output: Path | None = None  # the file being made, when known (the capture log goes beside it)
    external_dir: Path | None = None  # working folder of the weights when they are external data (capture)

    def replace(self, **changes: Any) -> Context:
        return dataclasses.replace(self, **changes)

    @property
    def graph(self) -> ModelProto:
        """``onnx`` for the stages after capture; a stage placed before it fails saying so."""
        if self.onnx is None:
            raise RuntimeError("no ONNX graph yet: this stage must run after capture")
        return self.onnx

    @property
    def prepared(self) -> torch.nn.Module:
        """``model`` for the stages after prepare; a stage placed before it fails saying so."""
        if self.model is None:
            raise RuntimeError("no prepared model yet: this stage must run after prepare")
        return self.model

    def note(self, text: str) -> Context:
        return self.replace(notes=(*self.notes, text))


@dataclass(frozen=True)
class StageRecord:
    name: str
    ok: bool
    seconds: float
    nodes_before: int | None
    nodes_after: int | None
    changed: str
    numerics: str
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage:
    """A named step. ``run`` takes and returns a :class:`Context`; ``when`` decides from the options
    whether it runs; ``numerics`` says what it does to the numbers with those options (for the manifest).
    A stage that changes the numbers on purpose sets ``compare_before``: when it changes the graph, the
    graph before it is kept (``Context.before``) and parity measures both (``parity_before_NAME``)."""

    name: str
    run: Callable[[Context], Context]
    when: Callable[[ExportOptions], bool] = field(default=lambda o: True)
    numerics: Callable[[ExportOptions], str] = field(default=lambda o: "none")
    compare_before: bool = False


def op_counts(model: ModelProto | None) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node) if model is not None else Counter()


def run_pipeline(ctx: Context, stages: Sequence[Stage]) -> Context:
    """Run the enabled ``stages`` in order; returns the final context with one record per stage."""
    done: list[str] = []
    with progress.task(getattr(ctx.source, "name", "export"), kind="pipeline"):
        for stage in stages:
            if not stage.when(ctx.options):
                continue
            before = len(ctx.onnx.graph.node) if ctx.onnx is not None else None
            progress.emit("start", "stage", stage.name)
            t0 = time.perf_counter()
            try:
                new = stage.run(ctx)
            except StageError:
                progress.emit("end", "stage", stage.name, seconds=time.perf_counter() - t0, ok=False)
                raise
            except (YexportError, Exception) as exc:
                progress.emit("end", "stage", stage.name, seconds=time.perf_counter() - t0, ok=False, detail=str(exc))
                raise StageError(stage.name, done, exc) from exc
            seconds = time.perf_counter() - t0
            if stage.compare_before and ctx.onnx is not None and new.onnx is not ctx.onnx:
                new = new.replace(before={**new.before, stage.name: ctx.onnx})
            after = len(new.onnx.graph.node) if new.onnx is not None else None
            progress.emit("end", "stage", stage.name, seconds=seconds, ok=not new.failure,
                          detail=new.failure or new.change)
            record = StageRecord(stage.name, not new.failure, round(seconds, 4), before, after,
                                 new.change, stage.numerics(ctx.options), new.failure)
            ctx = new.replace(records=(*ctx.records, record), change="", failure="")
            done.append(stage.name)
    return ctx
