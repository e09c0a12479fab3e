"""``yexport report``: one table from the manifests of many exports."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
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
    click.echo(render(rows, notes, fmt), nl=False)
    if not all(r.ok for r in rows):
        raise SystemExit(1)
