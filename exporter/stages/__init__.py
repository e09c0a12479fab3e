"""The export stages, in order. Adding a stage: one module here and one line in STAGES."""

from __future__ import annotations

from exporter.options import ExportOptions
from exporter.pipeline import Stage
from exporter.stages.capture import capture
from exporter.stages.checker import checker
from exporter.stages.infer_shapes import infer_shapes
from exporter.stages.metadata import metadata
from exporter.stages.parity import parity
from exporter.stages.prepare import prepare
from exporter.stages.simplify import simplify
from exporter.stages.tidy import tidy

STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare, numerics="Conv+BN fusion reorders fp32 arithmetic (~1e-7 relative per layer); "
          "none with --keep-bn"),
    Stage("capture", capture, numerics="none in eval mode; --training-mode normalises with batch statistics"),
    Stage("tidy", tidy, lambda o: o.tidy, numerics="constant folding in fp32 (grids, scalings); BatchNorm kept "
          "with --keep-bn"),
    Stage("infer_shapes", infer_shapes, lambda o: o.infer_shapes, numerics="none (annotations only)"),
    Stage("simplify", simplify, lambda o: o.simplify, numerics="onnxsim constant folding; BatchNorm folding "
          "skipped with --keep-bn; checked by parity before and after"),
    Stage("metadata", metadata, numerics="none"),
    Stage("checker", checker, numerics="none"),
    Stage("parity", parity, lambda o: o.check, numerics="none (measures)"),
)


def enabled_stages(options: ExportOptions) -> list[Stage]:
    return [s for s in STAGES if s.when(options)]
