"""``yexport report``: one table from the manifests of many exports."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport report exports/',
    'yexport report ci-job-1/ ci-job-2/ --format markdown > exports.md',
)


@click.command("report", cls=Command, examples=EXAMPLES,
               short_help="One table from many exports' manifests.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="Table format; markdown pastes into a pull request.")
def report(paths: tuple[Path, ...], fmt: str) -> None:
    """Merge export manifests (the .json beside each .onnx) into one table: model, variant, nodes,
    BatchNorm, Shape+Gather, size, parity and detection verdicts per provider, seconds.

    PATHS are manifest files or folders (searched recursively; default: exports). Each manifest is
    checked against the sha256 of its .onnx; JSON files that are not manifests are skipped with a
    note. Exit status: 0 every file matches its manifest, 1 a file is missing or does not match,
    2 no manifest found or a usage error.
    """
    from exporter.errors import InputError
    from exporter.report import collect, render

    rows, notes = collect(list(paths) or [Path("exports")])
    if not rows:
        raise InputError(f"no yexport manifests under {', '.join(map(str, paths or ('exports',)))}")
    import sys

    from exporter.tables import stream_style

    style = stream_style(sys.stdout) if fmt == "text" else {}
    click.echo(render(rows, notes, fmt, **style), nl=False)
    if not all(r.ok for r in rows):
        raise SystemExit(1)
