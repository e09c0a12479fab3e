"""Options shared by the commands that take a MODEL (a built-in name, a YAML config or a checkpoint), and the
click options generated from the options model (exporter/options.py: :func:`options_from`, :func:`values_from`)."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from exporter.options import ExportOptions, Flag, ParityOptions, flag_of, parse_img, parse_names

F = Callable[..., Any]


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
    """Load MODEL as the CLI options describe (returns :class:`exporter.models.LoadedModel`). Every
    command that runs a PyTorch model starts here, so the allocator is tuned for its forwards here too
    (:mod:`exporter.cli._malloc`)."""
    from exporter import progress
    from exporter.cli._malloc import keep_freed_memory
    from exporter.models import load_model

    keep_freed_memory()

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


class Parsed(click.ParamType):
    """A click type from a plain parser of the options model (ValueError: refused with its message)."""

    def __init__(self, parse: Callable[[Any], Any], name: str) -> None:
        self.parse = parse
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


IMG = Parsed(parse_img, "H[,W]")


def split_list(value: str | None) -> tuple[str, ...]:
    """'cpu,cuda' -> ('cpu', 'cuda'); an empty value is (), a list of nothing (',') is refused."""
    try:
        return parse_names(value or "")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _click_option(f: dataclasses.Field[Any], hint: Any, flag: Flag) -> click.Option:
    """The click option of one field, its type and default from the field (see :class:`Flag`)."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]
    kind = kinds[0]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[operator]
    kw: dict[str, Any] = {"help": flag.help, "metavar": flag.metavar, "multiple": flag.multiple}
    if flag.switch is not None:
        default = default == flag.switch[0]
    elif flag.parse is not None:
        kw["type"] = Parsed(flag.parse, flag.metavar or "text")
    elif kind is bool and "/" not in flag.decls[0]:
        kw["is_flag"] = True
    elif typing.get_origin(kind) is typing.Literal:
        kw["type"] = click.Choice(typing.get_args(kind))
    elif kind in (int, float):
        kw["type"] = kind if flag.minimum is None else (
            click.IntRange(min=int(flag.minimum)) if kind is int else click.FloatRange(min=flag.minimum))
    elif typing.get_origin(kind) is tuple:
        kw["type"] = Parsed(parse_names, flag.metavar or "text")
    elif flag.folder:
        kw["type"] = click.Path(file_okay=False)
    if flag.flag_value is not None:
        kw.update(is_flag=False, flag_value=flag.flag_value)
    if flag.multiple:
        default = None
    elif flag.text is not None:
        default = flag.text(default)
    elif isinstance(default, tuple):
        default = ",".join(default)
    option = ModelOption([*flag.decls, flag.dest or f.name], default=default, **kw)
    option.group, option.field = flag.group, f.name
    return option


class ModelOption(click.Option):
    """A click option generated from a field of the options model; ``group`` places it in ``--help``."""

    group: str = ""
    field: str = ""


def cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that have a flag: its own first, then those it inherits (the shared parity
    options come after the graph options in ``yexport export``)."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    fields = [f for f in dataclasses.fields(cls) if flag_of(f) is not None]
    return [f for f in fields if f.name not in inherited] + [f for f in fields if f.name in inherited]


def options_from(cls: type) -> Callable[[F], F]:
    """A decorator adding one click option per field of ``cls`` that has a flag, in :func:`cli_fields` order."""
    hints = typing.get_type_hints(cls)

    def decorate(f: F) -> F:
        for fld in reversed(cli_fields(cls)):
            flag = flag_of(fld)
            assert flag is not None
            option = _click_option(fld, hints[fld.name], flag)
            f.__click_params__ = [*getattr(f, "__click_params__", []), option]  # type: ignore[attr-defined]
        return f

    return decorate


def values_from(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The field values of ``cls`` given by the click parameters :func:`options_from` added (taken out of
    ``params``, which keeps the command's own)."""
    out: dict[str, Any] = {}
    for fld in cli_fields(cls):
        flag = flag_of(fld)
        assert flag is not None
        value = params.pop(flag.dest or fld.name)
        if flag.collect is not None:
            out.update(flag.collect(value))
        elif flag.switch is not None:
            out[fld.name] = flag.switch[0] if value else flag.switch[1]
        else:
            out[fld.name] = value
    return out


parity_options = options_from(ParityOptions)  # the parity options of ``check`` (and the library's check_parity)
export_options = options_from(ExportOptions)  # every option of ``export`` with a flag, the parity ones last


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
        elif p.multiple and not isinstance(v, list):  # atol: 1e-3 is one --atol
            v = [v]
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
