"""``yexport export``: the export pipeline from the command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from exporter.cli._help import Command
from exporter.cli._options import (
    export_options,
    input_shape_option,
    input_shapes_from_cli,
    load_config_defaults,
    load_from_cli,
    model_options,
    preflight_export,
    split_list,
    values_from,
)
from exporter.options import VARIANTS, ExportOptions, variant_options


def _human(n: int) -> str:
    from exporter.tables import size_text

    return size_text(n)


SUMMARY_COLUMNS = ("file", "nodes", "BatchNorm", "Shape+Gather", "size", "parity", "seconds")


def summary_table(results: list[Any], color: bool = False, width: int | None = None) -> str:
    """One row per file. Why a provider did not run (e.g. CUDA's fallback reason) is a footnote."""
    from exporter.tables import Footnotes, render

    notes = Footnotes()
    rows = []
    for r in results:
        if r.parity is None:
            parity = "not checked"
        else:
            parity = r.parity.summary()
            for p in r.parity.providers:
                reason = getattr(p, "reason", "")
                if not p.ran and reason:
                    parity += f" {notes.ref(f'{p.requested} did not run: {reason}')}"
        rows.append((r.path.name, r.nodes, r.ops.get("BatchNormalization", 0),
                     r.ops.get("Shape", 0) + r.ops.get("Gather", 0), _human(r.size), parity, f"{r.seconds:.1f}"))
    return render(SUMMARY_COLUMNS, rows, right=("nodes", "BatchNorm", "Shape+Gather", "size", "seconds"),
                  footnotes=notes, color=color, width=width).rstrip("\n")


EXAMPLES = (
    "yexport export yolov5s                                # exports/yolov5s.onnx and its manifest",
    "yexport export yolov5s --keep-bn --simplify           # BatchNorm visible, simplified",
    "yexport export yolov5s --variants fused,keep-bn,dynamic -o out/",
    "yexport export my.pt --dynamic batch --providers cpu,cuda",
    "YEXPORT_EXPORT_IMG=320 yexport export yolov5n        # any option from the environment",
)
# the CLI-only options; the others take their group from the options model (exporter/options.py)
SECTIONS: dict[str, tuple[str, ...]] = {
    "Output": ("out_dir", "name", "force", "variants", "config", "as_json", "view"), "Graph": (), "Parity": ()}


@click.command("export", cls=Command, examples=EXAMPLES, sections=SECTIONS,
               short_help="Export a model to ONNX files and check their parity.")
@click.argument("model", required=False, default="yolov5s")
@click.option("--config", type=click.Path(dir_okay=False), callback=load_config_defaults, is_eager=True,
              expose_value=False, help="YAML file of option defaults (keys: option names).")
@click.option("-o", "--output", "out_dir", default="exports", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the ONNX files and their manifests.")
@click.option("--name", default=None, help="File name stem (default: the model's name).")
@click.option("--force", is_flag=True, default=False,
              help="Replace an existing file even when it was made with other graph-defining options.")
@click.option("--variants", default=None, metavar="LIST",
              help=f"Several files at once, comma-separated, from: {', '.join(VARIANTS)}; combine with '+' "
                   "(keep-bn+simplify). Each applies on top of the other options. Example: --variants "
                   "fused,keep-bn,dynamic.")
@export_options
@model_options
@input_shape_option
@click.option("--view", is_flag=True, help="Open the (first) result in Netron when done.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
def export(model: str, out_dir: str, name: str | None, force: bool, variants: str | None,
           cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, view: bool, as_json: bool,
           **flags: Any) -> None:
    """Export MODEL (a built-in name, a YAML config, a checkpoint, or your own pkg.module:factory /
    file.py:factory, whose import runs your code; default yolov5s) to ONNX, with a manifest beside
    each file, and check each file against PyTorch on onnxruntime.

    Exit status: 0 all files written and passing, 1 a parity or stage failure, 2 a usage or input error.
    """
    from exporter.api import export as run_export

    options = ExportOptions(**values_from(ExportOptions, flags), seed=seed, input_shapes=input_shapes_from_cli())
    names = list(split_list(variants))
    for v in names:  # refuse bad variants and combinations before any work
        variant_options(options, v).validate()
    if not names:
        options.validate()
    preflight_export(model, out_dir, name, names, options.device, options.images, cfg)  # before ~20 s of work
    source = load_from_cli(model, cfg, nc, seed, trust_checkpoint)
    from exporter.overwrite import export_targets, refuse_overwrite

    refuse_overwrite(export_targets(name or source.name, out_dir, options, names), source.name, force=force)
    reporter = (click.get_current_context().obj or {}).get("reporter")
    if reporter is not None:
        stem = name or source.name
        reporter.variants = [f"{stem}-{v}.onnx" for v in names] or [f"{stem}.onnx"]
    results = run_export(source, variants=names or None, out_dir=out_dir, name=name, options=options)
    if as_json:
        click.echo(json.dumps([json.loads(r.manifest_path.read_text()) for r in results if r.manifest_path], indent=2))
    else:
        from exporter.tables import stream_style

        click.echo(summary_table(results, **stream_style(sys.stdout)))
        for r in results:
            for note in r.notes:
                click.echo(f"note ({r.path.name}): {note}")
            for w in r.tracer_warnings:
                click.echo(f"warning ({r.path.name}): TracerWarning at {w}", err=True)
            for f in r.failures:
                click.echo(f"FAILED ({r.path.name}): {f}", err=True)
            if r.parity is not None and not r.parity:
                click.echo(r.parity.format(**stream_style(sys.stderr)), err=True)
        ok_files = [r.path for r in results if r.ok]
        if ok_files:
            click.echo(f"manifests beside each file (.json); open one with: yexport view {ok_files[0]}")
    if view and results:
        from exporter.graph.netron import view as netron_view

        netron_view(str(results[0].path))
    if not all(r.ok for r in results):
        raise SystemExit(1)
