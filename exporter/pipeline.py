"""The export pipeline: an ordered tuple of small stages over one context.

``run_pipeline`` is the one place that decides whether a stage runs, checks what it requires, times
it, records what it changed and what it ensured, and wraps its errors with the names of the stages
that ran before it.

The contract of a stage is a pair of :class:`Condition` tuples: ``requires`` (checked on the context
before the stage runs: a stage list in the wrong order fails naming the stage and the condition) and
``ensures`` (promises about the file from that stage on). A stage may also promise at run time what
only it can know (prepare: how many BatchNormalization the graph keeps) with :meth:`Context.promise`.
Every promise is recorded in its stage's record and checked, all together, by the ``checker`` stage.
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
    onnx: ModelProto | None = None  # the graph (capture and later)
    # the graph as it was before each stage that changed it and asked for parity before and after
    # (Stage.compare_before: simplify, half), and parity's report of each
    before: dict[str, ModelProto] = field(default_factory=dict)
    parity: ParityReport | None = None  # of the final graph
    parity_before: dict[str, ParityReport] = field(default_factory=dict)
    change: str = ""  # what the current stage did (moved into its record by the pipeline)
    failure: str = ""  # a stage that failed without stopping the export (e.g. simplify) says why
    records: tuple[StageRecord, ...] = ()
    plan: tuple[str, ...] = ()  # the names of the stages this pipeline runs, in order (set by run_pipeline)
    promised: tuple[Condition, ...] = ()  # what the current stage promised at run time (moved into promises)
    promises: tuple[tuple[str, Condition], ...] = ()  # (stage, condition) of every promise made so far
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

    def promise(self, condition: Condition) -> Context:
        """The current stage promises ``condition`` from now on (the checker holds the file to it)."""
        return self.replace(promised=(*self.promised, condition))


@dataclass(frozen=True)
class Verdict:
    """Whether a :class:`Condition` holds; ``text`` says why not, or what was found when worth saying
    (``'1 BatchNormalization'``); ``note`` is a statement for the report's notes."""

    held: bool
    text: str = ""
    note: str = ""

    def __bool__(self) -> bool:
        return self.held


@dataclass(frozen=True)
class Condition:
    """A named fact about the context, e.g. 'an ONNX graph'. ``check`` returns a :class:`Verdict` (or a
    plain bool for a fact with nothing more to say)."""

    name: str
    check: Callable[[Context], Verdict | bool]

    def verdict(self, ctx: Context) -> Verdict:
        v = self.check(ctx)
        return v if isinstance(v, Verdict) else Verdict(bool(v))


# the conditions that stages require of each other; a promise only its stage makes sits with its code
# (capture's opset, infer_shapes' types, prepare's BatchNorm count)
PREPARED = Condition("a prepared model and example", lambda ctx: ctx.model is not None and ctx.example is not None)
GRAPH = Condition("an ONNX graph", lambda ctx: ctx.onnx is not None)


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
    ensures: tuple[str, ...] = ()  # the names of the conditions the stage promised

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage:
    """A named step, declared beside its function (``STAGE`` in its module). ``run`` takes and returns a
    :class:`Context`; ``when`` decides from the options whether it runs; ``numerics`` says what it does
    to the numbers with those options (for the manifest). ``requires`` must hold before it runs;
    ``ensures`` is what it promises from then on (checked by the checker). A stage that changes the
    numbers on purpose sets ``compare_before``: when it changes the graph, the graph before it is kept
    (``Context.before``) and parity measures both (``parity_before_NAME``)."""

    name: str
    run: Callable[[Context], Context]
    when: Callable[[ExportOptions], bool] = field(default=lambda o: True)
    numerics: Callable[[ExportOptions], str] = field(default=lambda o: "none")
    compare_before: bool = False
    requires: tuple[Condition, ...] = ()
    ensures: tuple[Condition, ...] = ()


class StageOrderError(YexportError):
    """A stage whose requirement no stage before it met: a stage list in the wrong order (a bug)."""

    exit_code = 1


def _unmet(at: int, ctx: Context, stages: Sequence[Stage]) -> StageOrderError | None:
    """Why ``stages[at]`` cannot run on ``ctx``: the first condition it requires that does not hold."""
    for cond in stages[at].requires:
        if cond.verdict(ctx):
            continue
        later = [s.name for s in stages[at + 1:] if cond in s.ensures]
        earlier = [s.name for s in stages[:at] if cond in s.ensures]
        who = (f"{', '.join(later)} ensures it but runs after it" if later else
               f"{', '.join(earlier)} ensures it but did not give it" if earlier else
               "no stage in the list ensures it")
        return StageOrderError(f"requires {cond.name}, which the stages before it did not give ({who}): "
                               "the stage order is wrong")
    return None


def op_counts(model: ModelProto | None) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node) if model is not None else Counter()


def run_pipeline(ctx: Context, stages: Sequence[Stage]) -> Context:
    """Run the enabled ``stages`` in order; returns the final context with one record per stage."""
    done: list[str] = []
    enabled = [(at, s) for at, s in enumerate(stages) if s.when(ctx.options)]
    ctx = ctx.replace(plan=tuple(s.name for _, s in enabled))
    with progress.task(getattr(ctx.source, "name", "export"), kind="pipeline"):
        for at, stage in enabled:
            unmet = _unmet(at, ctx, stages)
            if unmet is not None:
                raise StageError(stage.name, done, unmet)
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
            made = (*stage.ensures, *new.promised)
            record = StageRecord(stage.name, not new.failure, round(seconds, 4), before, after,
                                 new.change, stage.numerics(ctx.options), new.failure, tuple(c.name for c in made))
            ctx = new.replace(records=(*ctx.records, record), change="", failure="", promised=(),
                              promises=(*new.promises, *((stage.name, c) for c in made)))
            done.append(stage.name)
    return ctx
