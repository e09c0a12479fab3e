"""``yexport view``: open an ONNX file in Netron."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

EXAMPLES = (
    'yexport view exports/yolov5s.onnx',
    'yexport view exports/yolov5s.onnx --no-browse --port 8080',
)


@click.command("view", cls=Command, examples=EXAMPLES,
               short_help='Open an ONNX file in Netron on loopback until Ctrl-C.')
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=int, default=None, help="Port to listen on  [default: a free one]")
@click.option(
    "--browse/--no-browse",
    default=True,
    show_default=True,
    help="Open a browser (only where a display exists; otherwise the URL is printed).",
)
def view(file: Path, host: str, port: int | None, browse: bool) -> None:
    """Serve FILE (.onnx) with Netron and print its URL; Ctrl-C stops the server."""
    from exporter.graph.netron import view as serve_until_interrupted

    serve_until_interrupted(file, host=host, port=port, browse=browse, echo=click.echo)
