"""The export stages, in order. Adding a stage: one module here and one line in STAGES."""

from __future__ import annotations

from exporter.options import ExportOptions
from exporter.pipeline import Stage
from exporter.stages.checker import checker
from exporter.stages.external import capture_any
from exporter.stages.half import half
from exporter.stages.infer_shapes import infer_shapes
from exporter.stages.metadata import metadata
from exporter.stages.parity import parity
from exporter.stages.prepare import prepare
from exporter.stages.simplify import simplify
from exporter.stages.tidy import tidy

STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare, numerics=lambda o: "Conv+BN folded into the convs: fp32 reassociation, ~1e-7 "
          "relative per layer" if o.fuse_bn else "none (BatchNorm kept)"),
    Stage("capture", capture_any, numerics=lambda o: "BatchNorm normalises with batch statistics: outputs depend on "
          "the whole batch" if o.training else "none (eval mode)"),
    Stage("tidy", tidy, lambda o: o.tidy, numerics=lambda o: "constants folded in fp32 (grids, scalings)"
          + ("; BatchNorm kept" if o.bn_kept else "")),
    Stage("infer_shapes", infer_shapes, lambda o: o.infer_shapes, numerics=lambda o: "none (annotations only)"),
    Stage("simplify", simplify, lambda o: o.simplify, numerics=lambda o: "onnxsim constant folding"
          + ("; BatchNorm folding skipped" if o.bn_kept else "") + "; checked by parity before and after",
          compare_before=True),
    Stage("half", half, lambda o: o.half, numerics=lambda o: "float16 weights and activations (~1e-3 relative "
          "per op); judged against PyTorch's float16 noise; checked by parity before and after", compare_before=True),
    Stage("metadata", metadata),
    Stage("checker", checker),
    Stage("parity", parity, lambda o: o.check, numerics=lambda o: "none (measures)"),
)


def enabled_stages(options: ExportOptions) -> list[Stage]:
    return [s for s in STAGES if s.when(options)]
