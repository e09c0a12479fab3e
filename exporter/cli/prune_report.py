"""``yexport prune-report``: which convs can be channel-pruned, BN gamma statistics, weight sparsity."""

from __future__ import annotations

import json
from typing import Any

import click

from exporter.cli._help import Command
from exporter.cli._options import input_shape_option, input_shapes_from_cli, load_from_cli, model_options

DEFAULT_THRESHOLD = 0.01  # kept equal to exporter.analysis.prune.DEFAULT_GAMMA_THRESHOLD (no torch import here)


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


EXAMPLES = (
    'yexport prune-report yolov5s',
    'yexport prune-report yolov5s --l1-unstructured 0.3 --save pruned.pt && yexport export pruned.pt',
)


@click.command("prune-report", cls=Command, examples=EXAMPLES,
               short_help='Channel-prunable convs, BatchNorm gammas, weight sparsity.')
@click.argument("model", required=False, default="yolov5s")
@model_options
@click.option("--threshold", type=click.FloatRange(min=0), default=DEFAULT_THRESHOLD, show_default=True,
              help="|gamma| below this counts as a near-zero (prunable) channel.")
@click.option("--l1-unstructured", "amount", type=click.FloatRange(0, 1), default=None, metavar="AMOUNT",
              help="Zero the AMOUNT share (0..1) of smallest weights of every Conv2d (on a copy) and report "
                   "the new sparsity.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False), default=None, metavar="OUT.pt",
              help="Write the pruned model as a checkpoint (needs --l1-unstructured).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@input_shape_option
def prune_report(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, threshold: float,
                 amount: float | None, save_path: str | None, as_json: bool) -> None:
    """Report which Conv layers of MODEL (default yolov5s) can be channel-pruned and why not for the
    others, BN gamma statistics per conv, and the share of exactly-zero Conv weights.

    A Conv whose BN output feeds a residual add (Bottleneck.cv2 with shortcut, and the conv in front of
    the shortcut chain) is tied to other convs' channels; Detect convs have no BatchNorm.
    """
    from exporter.errors import ConfigError
    from exporter.models.zoo import builtin_path
    from exporter.paths import check_output_file

    if save_path and amount is None:
        raise ConfigError("--save writes the pruned model: give --l1-unstructured AMOUNT too")
    check_output_file(save_path, builtin_path(model) or model, cfg, flag="--save")
    from exporter.analysis.prune import l1_unstructured, weight_sparsity
    from exporter.analysis.prune import prune_report as run_report

    lm = load_from_cli(model, cfg, nc, seed, trust_checkpoint)
    report = run_report(lm.model, threshold, input_shapes_from_cli())
    pruned_info: dict[str, Any] | None = None
    if amount is not None:
        pruned = l1_unstructured(lm.model, amount)
        pruned_info = {"amount": amount, "sparsity_before": report.sparsity, "sparsity_after": weight_sparsity(pruned)}
        if save_path:
            _save(pruned, save_path, {"l1_unstructured": amount, "weight_sparsity": pruned_info["sparsity_after"]})
            pruned_info["saved"] = save_path
    if as_json:
        click.echo(json.dumps({"model": lm.describe(), **report.to_dict(), "l1_unstructured": pruned_info}, indent=2))
        return
    import sys

    from exporter.tables import Footnotes, render, stream_style

    notes = Footnotes()
    rows = []
    for c in report.convs:
        below = "-" if c.gamma_below is None else f"{100 * c.gamma_below:.1f}%"
        reason = c.reason if len(c.reason) <= 24 else notes.ref(c.reason)
        rows.append(("" if c.layer is None else c.layer, c.name, c.role, c.out_channels, "yes" if c.prunable else "no",
                     _f(c.gamma_min), _f(c.gamma_median), below, f"{100 * c.sparsity:.2f}%", reason))
    click.echo(render(("layer", "conv", "role", "ch", "prunable", "|g| min", "median", "<thr", "sparsity", "reason"),
                      rows, right=("layer", "ch", "|g| min", "median", "<thr", "sparsity"), footnotes=notes,
                      **stream_style(sys.stdout)), nl=False)
    s = report.summary()
    click.echo(f"{lm.name}: {s['prunable']} of {s['convs']} convs channel-prunable ({s['prunable_channels']:,} channels); "
               f"{s['channels_below_threshold']:,} prunable channels with |gamma| < {threshold:g}"
               + (f" (channel flow from {report.method})" if report.method != "YOLOv5 layers" else ""))
    click.echo(f"weight sparsity: {100 * s['sparsity']:.2f}% ({s['zero_weights']:,} of {s['weights']:,} Conv2d weights "
               "are exactly zero)")
    if pruned_info is not None:
        click.echo(f"after L1 unstructured pruning of {amount:g} per Conv2d: weight sparsity "
                   f"{100 * pruned_info['sparsity_after']:.2f}%")
        if save_path:
            click.echo(f"saved the pruned model to {save_path}")


def _save(model, path: str, extra: dict) -> None:
    from exporter.errors import MissingDependency

    try:
        from exporter.models.checkpoint import save_checkpoint
    except ImportError:
        raise MissingDependency("--save needs exporter.models.checkpoint.save_checkpoint, "
                                "which this installation lacks") from None
    save_checkpoint(model, path, extra=extra)
