"""``yexport graph``: a Graphviz diagram of an ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport graph exports/yolov5s.onnx                    # ./yolov5s.svg',
    'yexport graph exports/yolov5s.onnx --collapse modules -o yolov5s-blocks.png',
    'yexport graph exports/yolov5s-keep-bn.onnx --highlight-diff exports/yolov5s-fused.onnx',
)


@click.command("graph", cls=Command, examples=EXAMPLES,
               short_help='Graphviz drawing of an ONNX file, or its block diagram.')
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out", type=click.Path(path_type=Path), default=None,
    help="Output .svg, .png, .pdf or .dot  [default: <stem>.svg in the current directory]",
)
@click.option(
    "--collapse", type=click.Choice(["modules"]), default=None,
    help="'modules': one box per top-level layer (model.N) with its module type and output shape.",
)
@click.option(
    "--highlight-diff", "highlight", type=click.Path(path_type=Path), default=None, metavar="OTHER.onnx",
    help="Colour nodes added (green) and removed (red, dashed) relative to OTHER.onnx, matched by structure "
         "as `yexport diff OTHER.onnx FILE` matches them.",
)
def graph(file: Path, out: Path | None, collapse: str | None, highlight: Path | None) -> None:
    """Draw FILE (.onnx) with Graphviz: tensor shapes on edges, BatchNorm visible, friendly labels.

    Needs Graphviz's 'dot' (Debian package 'graphviz') except for .dot output.
    """
    from exporter.paths import check_output_file

    check_output_file(out, file, highlight)  # never onto an input; a writable folder, before any work
    from exporter.graph.graphviz import build_dot, find_dot, write_dot
    from exporter.graph.load import load_onnx

    dst = out if out is not None else Path(f"{file.stem}.svg")  # never into a tracked graphviz_out/
    if dst.suffix.lower() != ".dot":
        find_dot()
    model = load_onnx(file)
    if highlight is not None:
        highlight_model = load_onnx(highlight)
    else:
        highlight_model = None
    result = build_dot(model, collapse=collapse, highlight=highlight_model, title=file.name)
    write_dot(result.text, dst)
    vs = f" vs {highlight.name}" if highlight is not None else ""
    click.echo(f"wrote {dst} ({result.summary()}{vs})")
