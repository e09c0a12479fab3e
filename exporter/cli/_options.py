"""Options shared by the commands that take a MODEL (a built-in name, a YAML config or a checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def model_options(f: F) -> F:
    """Adds --cfg, --nc, --seed and --trust-checkpoint."""
    for opt in reversed([
        click.option("--cfg", type=click.Path(dir_okay=False), default=None,
                     help="YAML config for a plain state_dict checkpoint."),
        click.option("--nc", type=click.IntRange(min=1), default=None, help="Override the number of classes."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the synthetic weights given to models built from a config."),
        click.option("--trust-checkpoint", is_flag=True, default=False,
                     help="Fully unpickle the checkpoint (runs any code it names). Only for files you trust."),
    ]):
        f = opt(f)
    return f


def load_from_cli(model: str, cfg: str | None, nc: int | None, seed: int, trust_checkpoint: bool):
    """Load MODEL as the CLI options describe (returns :class:`exporter.models.LoadedModel`)."""
    from exporter.models import load_model

    return load_model(model, cfg=cfg, nc=nc, seed=seed, trust_checkpoint=trust_checkpoint)


class ImageSize(click.ParamType):
    """``--img 640`` (square) or ``--img 640,480`` / ``--img 640x480`` (height, width)."""

    name = "H[,W]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().replace("x", ",").split(",")
        try:
            sizes = [int(p) for p in parts if p.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a size: give H or H,W (e.g. 640 or 640,480)", param, ctx)
        if len(sizes) not in (1, 2) or min(sizes) < 32:
            self.fail(f"{value!r}: give one or two sizes of at least 32 (H or H,W)", param, ctx)
        return (sizes[0], sizes[-1])


IMG = ImageSize()
