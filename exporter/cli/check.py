"""``yexport check``: parity of an ONNX file against its PyTorch model."""

from __future__ import annotations

import json
from typing import Any

import click

from exporter.cli._help import Command
from exporter.cli._options import load_from_cli, model_options, parity_options, split_list, values_from
from exporter.options import ParityOptions


def _parse_shapes(value: str | None) -> list[tuple[int, ...]] | None:
    if not value:
        return None
    shapes: list[tuple[int, ...]] = []
    for part in split_list(value):
        try:
            dims = tuple(int(d) for d in part.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"{part!r}: write shapes as BxCxHxW, e.g. 1x3x640x640", param_hint="--shapes") from None
        if len(dims) != 4 or min(dims) < 1:
            raise click.BadParameter(f"{part!r}: a shape has four positive sizes (BxCxHxW)", param_hint="--shapes")
        shapes.append(dims)
    return shapes


def _against_from_metadata(path: str) -> str | None:
    """The model a yexport file was made from, when that can be rebuilt here (a built-in or a file)."""
    from pathlib import Path

    from exporter.graph.load import load_onnx

    meta = {p.key: p.value for p in load_onnx(path).metadata_props}
    kind, _, src = meta.get("yexport.source", "").partition(":")
    if kind == "builtin" or (kind in ("yaml", "checkpoint", "state_dict") and Path(src).exists()):
        return src
    return None


EXAMPLES = (
    "yexport check exports/yolov5s.onnx                   # reference rebuilt from the file's metadata",
    'yexport check model.onnx --against my.pt --providers cpu,cuda --require cuda',
    'yexport check model.onnx --against yolov5s --images photos/ --repeat 3',
    'yexport check model.onnx --against yolov5s --atol output0=1e-2',
)


@click.command("check", cls=Command, examples=EXAMPLES, sections={'Checked inputs': ('shapes', 'device', 'repeat', 'sources', 'strict')},
               short_help='Check an ONNX file against its PyTorch model (parity).')
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--against", default=None, metavar="MODEL",
              help="The PyTorch model (built-in name, YAML or checkpoint). Default: the model named in the "
                   "file's yexport metadata.")
@parity_options
@click.option("--shapes", default=None, metavar="BxCxHxW,...",
              help="Input shapes to check (default: the file's static shape, or 3 shapes for dynamic axes).")
@click.option("--device", default="cpu", show_default=True,
              help="Device of the PyTorch fp32 reference (the float64 truth always runs on the CPU).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run each provider N times on the first input and report the run-to-run spread "
                   "(0 on a deterministic provider).")
@click.option("--sources", is_flag=True,
              help="For a fused file, measure the capture (ONNX vs the fused module) and fusion (fused vs "
                   "unfused PyTorch) figures on a pass too; a failing check always measures them.")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(file: str, against: str | None, shapes: str | None, device: str, repeat: int, sources: bool,
          cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool, as_json: bool, **flags: Any) -> None:
    """Check FILE.onnx against its PyTorch model on onnxruntime providers.

    The truth is the model's float64 forward; the file passes when its error against it stays within a
    few times PyTorch fp32's own (per output and, for decoded YOLO boxes, per column group). The reference
    (eval, or train mode for a --training-mode file) and the Detect output come from the file's metadata.
    Exit status: 0 all pass, 1 a parity failure (or onnxruntime failed running the file), 2 a usage or
    input error.
    """
    from exporter.errors import ConfigError
    from exporter.parity import check_parity

    parity = ParityOptions(**values_from(ParityOptions, flags)).validate()
    target = against or _against_from_metadata(file)
    if target is None:
        raise ConfigError(f"{file}: no model to compare with: give --against MODEL")
    source = load_from_cli(target, cfg, nc, seed, trust_checkpoint)
    report = check_parity(file, source.model, **parity.as_kwargs(), shapes=_parse_shapes(shapes), seed=seed,
                          device=device, repeat=repeat, sources=True if sources else None)
    if as_json:
        click.echo(json.dumps({"file": file, "against": target, **report.to_dict()}, indent=2))
    else:
        click.echo(f"{file} against {target}")
        click.echo(report.format())
    if not report:
        raise SystemExit(1)
