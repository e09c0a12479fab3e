"""``yexport snapshot``: canonical graph text for golden files."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport snapshot exports/yolov5s.onnx -o approved/yolov5s.graph.txt',
    'yexport snapshot exports/yolov5s.onnx | head',
)


@click.command("snapshot", cls=Command, examples=EXAMPLES,
               short_help='Canonical text of an ONNX graph for golden files.')
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the snapshot here (atomically) instead of printing it, e.g. model.graph.txt.")
@click.option("--io-names/--no-io-names", default=True, show_default=True,
              help="Keep the graph input and output names (the model's interface) in the text.")
@click.option("--metadata/--no-metadata", default=True, show_default=True,
              help="Include the model's metadata_props that define the graph.")
@click.option("--include", multiple=True, metavar="WHAT",
              help="run-metadata: also the run record (parity options, stages, source path, versions, seed).")
def snapshot(file: Path, output: Path | None, io_names: bool, metadata: bool, include: tuple[str, ...]) -> None:
    """Print canonical, deterministic text of an ONNX graph for golden files.

    Nodes come in canonical topological order with op, attributes and the dtype and shape of every
    input and output; initializers by shape, dtype and content hash, never values. Node and value
    names become positions (%in0, %w3, %12), so re-exporting a model or renaming its nodes gives
    byte-identical text. Compare two snapshots (or a snapshot and an ONNX file) with `yexport diff`.
    """
    from exporter.paths import check_output_file

    check_output_file(output, file)  # never onto the input; a writable folder, before any work
    from exporter.graph.snapshot import snapshot as snapshot_text
    from exporter.graph.snapshot import write_snapshot

    text = snapshot_text(file, io_names=io_names, metadata=metadata, include=include)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_snapshot(text, output)
        click.echo(f"wrote {output}", err=True)
