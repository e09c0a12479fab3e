"""``yexport render``: a PNG or SVG of the Netron view of an ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport render exports/yolov5s.onnx -o yolov5s.png',
    'yexport render exports/yolov5s.onnx -o yolov5s.svg',
    'yexport render exports/yolov5s.onnx -o yolov5s@2x.png --scale 2',
)


@click.command("render", cls=Command, examples=EXAMPLES,
               short_help='Save the Netron view of an ONNX file as PNG or SVG.')
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out", type=click.Path(path_type=Path), required=True, help="Image to write: OUT.png or OUT.svg."
)
@click.option("--width", type=int, default=None, help="PNG width in pixels (a wider graph is scaled down)  [default: the graph's own width]")
@click.option("--scale", type=float, default=1.0, show_default=True, help="PNG pixel ratio (2 gives sharper text).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for Netron to draw the graph.")
def render(file: Path, out: Path, width: int | None, scale: float, timeout: float) -> None:
    """Draw FILE (.onnx) with Netron in headless Chromium and save the whole graph as PNG or SVG.

    Needs Debian's 'chromium' package (make install-browser) and the 'playwright' Python package.
    """
    from exporter.paths import check_output_file

    check_output_file(out, file)  # never onto the input; a writable folder, before any work
    from exporter.graph.render import render as render_netron

    result = render_netron(file, out, width=width, scale=scale, timeout=timeout)
    click.echo(f"wrote {result.path} ({result.summary()}) in {result.seconds:.1f} s")
