"""``yexport export``: the export pipeline from the command line."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from exporter.cli._help import Command
from exporter.cli._options import (
    IMG,
    input_shape_option,
    input_shapes_from_cli,
    load_config_defaults,
    load_from_cli,
    model_options,
    parity_options,
    parse_atol,
    preflight_export,
    split_list,
)


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
SECTIONS = {
    "Output": ("out_dir", "name", "force", "variants", "config", "as_json", "view"),
    "Graph": ("keep_bn", "training", "int_shapes", "tidy", "infer_shapes", "simplify", "dynamic", "img", "batch",
              "opset", "exporter", "half", "half_io", "raw_head", "device"),
    "Parity": ("check",),
}


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
              help="Several files at once, comma-separated, from: fused, keep-bn, training, int-shapes, no-int-shapes, "
                   "simplify, dynamic, dynamic-all, raw, torchscript, dynamo; combine with '+' (keep-bn+simplify). "
                   "Each applies on top of the other options. Example: --variants fused,keep-bn,dynamic.")
@click.option("--keep-bn/--fuse-bn", "keep_bn", default=None,
              help="Keep every BatchNorm as BatchNormalization(training_mode=0), through the exporter and "
                   "--simplify; or fold it into the convs (default: fuse).")
@click.option("--training-mode", "training", is_flag=True, default=False,
              help="Export with TrainingMode.TRAINING: BatchNorm uses batch statistics (not an inference "
                   "graph); parity is checked against a train-mode forward on a copy.")
@click.option("--int-shapes/--no-int-shapes", default=None,
              help="Read feature-map sizes as Python ints: no Shape/Gather chains, sizes baked in. Default: on "
                   "where exact (static, --dynamic batch), off with --dynamic all (where --int-shapes is "
                   "refused); --no-int-shapes keeps the traced shape arithmetic.")
@click.option("--tidy/--no-tidy", default=True, show_default=True,
              help="Constant folding and clean-up of the captured graph (BatchNorm kept with --keep-bn).")
@click.option("--infer-shapes/--no-infer-shapes", default=True, show_default=True,
              help="ONNX shape inference: a size on every edge.")
@click.option("--simplify", is_flag=True, default=False,
              help="Run onnxsim (honours --keep-bn); parity is checked before and after.")
@click.option("--dynamic", type=click.Choice(["batch", "all"]), default=None, is_flag=False, flag_value="all",
              help="Dynamic axes: bare --dynamic (or --dynamic all) for batch, height and width, as YOLOv5 has it; "
                   "--dynamic batch for the batch only.")
@click.option("--img", "--imgsz", "img", type=IMG, default="640", show_default=True,
              help="Input size H or H,W (multiples of 32).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size of the example.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset; the file gets exactly this one.")
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True,
              help="torch exporter; auto: TorchScript where this torch has it (the same graph as dynamo "
                   "after tidy, captured ~10x faster, honours training mode), else dynamo.")
@click.option("--half", is_flag=True, default=False,
              help="float16 weights and compute (works with --dynamic, --keep-bn, --simplify, both exporters, "
                   "on CPU too); checked against PyTorch's own float16 noise.")
@click.option("--half-io", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="With --half: the type of the file's inputs and outputs (float32 adds Casts at the edges).")
@click.option("--raw-head/--decode", "raw_head", default=False,
              help="Detect output: the raw per-level maps, or the decoded (bs, N, nc+5) tensor (default).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N for capture and reference.")
@click.option("--check/--no-check", default=True, show_default=True, help="Check parity against PyTorch.")
@parity_options
@model_options
@input_shape_option
@click.option("--view", is_flag=True, help="Open the (first) result in Netron when done.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
def export(model: str, out_dir: str, name: str | None, force: bool, variants: str | None, keep_bn: bool | None, training: bool,
           int_shapes: bool, tidy: bool, infer_shapes: bool, simplify: bool, dynamic: str | None,
           img: tuple[int, int], batch: int, opset: int, exporter: str, half: bool, half_io: str, raw_head: bool, device: str,
           check: bool,
           providers: str, require: str, atol: tuple[str, ...], rtol: float | None, inputs: int | None, images: str | None,
           strict: bool, detections: bool,
           cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, view: bool, as_json: bool) -> None:
    """Export MODEL (a built-in name, a YAML config, a checkpoint, or your own pkg.module:factory /
    file.py:factory, whose import runs your code; default yolov5s) to ONNX, with a manifest beside
    each file, and check each file against PyTorch on onnxruntime.

    Exit status: 0 all files written and passing, 1 a parity or stage failure, 2 a usage or input error.
    """
    from exporter.api import export as run_export
    from exporter.options import ExportOptions, variant_options

    a, per_output = parse_atol(atol)
    options = ExportOptions(
        keep_bn=keep_bn, training=training, int_shapes=int_shapes, tidy=tidy, infer_shapes=infer_shapes,
        simplify=simplify, dynamic=dynamic,  # type: ignore[arg-type]
        img=img, batch=batch, opset=opset, exporter=exporter,  # type: ignore[arg-type]
        head="raw" if raw_head else "decode", half=half, half_io=half_io,  # type: ignore[arg-type]
        device=device, check=check, providers=split_list(providers),
        require=split_list(require), atol=a, rtol=rtol, output_atol=per_output, inputs=inputs, images=images, seed=seed,
        detections=detections, strict=strict, input_shapes=input_shapes_from_cli(),
    )
    names = list(split_list(variants))
    for v in names:  # refuse bad variants and combinations before any work
        variant_options(options, v).validate()
    if not names:
        options.validate()
    preflight_export(model, out_dir, name, names, device, images, cfg)  # before ~20 s of work
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
