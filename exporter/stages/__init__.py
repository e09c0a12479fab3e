"""The export stages, in order. Each stage module declares its own ``STAGE`` (name, function, when it
runs, numerics, requires/ensures) beside its function; adding a stage is its module and one line here."""

from __future__ import annotations

from exporter.options import ExportOptions
from exporter.pipeline import Stage
from exporter.stages import checker, external, half, infer_shapes, metadata, parity, prepare, simplify, tidy

STAGES: tuple[Stage, ...] = (
    prepare.STAGE,
    external.STAGE,  # capture
    tidy.STAGE,
    infer_shapes.STAGE,
    simplify.STAGE,
    half.STAGE,
    metadata.STAGE,
    checker.STAGE,
    parity.STAGE,
)


def enabled_stages(options: ExportOptions) -> list[Stage]:
    return [s for s in STAGES if s.when(options)]
