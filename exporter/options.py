"""Export options: one frozen dataclass with real defaults, named variants, YAML config loading."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exporter.errors import ConfigError

Exporter = Literal["auto", "torchscript", "dynamo"]
Dynamic = Literal["batch", "all"]
Head = Literal["decode", "raw"]
HalfIO = Literal["float16", "float32"]


@dataclass(frozen=True)
class ExportOptions:
    """How one ONNX file is made. Each field is a stage switch or a setting of one."""

    keep_bn: bool | None = None  # None: fuse, except in training mode (which needs BN)
    training: bool = False
    int_shapes: bool | None = None  # None: on wherever it is correct (static, dynamic batch), off for dynamic all
    tidy: bool = True
    infer_shapes: bool = True
    simplify: bool = False
    dynamic: Dynamic | None = None
    img: tuple[int, int] = (640, 640)
    batch: int = 1
    opset: int = 18
    exporter: Exporter = "auto"
    head: Head = "decode"
    half: bool = False  # float16 weights and compute (the half stage)
    half_io: HalfIO = "float16"  # with half: the file's inputs and outputs; float32 adds Casts at the edges
    device: str = "cpu"
    check: bool = True
    providers: tuple[str, ...] = ("cpu",)
    require: tuple[str, ...] = ()
    # None: the noise-floor rule against a float64 forward (exporter.parity.compare); a number makes the
    # explicit element-wise tolerance the rule
    atol: float | None = None
    rtol: float | None = None
    output_atol: dict[str, float] = field(default_factory=dict)
    inputs: int | None = None  # None: 2 inputs (1 per shape for dynamic files), or every image of --images
    images: str | None = None
    seed: int = 0
    detections: bool = True  # report detections after NMS beside the verdict
    strict: bool = False  # a degenerate comparison (an output constant on every input) fails the check

    @property
    def fuse_bn(self) -> bool:
        return not self.bn_kept

    @property
    def bn_kept(self) -> bool:
        return self.training if self.keep_bn is None else self.keep_bn

    @property
    def use_int_shapes(self) -> bool:
        """Read feature-map sizes as ints: exact whenever height and width are fixed in the file."""
        return self.dynamic != "all" if self.int_shapes is None else self.int_shapes

    @property
    def capture_exporter(self) -> Literal["torchscript", "dynamo"]:
        """The exporter that runs. 'auto' is TorchScript: on torch 2.13 both give the same clean graph
        after our tidy stage (230 nodes for yolov5s), TorchScript about ten times faster, and it alone
        honours training mode; dynamo where TorchScript is gone."""
        if self.exporter != "auto":
            return self.exporter
        from exporter.stages.capture import torchscript_available

        return "torchscript" if torchscript_available() else "dynamo"

    def replace(self, **changes: Any) -> ExportOptions:
        return dataclasses.replace(self, **changes)

    def validate(self) -> ExportOptions:
        """Refuse combinations that cannot give an honest file; returns self."""
        if self.training and self.keep_bn is False:
            raise ConfigError("--training-mode exports BatchNorm with batch statistics: it cannot be combined "
                              "with --fuse-bn (drop --fuse-bn)")
        if self.training and self.exporter == "dynamo":
            raise ConfigError("--training-mode needs the TorchScript exporter: the dynamo exporter ignores "
                              "training mode and would silently write an eval graph (use --exporter torchscript)")
        if self.half and self.training:
            raise ConfigError("--half with --training-mode: batch statistics in float16 are not an inference graph "
                              "anyone deploys; drop one of them")
        if self.half_io != "float16" and not self.half:
            raise ConfigError("--half-io only applies with --half (add --half, or drop --half-io)")
        if self.int_shapes and self.dynamic == "all":
            raise ConfigError("--int-shapes bakes the traced height and width into the graph, so a --dynamic all "
                              "file would be wrong at any other size; use --dynamic batch with --int-shapes, "
                              "or drop --int-shapes")
        if self.img[0] % 32 or self.img[1] % 32:
            raise ConfigError(f"--img {self.img[0]},{self.img[1]}: sizes must be multiples of 32 (the largest stride)")
        if self.inputs is not None and self.inputs < 1:
            raise ConfigError(f"inputs={self.inputs}: parity needs at least one input")
        for name, tol in (("atol", self.atol), ("rtol", self.rtol), *self.output_atol.items()):
            if tol is not None and not (0 <= tol < float("inf")):
                raise ConfigError(f"{name} {tol}: a tolerance is a finite number >= 0")
        if self.batch < 1:
            raise ConfigError("--batch must be at least 1")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset {self.opset}: choose an opset between 7 and 23")
        unknown = [p for p in (*self.providers, *self.require) if p not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(f"unknown provider {unknown[0]!r} (choose from {', '.join(PROVIDER_NAMES)})")
        return self

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["keep_bn"] = self.bn_kept
        d["int_shapes"] = self.use_int_shapes
        d["exporter"] = self.capture_exporter
        d["img"] = list(self.img)
        d["providers"] = list(self.providers)
        d["require"] = list(self.require)
        return d


PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}

# variant name -> option changes; names combine with '+', e.g. keep-bn+simplify
VARIANTS: dict[str, dict[str, Any]] = {
    "fused": {"keep_bn": False},
    "keep-bn": {"keep_bn": True},
    "training": {"training": True},
    "int-shapes": {"int_shapes": True},  # the default wherever it is allowed; refused with dynamic-all
    "no-int-shapes": {"int_shapes": False},
    "simplify": {"simplify": True},
    "dynamic": {"dynamic": "batch"},
    "dynamic-all": {"dynamic": "all"},
    "raw": {"head": "raw"},
    "torchscript": {"exporter": "torchscript"},
    "dynamo": {"exporter": "dynamo"},
    "half": {"half": True},
}


def variant_options(base: ExportOptions, name: str) -> ExportOptions:
    """``base`` changed as the variant ``name`` (e.g. 'keep-bn+simplify') says."""
    opts = base
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ConfigError(f"unknown variant {part!r} (choose from {', '.join(VARIANTS)}; combine with '+')")
        opts = opts.replace(**VARIANTS[part])
    return opts


def load_config(path: str | Path, known: set[str]) -> dict[str, Any]:
    """Read option defaults from a YAML file; keys are option names (``keep-bn`` or ``keep_bn``).
    Unknown keys are an error: a typo is never silently ignored."""
    from exporter.io import load_yaml  # bounded: size, nesting, alias expansion; regular files only

    p = Path(path)
    data = load_yaml(p, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of option names to values")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    bad = sorted(k for k in out if k not in known)
    if bad:
        raise ConfigError(f"{p}: unknown option(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return out
