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
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One model input: its example shape, dtype and, for integer inputs, the values' upper bound
    (exclusive; seeded example and parity inputs are drawn from ``[0, high)``)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    high: int = 2

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    @property
    def is_image(self) -> bool:
        """A batch of RGB images (Bx3xHxW float): synthetic images, like the YOLO input."""
        return self.is_float and len(self.shape) == 4 and self.shape[1] == 3

    def dynamic_axes(self, dynamic: str | None) -> tuple[int, ...]:
        """The axes made dynamic: the batch; with 'all' also every axis after the second (channels stay
        fixed) for inputs of rank 3 or more, and every axis of a rank-2 input (e.g. batch and sequence)."""
        if not dynamic or not self.shape:
            return ()
        if dynamic == "batch":
            return (0,)
        rank = len(self.shape)
        return tuple(range(rank)) if rank <= 2 else (0, *range(2, rank))

    def text(self) -> str:
        dims = ",".join(map(str, self.shape))
        return dims if self.dtype == "float32" else f"{dims}:{self.dtype}" + (
            f":{self.high}" if not self.is_float and self.dtype != "bool" else "")

    @classmethod
    def parse(cls, value: str) -> InputSpec:
        """``1,3,224,224`` (float32), ``1,16:int64`` (values in [0, 2)), ``1,16:int64:30522`` (in [0, 30522)),
        ``1x16:bool``."""
        dims, _, rest = str(value).strip().partition(":")
        dtype, _, high = rest.partition(":")
        dtype = dtype.strip().lower() or "float32"
        dtype = {"float": "float32", "half": "float16", "double": "float64", "long": "int64", "int": "int64"}.get(
            dtype, dtype)
        if dtype not in INPUT_DTYPES:
            raise ConfigError(f"--input-shape {value!r}: unknown dtype {dtype!r} (choose from {', '.join(INPUT_DTYPES)})")
        try:
            shape = tuple(int(d) for d in dims.lower().replace("x", ",").split(",") if d.strip())
            bound = int(high) if high.strip() else 2
        except ValueError:
            raise ConfigError(f"--input-shape {value!r}: give sizes as 1,3,224,224 and optionally :DTYPE[:HIGH] "
                              "(e.g. 1,16:int64:1000)") from None
        if not shape or min(shape) < 1 or len(shape) > 8:
            raise ConfigError(f"--input-shape {value!r}: give 1 to 8 positive sizes (e.g. 1,3,224,224)")
        if bound < 1 or (high.strip() and (dtype.startswith("float") or dtype == "bool")):
            raise ConfigError(f"--input-shape {value!r}: an upper bound applies to int64/int32 inputs only and is >= 1")
        n = 1
        for d in shape:
            n *= d
        if n > 1 << 28:
            raise ConfigError(f"--input-shape {value!r}: {n:,} elements is more than one example input may have")
        return cls(shape, dtype, bound)


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
    # the example inputs of a model that is not a YOLO image model (--input-shape); () means one image
    # batch (batch, 3, *img)
    input_shapes: tuple[InputSpec, ...] = ()
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
        """The exporter tried first. 'auto' is TorchScript: on torch 2.13 both give the same clean graph
        after our tidy stage (230 nodes for yolov5s), TorchScript about ten times faster, and it alone
        honours training mode; dynamo where TorchScript is gone. The capture stage falls back to the other
        one when the first fails (:attr:`capture_strategies`)."""
        return self.capture_strategies[0]

    @property
    def capture_strategies(self) -> tuple[Literal["torchscript", "dynamo"], ...]:
        """The exporters capture tries, in order: one when named; with 'auto' the preferred one, then the
        other (never dynamo for training mode, which it would silently export as eval)."""
        if self.exporter != "auto":
            return (self.exporter,)
        from exporter.stages.capture import torchscript_available

        if not torchscript_available():
            return ("dynamo",)
        return ("torchscript",) if self.training else ("torchscript", "dynamo")

    @property
    def example_inputs(self) -> tuple[InputSpec, ...]:
        """The inputs of the example: ``input_shapes``, or one image batch ``(batch, 3, H, W)``."""
        return self.input_shapes or (InputSpec((self.batch, 3, *self.img)),)

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
        if not self.input_shapes and (self.img[0] % 32 or self.img[1] % 32):
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
        if self.input_shapes:
            d["input_shapes"] = [i.text() for i in self.input_shapes]
        else:  # absent, not [], so the graph identity of image models stays what it was
            del d["input_shapes"]
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
