"""``yexport profile``: per-layer parameters, GFLOPs, forward and backward time, shapes."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from exporter.cli._help import Command
from exporter.cli._options import IMG, input_shape_option, input_shapes_from_cli, load_from_cli, model_options


def _shape(s) -> str:
    if s and isinstance(s[0], list):
        return "[" + ", ".join(_shape(x) for x in s) + "]"
    return "x".join(str(d) for d in s) if s is not None else ""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


EXAMPLES = (
    'yexport profile yolov5s --img 640 --runs 3',
    'yexport profile yolov5n --img 320 --no-backward --csv > layers.csv',
)


@click.command("profile", cls=Command, examples=EXAMPLES,
               short_help='Per-layer parameters, GFLOPs, timings and shapes.')
@click.argument("model", required=False, default="yolov5s")
@model_options
@click.option("--img", type=IMG, default="640", show_default=True, help="Image size H or H,W.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the layers run (cuda: synchronized timings).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per layer (the median is reported), after one warm-up run.")
@click.option("--no-backward", is_flag=True, help="Time the forward pass only.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one row per layer plus a totals row.")
def profile(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, img: tuple[int, int],
            device: str, runs: int, no_backward: bool, as_json: bool, as_csv: bool) -> None:
    """Profile MODEL (default yolov5s) layer by layer: parameters, GFLOPs, forward and backward ms,
    input and output shapes, with a totals row.

    Each YAML layer runs standalone on the inputs it got in one forward pass on a seeded image, in eval
    mode; backward ms is the backward pass from the layer's outputs to its parameters and inputs.
    Progress goes to stderr.
    """
    from exporter.errors import ConfigError

    if as_json and as_csv:
        raise ConfigError("--json and --csv exclude each other")
    from exporter.analysis.profile import CSV_COLUMNS, profile_model, resolve_device

    resolve_device(device)  # a missing CUDA fails before the model is loaded
    lm = load_from_cli(model, cfg, nc, seed, trust_checkpoint)
    from exporter import progress

    with progress.task(f"profiling {lm.name}") as end:
        def on_layer(k: int, total: int, what: str) -> None:
            progress.step(what, k, total, kind="layer")

        report = profile_model(lm.model, img, device=device, runs=runs, backward=not no_backward, seed=seed,
                               progress=on_layer, input_specs=input_shapes_from_cli())
        end["detail"] = f"{len(report.layers)} layers"
    t = report.totals
    if as_json:
        click.echo(json.dumps({"model": lm.describe(), **report.to_dict()}, indent=2))
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in report.layers:
            w.writerow([r.index, r.source, r.module, r.params, f"{r.gflops:.6f}", f"{r.forward_ms:.4f}",
                        "" if r.backward_ms is None else f"{r.backward_ms:.4f}", _shape(r.input_shape),
                        _shape(r.output_shape)])
        w.writerow(["total", "", "", t["params"], f"{t['gflops']:.6f}", f"{t['forward_ms']:.4f}",
                    "" if t["backward_ms"] is None else f"{t['backward_ms']:.4f}", "", ""])
        click.echo(buf.getvalue(), nl=False)
        return
    from exporter.tables import render, stream_style

    h, w_ = report.img
    where = " + ".join(report.inputs) if report.inputs else f"1x3x{h}x{w_}"
    click.echo(f"{lm.name} on {report.device}, {where}, median of {runs} run(s) per layer")
    rows: list[tuple[int | str, ...]] = [
        (r.index, str(r.source), r.module, f"{r.params:,}", f"{r.gflops:.3f}", _ms(r.forward_ms),
         _ms(r.backward_ms), _shape(r.input_shape), _shape(r.output_shape)) for r in report.layers]
    rows.append(("total", "", "", f"{t['params']:,}", f"{t['gflops']:.3f}", _ms(t["forward_ms"]),
                 _ms(t["backward_ms"]), "", ""))
    click.echo(render(("", "from", "module", "params", "GFLOPs", "fwd ms", "bwd ms", "input", "output"), rows,
                      right=("", "from", "params", "GFLOPs", "fwd ms", "bwd ms"), **stream_style(sys.stdout)), nl=False)
