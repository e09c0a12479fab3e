"""Export options: one frozen dataclass with real defaults, named variants, YAML config loading.

This is the one options model. Each field declares, beside its default, how it is written on the
command line (:func:`option`: flag names, help, group of ``--help``, lower bound, parser); the click
options of ``yexport export`` and ``yexport check`` are generated from it (``exporter.cli._options``),
so a new option is one field. :class:`ParityOptions` holds the parity options shared by ``export``,
``check`` and :func:`exporter.check_parity`; :class:`ExportOptions` extends it with the graph options.
The file is a little over 400 lines on purpose: every option's declaration, help text included, sits
here so that nothing else is edited for a new one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from exporter.errors import ConfigError

Exporter = Literal["auto", "torchscript", "dynamo"]
Dynamic = Literal["batch", "all"]
Head = Literal["decode", "raw"]
HalfIO = Literal["float16", "float32"]
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
MAX_IMG = 8192  # the largest --img side: beyond it one input tensor alone is gigabytes


@dataclass(frozen=True)
class Flag:
    """How one option field is written on the command line. The field's default is the flag's default;
    the click type follows from the field's type (bool: a switch, or a pair with ``/``; a Literal: its
    choices; int/float: a number, at least ``minimum``; tuple[str, ...]: a comma-separated list)
    unless ``parse`` is given."""

    decls: tuple[str, ...]  # "--keep-bn/--fuse-bn", or "--img", "--imgsz"
    help: str
    group: str = "Graph"  # the section of --help
    metavar: str | None = None
    minimum: float | None = None  # refused below it on the command line
    flag_value: str | None = None  # the value of the bare flag (--dynamic means 'all')
    switch: tuple[Any, Any] | None = None  # a --on/--off pair for a non-bool field: (value on, value off)
    parse: Callable[[str], Any] | None = None  # one typed value -> the field's value; ValueError is refused
    text: Callable[[Any], str] | None = None  # the field's value as typed (the default shown in --help)
    multiple: bool = False  # repeatable; the values reach ``collect`` as a tuple
    collect: Callable[[Any], dict[str, Any]] | None = None  # the flag's value -> field values (default: this field)
    folder: bool = False  # a path to a folder
    dest: str | None = None  # the click parameter (and YEXPORT_* variable) name when it is not the field's


def _field(default: Any, meta: dict[str, Any]) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def option(default: Any, *decls: str, help: str, graph: bool = False, **how: Any) -> Any:
    """A dataclass field whose command-line flag is declared with it (see :class:`Flag`). ``graph``: the
    option shapes the graph, so it is part of the file's graph identity (:func:`graph_fields`)."""
    return _field(default, {"cli": Flag(decls, help, **how), "graph": graph})


def set_by(default: Any, flag: str | None, *, graph: bool = False) -> Any:
    """A field with no flag of its own: filled from ``flag``, an option the command shares with other
    commands (--seed, --input-shape), or None for a library-only field."""
    return _field(default, {"cli": flag, "graph": graph})


