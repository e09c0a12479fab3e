"""``yexport inspect``: what is inside an ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport inspect exports/yolov5s.onnx',
    'yexport inspect exports/yolov5s.onnx --json',
)


@click.command("inspect", cls=Command, examples=EXAMPLES,
               short_help="An ONNX file's I/O, ops, parameters, FLOPs and metadata.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
def inspect(file: Path, as_json: bool) -> None:
    """Show an ONNX file's interface, ops, parameters and FLOPs without reading its weights.

    Reports IR version, opsets, producer, graph inputs and outputs (with symbolic dims), the op
    histogram, parameter count and bytes, counts of BatchNormalization, Shape, Gather, Identity,
    Resize, Reshape and Transpose, FLOPs of Conv, ConvTranspose, Gemm and MatMul from inferred
    shapes (nodes with unknown shapes are listed, not guessed) and metadata.
    """
    from exporter.graph.inspect import format_report
    from exporter.graph.inspect import inspect as inspect_model

    report = inspect_model(file)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report), nl=False)
