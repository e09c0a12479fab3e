"""``yexport info``: model summary."""

from __future__ import annotations

import json
import sys

import click

from exporter.cli._help import Command
from exporter.cli._options import IMG, input_shape_option, input_shapes_from_cli, load_from_cli, model_options


def _list_models() -> None:
    from exporter.models.zoo import builtin_names, builtin_path, read_config
    from exporter.tables import render, stream_style

    rows = []
    for name in builtin_names():
        path = builtin_path(name)
        assert path is not None
        cfg = read_config(path)
        gen = "v5.0" if any(row[2] == "Focus" for row in cfg.get("backbone", [])) else "v6+"
        rows.append((name, gen, len(cfg["anchors"]), cfg.get("depth_multiple", 1), cfg.get("width_multiple", 1),
                     path.name))
    click.echo(render(("name", "generation", "levels", "depth", "width", "config"), rows,
                      right=("levels", "depth", "width"), **stream_style(sys.stdout)), nl=False)

EXAMPLES = (
    'yexport info yolov5s --img 640',
    'yexport info yolov5s --verbose       # plus the per-layer table',
    'yexport info --list                  # the built-in models',
    'yexport info my.pt --json',
)


def _one_thread() -> None:
    """The quick summary runs two small forwards (the stride probe and the stride-sized FLOP count): one
    thread does them as fast, while idle OpenMP workers spinning on a busy machine cost seconds. The
    thread count is restored when the command ends."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    click.get_current_context().call_on_close(lambda: torch.set_num_threads(threads))


@click.command("info", cls=Command, examples=EXAMPLES,
               short_help='Model summary: layers, parameters, GFLOPs, strides, anchors.')
@click.argument("model", required=False, default="yolov5s")
@model_options
@click.option("--img", "--imgsz", "img", type=IMG, default="640", show_default=True,
              help="Image size H or H,W for GFLOPs and output shapes.")
@click.option("--exact", is_flag=True,
              help="Also count FLOPs exactly with one forward at full size (torch.utils.flop_counter; slower).")
@input_shape_option
@click.option("--verbose", "-v", is_flag=True, help="Print the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--list", "list_models", is_flag=True, help="List the built-in model names and exit.")
def info(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, img: tuple[int, int],
         exact: bool, verbose: bool, as_json: bool, list_models: bool) -> None:
    """Summarize MODEL (a built-in name, a YAML config or a checkpoint; default yolov5s): layers,
    parameters, GFLOPs (stride method; exact with --exact), strides, anchors, output shapes."""
    if list_models:
        _list_models()
        return
    from exporter.analysis.summary import summarize

    if not exact:
        _one_thread()
    lm = load_from_cli(model, cfg, nc, seed, trust_checkpoint)
    from exporter.analysis.generic import is_yolo

    if not is_yolo(lm.model):  # any other nn.Module: exact FLOPs at the example inputs, no stride method
        _info_module(lm, img, seed, as_json)
        return
    s = summarize(lm.model, img, exact=exact)
    rows = s.pop("layer_rows")
    if as_json:
        # "layers" is the per-layer table in JSON; the module count is "modules"
        click.echo(json.dumps({"model": lm.describe(), **s, "modules": s["layers"], "layers": rows}, indent=2))
        return
    if verbose:
        from exporter.tables import render, stream_style

        table = [(r["index"], str(r["from"]), r["n"], f"{r['params']:,}", r["module"], str(r["arguments"])) for r in rows]
        click.echo(render(("", "from", "n", "params", "module", "arguments"), table, right=("", "from", "n", "params"),
                          **stream_style(sys.stdout)), nl=False)
    h, w = s["img"]
    click.echo(f"{lm.name} ({lm.kind}, {s.get('nc', '?')} classes, weights: {lm.weights})")
    click.echo(f"summary: {s['layers']} layers, {s['parameters']:,} parameters, {s['gradients']:,} gradients, "
               f"{s['gflops']:.1f} GFLOPs at {h}x{w}")
    click.echo(f"fused: {s['parameters_fused']:,} parameters ({s['batchnorm_layers']} BatchNorm2d layers folded)")
    exact_text = f"{s['gflops_exact']:.2f} exact at {h}x{w}" if "gflops_exact" in s else "exact count: --exact"
    click.echo(f"GFLOPs: {s['gflops']:.2f} ({s['gflops_method']}); {exact_text}")
    if "strides" in s:
        click.echo(f"strides: {s['strides']}")
        for st, a in zip(s["strides"], s["anchors"], strict=True):
            click.echo(f"anchors P{st.bit_length() - 1}/{st}: {' '.join(f'{w}x{h}' for w, h in a)}")
    outs = s.get("outputs")
    if isinstance(outs, dict):
        click.echo(f"outputs: decoded {outs['decoded']}; raw {outs['raw']}")
    elif outs is not None:
        click.echo(f"outputs: {outs}")


def _info_module(lm, img: tuple[int, int], seed: int, as_json: bool) -> None:
    """``info`` for a model that is not YOLO (exporter.analysis.generic)."""
    from exporter.analysis.generic import example_specs, format_summary, summarize_module

    s = summarize_module(lm.model, example_specs(input_shapes_from_cli(), img), seed=seed)
    if as_json:
        click.echo(json.dumps({"model": lm.describe(), **s}, indent=2))
        return
    for line in format_summary(lm.name, lm.kind, lm.weights, s):
        click.echo(line)