def graph_fields(cls: type) -> frozenset[str]:
    """The fields of the options dataclass ``cls`` declared ``graph=True``: those that shape the graph."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("graph"))


def flag_of(f: dataclasses.Field[Any]) -> Flag | None:
    cli = f.metadata.get("cli")
    return cli if isinstance(cli, Flag) else None


def parse_names(value: str) -> tuple[str, ...]:
    """'cpu,cuda' -> ('cpu', 'cuda'); an empty value is (), a list of nothing (',') is refused."""
    items = tuple(v.strip() for v in str(value or "").split(",") if v.strip())
    if not items and value and str(value).strip():
        raise ValueError(f"{value!r} is an empty list: give comma-separated names, e.g. cpu,cuda")
    return items


def parse_img(value: Any) -> tuple[int, int]:
    """``640`` (square) or ``640,480`` / ``640x480`` (height, width)."""
    if isinstance(value, tuple):
        return value
    parts = str(value).lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise ValueError(f"{value!r} is not a size: give H or H,W (e.g. 640 or 640,480)") from None
    if len(sizes) not in (1, 2) or min(sizes) < 32:
        raise ValueError(f"{value!r}: give one or two sizes of at least 32 (H or H,W)")
    if max(sizes) > MAX_IMG:
        raise ValueError(f"{value!r}: sizes are at most {MAX_IMG}")
    return (sizes[0], sizes[-1])


def img_text(img: tuple[int, int]) -> str:
    return str(img[0]) if img[0] == img[1] else f"{img[0]},{img[1]}"


def parse_tolerance(value: str) -> tuple[str, float]:
    """``1e-3`` (all outputs: name '') or ``output0=1e-4`` (one output)."""
    name, _, num = str(value).rpartition("=")
    try:
        x = float(num)
    except ValueError:
        raise ValueError(f"{value!r}: give a number or OUTPUT=NUMBER") from None
    if not math.isfinite(x):
        raise ValueError(f"{value!r}: a tolerance must be a finite number")
    if x < 0:
        raise ValueError(f"{value!r}: tolerances cannot be negative")
    return name, x


def _tolerances(values: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    """Repeated --atol: the last bare number for every output, OUTPUT=NUMBER per output."""
    return {"atol": next((x for name, x in reversed(values) if not name), None),
            "output_atol": {name: x for name, x in values if name}}



@cache
def torchscript_available() -> bool:
    """Whether this torch still has the TorchScript exporter (dynamo is the only one where it is gone)."""
    import torch.onnx

    return hasattr(torch.onnx, "TrainingMode") and hasattr(torch.onnx, "export")


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
class ParityOptions:
    """How a file is checked against its PyTorch model: the options ``export`` and ``check`` share,
    and :func:`exporter.check_parity`'s keywords (:meth:`as_kwargs`)."""

    providers: tuple[str, ...] = option(
        ("cpu",), "--providers", group="Parity", metavar="TEXT",
        help="onnxruntime providers to check, comma-separated: cpu, cuda, tensorrt.")
    require: tuple[str, ...] = option(
        (), "--require", group="Parity", metavar="TEXT",
        help="Providers that must really run (e.g. cuda): not running is then a failure instead of a note.")
    # None: the noise-floor rule against a float64 forward (exporter.parity.compare); a number makes the
    # explicit element-wise tolerance the rule
    atol: float | None = option(
        None, "--atol", group="Parity", multiple=True, metavar="A|OUT=A", parse=parse_tolerance,
        collect=_tolerances,
        help="Replace the default rule by an explicit tolerance |onnx - torch| <= atol + rtol * |torch| "
             "(rtol default 1e-3), for all outputs or per output: --atol output0=1e-4. Repeatable. "
             "Default: no fixed tolerance; the error against a float64 forward must stay within a "
             "few times PyTorch fp32's own.")
    rtol: float | None = option(
        None, "--rtol", group="Parity", minimum=0,
        help="Relative tolerance of the explicit rule (atol default 1e-3 then).")
    output_atol: dict[str, float] = set_by({}, "--atol")
    inputs: int | None = option(  # None: 2 inputs (1 per shape for dynamic files), or every image of --images
        None, "--inputs", group="Parity", minimum=1,
        help="Inputs per checked shape (default 2, or 1 per shape for dynamic files, or every image of "
             "--images). Never the capture example.")
    images: str | None = option(
        None, "--images", group="Parity", folder=True,
        help="Check on your own JPEG/PNG images (letterboxed) instead of synthetic ones.")
    strict: bool = option(  # a degenerate comparison (an output constant on every input) fails the check
        False, "--strict", group="Parity",
        help="Fail when a comparison is degenerate: an output that is constant (e.g. all zeros) or empty on "
             "every input says nothing about the graph.")
    detections: bool = option(  # report detections after NMS beside the verdict
        True, "--detections/--no-detections", group="Parity",
        help="Report detections after NMS (conf 0.25, IoU 0.45) against float64's, beside PyTorch fp32's "
             "own agreement (information, not the verdict).")

    def as_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`exporter.check_parity` these options set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ParityOptions)}

    def validate(self) -> ParityOptions:
        """Refuse unknown providers, no inputs and tolerances that are not finite numbers >= 0; returns self."""
        if self.inputs is not None and self.inputs < 1:
            raise ConfigError(f"inputs={self.inputs}: parity needs at least one input")
        for name, tol in (("atol", self.atol), ("rtol", self.rtol), *self.output_atol.items()):
            if tol is not None and not (0 <= tol < float("inf")):
                raise ConfigError(f"{name} {tol}: a tolerance is a finite number >= 0")
        unknown = [p for p in (*self.providers, *self.require) if p not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(f"unknown provider {unknown[0]!r} (choose from {', '.join(PROVIDER_NAMES)})")
        return self


@dataclass(frozen=True)
class ExportOptions(ParityOptions):
    """How one ONNX file is made. Each field is a stage switch or a setting of one."""

    keep_bn: bool | None = option(  # None: fuse, except in training mode (which needs BN)
        None, "--keep-bn/--fuse-bn", graph=True,
        help="Keep every BatchNorm as BatchNormalization(training_mode=0), through the exporter and --simplify; "
             "or fold it into the convs (default: fuse).")
    training: bool = option(
        False, "--training-mode", graph=True,
        help="Export with TrainingMode.TRAINING: BatchNorm uses batch statistics (not an inference graph); "
             "parity is checked against a train-mode forward on a copy.")
    int_shapes: bool | None = option(  # None: on wherever it is correct (static, dynamic batch), off for dynamic all
        None, "--int-shapes/--no-int-shapes", graph=True,
        help="Read feature-map sizes as Python ints: no Shape/Gather chains, sizes baked in. Default: on where "
             "exact (static, --dynamic batch), off with --dynamic all (where --int-shapes is refused); "
             "--no-int-shapes keeps the traced shape arithmetic.")
    tidy: bool = option(
        True, "--tidy/--no-tidy", graph=True,
        help="Constant folding and clean-up of the captured graph (BatchNorm kept with --keep-bn).")
    infer_shapes: bool = option(
        True, "--infer-shapes/--no-infer-shapes", graph=True, help="ONNX shape inference: a size on every edge.")
    simplify: bool = option(
        False, "--simplify", graph=True, help="Run onnxsim (honours --keep-bn); parity is checked before and after.")
    dynamic: Dynamic | None = option(
        None, "--dynamic", flag_value="all", graph=True,
        help="Dynamic axes: bare --dynamic (or --dynamic all) for batch, height and width, as YOLOv5 has it; "
             "--dynamic batch for the batch only.")
    img: tuple[int, int] = option(
        (640, 640), "--img", "--imgsz", metavar="H[,W]", parse=parse_img, text=img_text, graph=True,
        help="Input size H or H,W (multiples of 32).")
    batch: int = option(1, "--batch", minimum=1, graph=True, help="Batch size of the example.")
    opset: int = option(18, "--opset", graph=True, help="ONNX opset; the file gets exactly this one.")
    exporter: Exporter = option(
        "auto", "--exporter", graph=True,
        help="torch exporter; auto: TorchScript where this torch has it (the same graph as dynamo after tidy, "
             "captured ~10x faster, honours training mode), else dynamo.")
    half: bool = option(  # float16 weights and compute (the half stage)
        False, "--half", graph=True,
        help="float16 weights and compute (works with --dynamic, --keep-bn, --simplify, both exporters, on CPU "
             "too); checked against PyTorch's own float16 noise.")
    half_io: HalfIO = option(  # with half: the file's inputs and outputs; float32 adds Casts at the edges
        "float16", "--half-io", graph=True,
        help="With --half: the type of the file's inputs and outputs (float32 adds Casts at the edges).")
    head: Head = option(
        "decode", "--raw-head/--decode", switch=("raw", "decode"), dest="raw_head", graph=True,
        help="Detect output: the raw per-level maps, or the decoded (bs, N, nc+5) tensor (default). For a "
             "detector with post-processing (torchvision's SSD, RetinaNet, FCOS, Faster R-CNN): the network up "
             "to it, its head's raw outputs.")
    device: str = option("cpu", "--device", help="cpu, cuda or cuda:N for capture and reference.")
    check: bool = option(True, "--check/--no-check", group="Parity", help="Check parity against PyTorch.")
    seed: int = set_by(0, "--seed")  # synthetic weights and parity inputs
    # the example inputs of a model that is not a YOLO image model (--input-shape); () means one image
    # batch (batch, 3, *img)
    input_shapes: tuple[InputSpec, ...] = set_by((), "--input-shape", graph=True)

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
        if self.batch < 1:
            raise ConfigError("--batch must be at least 1")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset {self.opset}: choose an opset between 7 and 23")
        ParityOptions.validate(self)
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
