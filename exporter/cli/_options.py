"""Options shared by the commands that take a MODEL (a built-in name, a YAML config or a checkpoint)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

F = Callable[..., Any]
MAX_IMG = 8192  # the largest --img side: beyond it one input tensor alone is gigabytes


def _trust_from_command_line(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--trust-checkpoint runs code from the file: it counts only when typed. A YEXPORT_* variable
    that would turn it on is refused rather than silently ignored."""
    if not value:
        names = sorted(k for k, v in os.environ.items()
                       if k.startswith("YEXPORT_") and k.endswith("TRUST_CHECKPOINT") and v.strip())
        if names:
            from exporter.errors import ConfigError

            raise ConfigError(f"{names[0]} is set, but full unpickling (which runs code from the file) is only "
                              "turned on by typing --trust-checkpoint on the command line; unset the variable")
    return value


FACTORY_HELP = ("MODEL may also be your own code, pkg.module:factory or path/to/file.py:factory (a callable "
                "returning the nn.Module): yexport imports that module, which runs its code, as you ask by "
                "naming it; nothing else ever executes code (checkpoints are never unpickled without "
                "--trust-checkpoint).")


def _stash(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option's value in the context (read by :func:`load_from_cli` / :func:`input_shapes_from_cli`),
    so commands need no parameter for it."""
    ctx.meta[f"yexport.{param.name}"] = value
    return value


def _meta(name: str, default: Any = None) -> Any:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(f"yexport.{name}", default) if ctx is not None else default


def model_options(f: F) -> F:
    """Adds --cfg, --nc, --seed, --trust-checkpoint, and --weights / --strict-weights for factory models."""
    for opt in reversed([
        click.option("--weights", type=click.Path(dir_okay=False), default=None, expose_value=False,
                     callback=_stash, metavar="FILE.pt",
                     help="A state_dict loaded over a factory model (torch.load with weights_only=True; full "
                          "unpickling only with --trust-checkpoint). " + FACTORY_HELP),
        click.option("--strict-weights/--no-strict-weights", default=True, show_default=True, expose_value=False,
                     callback=_stash, help="With --weights: every key must match the model (or load what fits)."),
    ]):
        f = opt(f)
    for opt in reversed([
        click.option("--cfg", type=click.Path(dir_okay=False), default=None,
                     help="YAML config for a plain state_dict checkpoint."),
        click.option("--nc", type=click.IntRange(min=1), default=None, help="Override the number of classes."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the synthetic weights given to models built from a config."),
        click.option("--trust-checkpoint", is_flag=True, default=False, allow_from_autoenv=False,
                     callback=_trust_from_command_line,
                     help="Fully unpickle the checkpoint (runs any code it names). Only for files you trust."),
    ]):
        f = opt(f)
    return f


def load_from_cli(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool):
    """Load MODEL as the CLI options describe (returns :class:`exporter.models.LoadedModel`)."""
    from exporter import progress
    from exporter.models import load_model

    what = "building and calibrating" if not Path(model).suffix or model.endswith((".yaml", ".yml")) else "loading"
    with progress.task(f"{what} {Path(model).name}") as end:
        lm = load_model(model, cfg=cfg, nc=nc, seed=seed, trust_checkpoint=trust_checkpoint, **factory_options())
        n = sum(p.numel() for p in lm.model.parameters())
        end["detail"] = f"{n:,} parameters, weights: {lm.weights}"
    return lm


def factory_options() -> dict[str, Any]:
    """--weights and --strict-weights of the running command, as :func:`exporter.models.load_model` takes them."""
    out = {"weights": _meta("weights"), "strict_weights": _meta("strict_weights", True)}
    return {k: v for k, v in out.items() if v is not None and v is not True}  # the defaults: nothing to pass


def _parse_input_shapes(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[Any, ...]:
    from exporter.errors import ConfigError
    from exporter.options import InputSpec

    try:
        specs = tuple(InputSpec.parse(v) for v in value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--input-shape "), param_hint="--input-shape") from None
    ctx.meta["yexport.input_shapes"] = specs
    return specs


def input_shape_option(f: F) -> F:
    """Adds --input-shape (repeatable): the example inputs of a model that is not a YOLO image model."""
    return click.option(
        "--input-shape", "input_shapes", multiple=True, expose_value=False, callback=_parse_input_shapes,
        metavar="SHAPE[:DTYPE[:HIGH]]",
        help="Example input of a non-YOLO model, e.g. 1,3,224,224; repeat it for several inputs (the forward's "
             "positional arguments, in order); non-float inputs as 1,16:int64 (values in [0, 2)) or "
             "1,16:int64:30522 (in [0, 30522)), masks as 1,16:bool. Default: one 1x3xHxW image batch of --img.")(f)


def input_shapes_from_cli() -> tuple[Any, ...]:
    """The running command's --input-shape values (InputSpec), () when none were given."""
    return tuple(_meta("input_shapes", ()) or ())


class ImageSize(click.ParamType):
    """``--img 640`` (square) or ``--img 640,480`` / ``--img 640x480`` (height, width)."""

    name = "H[,W]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("x", ",").split(",")
        try:
            sizes = [int(p) for p in parts if p.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a size: give H or H,W (e.g. 640 or 640,480)", param, ctx)
        if len(sizes) not in (1, 2) or min(sizes) < 32:
            self.fail(f"{value!r}: give one or two sizes of at least 32 (H or H,W)", param, ctx)
        if max(sizes) > MAX_IMG:
            self.fail(f"{value!r}: sizes are at most {MAX_IMG}", param, ctx)
        return (sizes[0], sizes[-1])


IMG = ImageSize()


def split_list(value: str | None) -> tuple[str, ...]:
    """'cpu,cuda' -> ('cpu', 'cuda'); an empty value is (), a list of nothing (',') is refused."""
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    if not items and value and value.strip():
        raise click.BadParameter(f"{value!r} is an empty list: give comma-separated names, e.g. cpu,cuda")
    return items


def parse_atol(values: tuple[str, ...], default: float | None = None) -> tuple[float | None, dict[str, float]]:
    """``--atol 1e-3`` (all outputs) and ``--atol output0=1e-4`` (one output), repeatable."""
    atol = default
    per: dict[str, float] = {}
    for v in values:
        name, _, num = v.rpartition("=")
        try:
            x = float(num)
        except ValueError:
            raise click.BadParameter(f"{v!r}: give a number or OUTPUT=NUMBER", param_hint="--atol") from None
        if not math.isfinite(x):
            raise click.BadParameter(f"{v!r}: a tolerance must be a finite number", param_hint="--atol")
        if x < 0:
            raise click.BadParameter(f"{v!r}: tolerances cannot be negative", param_hint="--atol")
        if name:
            per[name] = x
        else:
            atol = x
    return atol, per


def parity_options(f: F) -> F:
    """Adds the parity options shared by ``export`` and ``check``."""
    for opt in reversed([
        click.option("--providers", default="cpu", show_default=True,
                      help="onnxruntime providers to check, comma-separated: cpu, cuda, tensorrt."),
        click.option("--require", default="", help="Providers that must really run (e.g. cuda): "
                     "not running is then a failure instead of a note."),
        click.option("--atol", multiple=True, metavar="A|OUT=A",
                     help="Replace the default rule by an explicit tolerance |onnx - torch| <= atol + rtol * |torch| "
                          "(rtol default 1e-3), for all outputs or per output: --atol output0=1e-4. Repeatable. "
                          "Default: no fixed tolerance; the error against a float64 forward must stay within a "
                          "few times PyTorch fp32's own."),
        click.option("--rtol", type=click.FloatRange(min=0), default=None,
                     help="Relative tolerance of the explicit rule (atol default 1e-3 then)."),
        click.option("--inputs", type=click.IntRange(min=1), default=None,
                     help="Inputs per checked shape (default 2, or 1 per shape for dynamic files, or every "
                          "image of --images). Never the capture example."),
        click.option("--images", type=click.Path(file_okay=False), default=None,
                     help="Check on your own JPEG/PNG images (letterboxed) instead of synthetic ones."),
        click.option("--strict", is_flag=True, default=False,
                     help="Fail when a comparison is degenerate: an output that is constant (e.g. all zeros) "
                          "or empty on every input says nothing about the graph."),
        click.option("--detections/--no-detections", default=True, show_default=True,
                     help="Report detections after NMS (conf 0.25, IoU 0.45) against float64's, beside "
                          "PyTorch fp32's own agreement (information, not the verdict)."),
    ]):
        f = opt(f)
    return f


def load_config_defaults(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--config FILE``: YAML whose keys are this command's option names; they become defaults
    (the command line and YEXPORT_* variables still win). Unknown keys are an error."""
    if not value:
        return
    from exporter.options import load_config

    # accept each option's long flag (training_mode for --training-mode) as well as its parameter name
    aliases: dict[str, str] = {}
    for p in ctx.command.params:
        if isinstance(p, click.Option) and p.name and p.name != "config":
            aliases[p.name] = p.name
            for flag in p.opts:
                if flag.startswith("--"):
                    aliases[flag[2:].replace("-", "_")] = p.name
    data = load_config(value, known=set(aliases))
    if any(aliases[k] == "trust_checkpoint" for k in data):
        from exporter.errors import ConfigError

        raise ConfigError(f"{value}: trust-checkpoint cannot be set in a config file: full unpickling (which runs "
                          "code from the checkpoint) is only turned on by typing --trust-checkpoint")
    params = {p.name: p for p in ctx.command.params}
    defaults: dict[str, Any] = {}
    for k, v in data.items():
        p = params[aliases[k]]
        if isinstance(v, list) and not p.multiple and p.nargs == 1:  # providers: [cpu, cuda] -> "cpu,cuda"
            v = ",".join(str(x) for x in v)
        defaults[aliases[k]] = v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def preflight_export(model: str, out_dir: str, name: str | None, variants: list[str], device: str,
                     images: str | None, cfg: str | None = None) -> None:
    """What ``yexport export`` checks before loading the model: no output file replaces an input, the
    output folder is writable, ``--name`` is a plain file stem, ``--images`` is a folder with images,
    and ``--device`` is usable."""
    from exporter.errors import ConfigError, InputError
    from exporter.models.zoo import builtin_path
    from exporter.paths import check_export_outputs

    if name is not None and (not name or os.sep in name or name in (".", "..") or "\0" in name):
        raise ConfigError(f"--name {name!r}: give a file name stem without folders (the folder is -o)")
    from exporter.models.factory import parse_factory

    factory = parse_factory(model)
    src = Path(factory[0]) if factory else builtin_path(model) or Path(model)
    stem = (src.stem if factory[0].endswith(".py") else factory[0].rpartition(".")[2]) if factory else src.stem
    check_export_outputs(out_dir, name or stem, variants, inputs=[src, cfg, _meta("weights")])
    if images is not None:
        d = Path(images)
        if not d.is_dir():
            raise InputError(f"--images {d}: not a folder of JPEG/PNG images")
        if not any(p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") for p in d.iterdir()):
            raise InputError(f"--images {d}: no .jpg/.png images found")
    from exporter.stages.prepare import resolve_device

    resolve_device(device)
