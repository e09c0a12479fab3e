"""``yexport profile``: per-layer parameters, GFLOPs, forward and backward time, shapes."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from exporter.cli._options import IMG, load_from_cli, model_options


def _shape(s) -> str:
    if s and isinstance(s[0], list):
        return "[" + ", ".join(_shape(x) for x in s) + "]"
    return "x".join(str(d) for d in s) if s is not None else ""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


@click.command("profile")
@click.argument("model", required=False, default="yolov5s")
@model_options
@click.option("--img", type=IMG, default="640", show_default=True, help="Image size H or H,W.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the layers run (cuda: synchronized timings).")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per layer (the median is reported), after one warm-up run.")
@click.option("--no-backward", is_flag=True, help="Time the forward pass only.")
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
    n_layers = len(getattr(lm.model, "model", []))
    with click.progressbar(length=n_layers, label=f"profiling {lm.name}", file=sys.stderr,
                           show_pos=True, item_show_func=lambda s: s) as bar:
        done = [0]

        def progress(k: int, total: int, what: str) -> None:
            bar.update(k - done[0], what)
            done[0] = k

        report = profile_model(lm.model, img, device=device, runs=runs, backward=not no_backward, seed=seed,
                               progress=progress)
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
    h, w_ = report.img
    click.echo(f"{lm.name} on {report.device}, 1x3x{h}x{w_}, median of {runs} run(s) per layer")
    click.echo(f"{'':>3} {'from':>12} {'module':<12} {'params':>10} {'GFLOPs':>7} {'fwd ms':>8} {'bwd ms':>8}  "
               f"{'input':<22} output")
    for r in report.layers:
        click.echo(f"{r.index:>3} {str(r.source):>12} {r.module:<12} {r.params:>10,} {r.gflops:>7.3f} "
                   f"{_ms(r.forward_ms):>8} {_ms(r.backward_ms):>8}  {_shape(r.input_shape):<22} "
                   f"{_shape(r.output_shape)}")
    click.echo(f"{'total':>16} {'':<12} {t['params']:>10,} {t['gflops']:>7.3f} {_ms(t['forward_ms']):>8} "
               f"{_ms(t['backward_ms']):>8}")
