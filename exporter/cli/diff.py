"""``yexport diff``: structural diff of two ONNX graphs or snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from exporter.cli._help import Command

_IGNORABLE = ("names", "initializer-values", "metadata")


def _split_ignore(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    items = [x.strip() for v in value for x in v.split(",") if x.strip()]
    for x in items:
        if x not in _IGNORABLE:
            raise click.BadParameter(f"{x!r} is not one of {', '.join(_IGNORABLE)}")
    return tuple(items)


EXAMPLES = (
    'yexport diff a.onnx b.onnx',
    'yexport diff approved/model.graph.txt build/model.onnx --ignore initializer-values --format markdown > graph-diff.md',
    'yexport diff a.onnx b.onnx --format json --include run-metadata',
)


@click.command("diff", cls=Command, examples=EXAMPLES,
               short_help='Structural diff of two ONNX graphs (exit 1 when different).')
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True,
              help="Report format; markdown is ready to paste as a pull-request comment.")
@click.option("--ignore", multiple=True, callback=_split_ignore, metavar="WHAT",
              help="Ignore names (graph input/output names), initializer-values or metadata. "
                   "Repeat or give a comma list.")
@click.option("--include", multiple=True, metavar="WHAT",
              help="Also compare run-metadata: how each file was made (parity options, stages, source path, "
                   "versions, seed). By default only the metadata that defines the graph is compared.")
@click.option("--atol", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="Initializer values that differ by at most this much count as equal (ONNX files only).")
@click.pass_context
def diff(ctx: click.Context, a: Path, b: Path, fmt: str, ignore: tuple[str, ...], include: tuple[str, ...],
         atol: float) -> None:
    """Compare two ONNX graphs structurally; exit 0 when identical, 1 when different, 2 on error.

    A and B are ONNX files or `yexport snapshot` texts. Nodes are matched by op and position in the
    dataflow, never by name, so renaming nodes and values is no difference. Reports graph input and
    output changes, the op count delta, added, removed and changed nodes (attributes, shapes, dtypes,
    rewired inputs), initializer changes (shape, dtype, values beyond --atol) and opset and
    metadata changes, after a summary of the systematic ones (op counts, parameter count, channel
    widths, depth, module substitutions, opset, interface).

    Metadata is compared as graph identity: stride, names, head and BatchNorm mode, image size,
    dynamic axes, graph-defining options. How the file was made (parity options, stage list, source
    path, versions, seed) is compared only with --include run-metadata.
    """
    from exporter.graph.diff import diff as diff_graphs

    result = diff_graphs(a, b, ignore=ignore, atol=atol, include=include)
    click.echo(result.render(fmt), nl=False)
    ctx.exit(0 if result.identical else 1)
