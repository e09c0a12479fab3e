"""The ``yexport`` click group. Commands live one per module and are registered here by name.

Command modules import torch/onnxruntime only inside their functions, so ``yexport --help``,
``yexport inspect`` and ``yexport diff`` start without torch.
"""

from __future__ import annotations

import errno
import importlib
import sys
from typing import Any

import click

from exporter import __version__
from exporter.errors import YexportError

# name -> "module:attribute". A fixed table, not discovery: adding a command is one line here.
COMMANDS: dict[str, str] = {
    "info": "exporter.cli.info:info",
    "export": "exporter.cli.export:export",
    "check": "exporter.cli.check:check",
    "inspect": "exporter.cli.inspect:inspect",
    "snapshot": "exporter.cli.snapshot:snapshot",
    "diff": "exporter.cli.diff:diff",
    "view": "exporter.cli.view:view",
    "render": "exporter.cli.render:render",
    "graph": "exporter.cli.graph:graph",
    "fuse-check": "exporter.cli.fuse_check:fuse_check",
    "profile": "exporter.cli.profile:profile",
    "prune-report": "exporter.cli.prune_report:prune_report",
    "report": "exporter.cli.report:report",
}


class YexportGroup(click.Group):
    """Loads a command's module only when that command (or ``--help``) needs it, and turns
    :class:`YexportError` into a one-line message with its exit code (``--debug`` keeps the traceback)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Every command with its whole one-line summary (wrapped, never cut)."""
        from exporter.cli._help import summary, write_dl

        rows = [(name, summary(cmd)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                write_dl(formatter, rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        def debug() -> bool:  # ctx.obj is set by the group's callback, inside super().invoke
            return bool(ctx.obj and ctx.obj.get("debug"))

        try:
            return super().invoke(ctx)
        except YexportError as exc:
            if debug():
                raise
            _error(str(exc))
            ctx.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            if debug():
                raise
            _error("interrupted")
            ctx.exit(130)
        except click.UsageError as exc:
            if exc.ctx is None or exc.ctx is ctx:  # raised in a command's body: the hint names that command
                sub = ctx.invoked_subcommand
                exc.yexport_command = f"{ctx.command_path} {sub}" if sub else ctx.command_path  # type: ignore[attr-defined]
            raise
        except OSError as exc:
            if debug() or exc.errno == errno.EPIPE:  # a closed stdout pipe: click exits quietly
                raise
            _error(os_error_line(exc))
            ctx.exit(2)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Click's main, with every error as one line: usage errors (exit 2) with a hint to ``--help``,
        Ctrl-C (exit 130) and other click errors (their own code)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            command = getattr(exc, "yexport_command", None) or (exc.ctx.command_path if exc.ctx else "yexport")
            _error(f"{exc.format_message()} (try '{command} --help')")
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _error(exc.format_message())
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Abort):
            _error("interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def os_error_line(exc: OSError) -> str:
    """``path: strerror`` (for example ``out/x.onnx: Read-only file system``)."""
    what = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{where}: {what}"
    return str(exc) or what


def _error(message: str) -> None:
    click.echo("yexport: error: " + " ".join(str(message).split()), err=True)


@click.group(cls=YexportGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
             epilog="Every command has --help with examples. Options can also be set as YEXPORT_<COMMAND>_<OPTION> "
                    "environment variables (shown in each command's help), e.g. YEXPORT_EXPORT_IMG=320.")
@click.version_option(__version__, prog_name="yexport")
@click.option("--debug", is_flag=True, envvar="YEXPORT_DEBUG", show_envvar=True, help="Show full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, envvar="YEXPORT_QUIET", show_envvar=True,
              help="No progress on stderr (it is only shown when stderr is a terminal anyway).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """yexport: export PyTorch detection models (YOLOv5 first) to ONNX you can trust and read."""
    from exporter import progress

    reporter = progress.reporter_for_cli(quiet)
    ctx.obj = {"debug": debug, "reporter": reporter}
    if reporter is not None:
        ctx.with_resource(progress.installed(reporter))


def main() -> None:
    try:
        cli.main(prog_name="yexport", auto_envvar_prefix="YEXPORT")
    except KeyboardInterrupt:  # before click is running (e.g. while importing)
        _error("interrupted")
        sys.exit(130)
    finally:
        _no_collection_at_exit()


def _no_collection_at_exit() -> None:
    """Keep the cycle collector out of the interpreter's shutdown, which follows: the process is about to
    give everything back. With torch loaded, Python's shutdown spent 1.1-1.3 s of CPU here collecting
    (yolov5s export, check, info; a bare ``import torch`` too), 0.3 s with the objects frozen. Every
    output is written, closed and renamed by now; atexit handlers and weakref finalizers still run."""
    import gc

    gc.disable()
    gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
