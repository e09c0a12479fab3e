"""Deterministic, realistic weights for built models, so fusion and parity checks mean something.

With default BatchNorm statistics (mean 0, var 1, gamma 1, beta 0) fused and unfused graphs agree
trivially. ``calibrate`` gives every BatchNorm non-trivial affine parameters and real running
statistics, measured by train-mode forward passes over seeded synthetic images.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Bumped whenever ``calibrate`` changes what it gives: a cache of built-in weights keys on it.
CALIBRATION_VERSION = 2


def synthetic_images(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Seeded images in [0, 1] with structure at several scales (not white noise), each with a
    photo-like level and contrast (per-channel mean 0.45, std 0.22), so that images differ in
    content rather than in global colour."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.zeros(n, 3, h, w)
    for cells in (2, 8, 32):
        coarse = torch.rand(n, 3, cells, cells, generator=g)
        img += nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    flat = img.flatten(2)
    img = (img - flat.mean(2)[..., None, None]) / (flat.std(2)[..., None, None] + 1e-6)
    return (img * 0.22 + 0.45).clamp_(0, 1)


@torch.no_grad()
def calibrate(model: nn.Module, seed: int = 0, batch: int = 16, size: int = 256) -> nn.Module:
    """Give ``model`` seeded BatchNorm affine parameters and running statistics; returns it in eval mode.

    The statistics are measured in one eval-mode forward pass over seeded synthetic images: just
    before each BatchNorm runs, its running mean and variance are set to those of its actual input.
    Every layer then sees inputs normalised by the statistics the eval model really uses (train-mode
    passes over small batches underestimate the variance between images, and the error compounds
    with depth), so activations stay at the O(1) scale of a trained network.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def set_stats(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].transpose(0, 1).flatten(1)
        bn.running_mean.copy_(x.mean(1))  # type: ignore[operator]
        bn.running_var.copy_(x.var(1, unbiased=False))  # type: ignore[operator]

    for bn in bns:
        # gamma in [0.5, 1.5), spread around 1 as trained detectors' are. Gammas above 1 make a random
        # network amplify fp32 rounding more; the parity check measures that noise floor instead of
        # assuming it away, so the weights are not chosen to keep any tolerance green.
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
        bn.num_batches_tracked.zero_()  # type: ignore[union-attr]
    hooks = [bn.register_forward_pre_hook(set_stats) for bn in bns]
    try:
        model.eval()
        model(synthetic_images(batch, (size, size), seed))
    finally:
        for h in hooks:
            h.remove()
    return model


# ------------------------------------------------------------------------------- calibration cache
#
# ``calibrate`` costs seconds (one forward over 16 images at 256). What it gives depends only on the
# model's structure and its seeded initial weights (config, ``nc``, seed), on the code
# (``CALIBRATION_VERSION``) and, in its last bits, on torch: the cache keys on all of these. Only the
# BatchNorm state is stored; everything else comes from the seeded init, as without the cache.

CACHE_MAX_BYTES = 64 << 20  # far above any YOLOv5 size (yolov5x: ~1 MB); a bigger file is not ours


def cache_dir() -> Path | None:
    """Where calibrated BatchNorm state is cached: ``$YEXPORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/yexport``,
    else ``~/.cache/yexport``; None when ``YEXPORT_NO_CACHE=1`` (or no home folder is known)."""
    if os.environ.get("YEXPORT_NO_CACHE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    explicit = os.environ.get("YEXPORT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "yexport"
    try:
        return Path.home() / ".cache" / "yexport"
    except RuntimeError:  # no home folder
        return None


def cache_key(config_sha256: str, seed: int, nc: int | None = None) -> str:
    """The cache file name for a config (sha256 of its text), seed and ``nc`` override."""
    tv = re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)
    return f"bn-{config_sha256[:32]}-s{int(seed)}-nc{'' if nc is None else int(nc)}-v{CALIBRATION_VERSION}-t{tv}.npz"


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``calibrate`` sets: every BatchNorm's weight, bias, running mean/var and batch counter."""
    out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            for k, t in (("weight", m.weight), ("bias", m.bias), ("running_mean", m.running_mean),
                         ("running_var", m.running_var), ("num_batches_tracked", m.num_batches_tracked)):
                if t is not None:
                    out[f"{name}.{k}"] = t
    return out


def _read_cached(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The cached arrays when the file is a sound cache for exactly these tensors, else None."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > CACHE_MAX_BYTES:
            return None
        with np.load(path, allow_pickle=False) as npz:
            if set(npz.files) != set(expected):
                return None
            arrays = {k: npz[k] for k in npz.files}
    except Exception:  # missing, unreadable, truncated, not a zip, a pickle: all mean "calibrate"
        return None
    for k, t in expected.items():
        a = arrays[k]
        if a.shape != tuple(t.shape) or a.dtype != _NUMPY_DTYPES.get(t.dtype):
            return None
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return None
    return arrays


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                 torch.int64: np.dtype(np.int64)}


@torch.no_grad()
def calibrate_cached(model: nn.Module, config_sha256: str, seed: int = 0, nc: int | None = None) -> tuple[nn.Module, str]:
    """:func:`calibrate` with its result cached on disk (see :func:`cache_dir`); returns the model (in
    eval mode) and how the statistics were obtained: 'cached', 'calibrated' or 'calibrated (cache
    off|not writable)'. A missing, corrupt or mismatching cache file is recalibrated and replaced; a
    folder that cannot be written just means calibrating each time. Bit-identical to :func:`calibrate`."""
    folder = cache_dir()
    if folder is None:
        return calibrate(model, seed=seed), "calibrated (cache off)"
    path = folder / cache_key(config_sha256, seed, nc)
    expected = bn_state(model)
    if any(t.dtype not in _NUMPY_DTYPES for t in expected.values()):
        return calibrate(model, seed=seed), "calibrated (cache off)"
    arrays = _read_cached(path, expected)
    if arrays is not None:
        for k, t in expected.items():
            t.copy_(torch.from_numpy(arrays[k]))
        return model.eval(), "cached"
    calibrate(model, seed=seed)
    buf = io.BytesIO()
    state: dict[str, Any] = {k: t.detach().cpu().numpy() for k, t in bn_state(model).items()}
    np.savez(buf, **state)
    try:
        from exporter.io import atomic_write

        atomic_write(path, buf.getvalue())
    except OSError:  # read-only, full, permission denied, a file where the folder should be
        return model, "calibrated (cache not writable)"
    return model, "calibrated"
