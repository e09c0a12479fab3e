"""The ``yexport`` click group. Commands live one per module and are registered here by name.

Command modules import torch/onnxruntime only inside their functions, so ``yexport --help``,
``yexport inspect`` and ``yexport diff`` start without torch.
"""

from __future__ import annotations

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
}


class YexportGroup(click.Group):
    """Loads a command's module only when that command (or ``--help``) needs it, and turns
    :class:`YexportError` into a one-line message with its exit code (``--debug`` keeps the traceback)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except YexportError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"yexport: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=YexportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="yexport")
@click.option("--debug", is_flag=True, envvar="YEXPORT_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """yexport: export PyTorch detection models (YOLOv5 first) to ONNX you can trust and read."""
    ctx.obj = {"debug": debug}


def main() -> None:
    try:
        cli.main(prog_name="yexport", auto_envvar_prefix="YEXPORT")
    except KeyboardInterrupt:
        click.echo("yexport: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
