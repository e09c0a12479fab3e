"""``yexport fuse-check``: Conv+BN fusion error per pair and for the whole model."""

from __future__ import annotations

import json

import click

from exporter.cli._help import Command
from exporter.cli._options import IMG, input_shape_option, input_shapes_from_cli, load_from_cli, model_options

DEFAULT_THRESHOLD = 1e-5  # kept equal to exporter.analysis.fuse_check.DEFAULT_THRESHOLD (no torch import here)


def _shape(s: list[int]) -> str:
    return "x".join(str(d) for d in s)


EXAMPLES = (
    'yexport fuse-check yolov5s',
    'yexport fuse-check yolov5s-v5.0 --img 320 --json',
    'yexport fuse-check mymodel.py:build --input-shape 1,3,64,64',
)


@click.command("fuse-check", cls=Command, examples=EXAMPLES,
               short_help='Conv+BatchNorm fusion error per pair and for the model.')
@click.argument("model", required=False, default="yolov5s")
@model_options
@click.option("--img", type=IMG, default="640", show_default=True, help="Image size H or H,W of the seeded input.")
@input_shape_option
@click.option("--threshold", type=click.FloatRange(min=0), default=DEFAULT_THRESHOLD, show_default=True,
              help="Largest relative error ||y - y_fused|| / ||y|| allowed per Conv+BN pair.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def fuse_check(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool,
               img: tuple[int, int], threshold: float, as_json: bool) -> None:
    """Check Conv+BatchNorm fusion of MODEL (default yolov5s), pair by pair and as a whole.

    Each Conv+BN pair runs on its real input (captured in one forward pass on a seeded image), unfused,
    fused by yexport and fused by torch.nn.utils.fusion.fuse_conv_bn_eval. The whole model is then
    compared fused vs unfused with the parity tolerance |a-b| <= 1e-3 + 1e-3*|ref|.
    Exits 1 when a pair is above --threshold or the whole model is out of tolerance.
    """
    from exporter.analysis.fuse_check import fuse_check as run_check
    from exporter.analysis.generic import is_yolo
    from exporter.errors import ConfigError

    lm = load_from_cli(model, cfg, nc, seed, trust_checkpoint)
    specs = input_shapes_from_cli()
    if specs and is_yolo(lm.model):
        raise ConfigError("--input-shape is for models other than YOLO; give a YOLO model's size with --img")
    report = run_check(lm.model, img, threshold, seed=seed, input_specs=specs)
    if as_json:
        click.echo(json.dumps({"model": lm.describe(), **report.to_dict()}, indent=2))
    else:
        _print(lm.name, report)
    if not report:
        click.get_current_context().exit(1)


def _print(name: str, report) -> None:
    import sys

    from exporter.tables import render, stream_style

    rows = [(p.conv, _shape(p.input_shape), f"{p.rel_error:.2e}", f"{p.rel_error_torch:.2e}", f"{p.fusions_rel_diff:.2e}",
             "yes" if p.passed else "NO") for p in report.pairs]
    click.echo(render(("conv", "input", "ours", "torch", "ours-torch", "ok"), rows,
                      right=("input", "ours", "torch", "ours-torch"), **stream_style(sys.stdout)), nl=False)
    click.echo("ours, torch: relative error ||y - y_fused|| / ||y|| of each pair's BN output on its real input "
               "(fused by yexport, by torch.nn.utils.fusion); ours-torch: the two fused outputs' relative difference")
    for s in report.skipped:
        click.echo(f"skipped {s}")
    shapes = ", ".join(_shape(s) for s in report.inputs)
    click.echo(f"{name}: {len(report.pairs)} Conv+BN pairs (found via {report.method}), seeded input {shapes}")
    worst = report.worst
    if worst is not None:
        failing = [p for p in report.pairs if not p.passed]
        verdict = f"{len(failing)} above" if failing else "all below"
        click.echo(f"worst pair: {worst.conv} {worst.rel_error:.2e} relative error; {verdict} "
                   f"the threshold {report.threshold:.0e}")
        d = report.to_dict()
        click.echo(f"torch fuse_conv_bn_eval: worst {d['max_rel_error_torch']:.2e}; ours vs torch: outputs "
                   f"{d['max_fusions_rel_diff']:.2e} relative (max abs {d['max_fusions_diff']:.2e}), "
                   f"fused weights {d['max_weights_rel_diff']:.2e} relative")
    m = report.model
    if m is not None:
        click.echo(f"whole model, fused ({m.fused_with}) vs unfused: max abs {m.max_abs:.2e}, max rel {m.max_rel:.2e} "
                   f"(where |ref| > {m.atol:g}), rel norm {m.rel_norm:.2e}")
        for o in m.per_output:
            click.echo(f"  output {_shape(o['shape']):>16}: max abs {o['max_abs']:.2e} (max |ref| {o['max_ref']:.3g}), "
                       f"{100 * o['tolerance_used']:.1f}% of tolerance")
        click.echo(f"  |a-b| <= {m.atol:g} + {m.rtol:g}*|ref|: {'within' if m.within_tolerance else 'OUT OF'} tolerance "
                   f"({100 * m.tolerance_used:.1f}% used)")
    click.echo("PASS" if report else "FAIL")
