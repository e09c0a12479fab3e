"""Parity inputs: the shapes to check and the images to check them on (never the capture example)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_IMAGE_BYTES = 64 << 20  # a larger file is refused before it is decoded
MAX_IMAGE_PIXELS = 64_000_000
# The capture example is synthetic_images(batch, size, seed) (stages/prepare.py); parity inputs use other
# seeds, so a value the tracer baked in from the example shows up as a difference.
INPUT_SEED_OFFSET = 1000


def letterbox(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Image -> (3, H, W) float32 in [0, 1], resized keeping aspect ratio and padded with grey."""
    from PIL import Image, UnidentifiedImageError

    try:
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise InputError(f"{path}: larger than {MAX_IMAGE_BYTES >> 20} MiB; give smaller images")
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: {im.width}x{im.height} pixels is more than this check reads "
                                 f"({MAX_IMAGE_PIXELS:,}); give smaller images")
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image: {exc}") from None
    h, w = size
    r = min(h / img.height, w / img.width)
    nw, nh = max(1, round(img.width * r)), max(1, round(img.height * r))
    canvas = Image.new("RGB", (w, h), (114, 114, 114))
    canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255.0


def image_files(folder: str | Path) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"--images {d}: not a directory of JPEG/PNG images")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"--images {d}: no .jpg/.png images found")
    return files


def default_count(shapes: list[tuple[int, ...]], images: str | None) -> int:
    """Inputs per shape when the user gave no --inputs: every image; else 2 synthetic ones for one shape
    and one per shape for several (dynamic axes are checked at 3 shapes)."""
    if images:
        return len(image_files(images))
    return 2 if len(shapes) == 1 else 1


def make_inputs(shapes: list[tuple[int, ...]], n: int | None, seed: int, images: str | None) -> list[tuple[str, np.ndarray]]:
    """(label, array) inputs: ``n`` per shape, seeded synthetic images or letterboxed real ones."""
    from exporter.models.weights import synthetic_images

    if n is None:
        n = default_count(shapes, images)
    if n < 1:
        raise InputError("parity needs at least one input (inputs >= 1)")
    files = image_files(images) if images else []
    out = []
    for shape in shapes:
        if len(shape) != 4 or shape[1] != 3:
            if files:
                raise InputError(f"--images: the file's input is {list(shape)}, not an image batch (Bx3xHxW)")
            rng = np.random.default_rng(seed + INPUT_SEED_OFFSET)
            for k in range(n):
                out.append((f"random seed {seed + INPUT_SEED_OFFSET + k}", rng.random(shape, dtype=np.float32)))
            continue
        b, _, h, w = shape
        for k in range(n):
            if files:
                picked = [files[(k * b + j) % len(files)] for j in range(b)]
                out.append((",".join(p.name for p in picked), np.stack([letterbox(p, (h, w)) for p in picked])))
            else:
                s = seed + INPUT_SEED_OFFSET + k
                out.append((f"synthetic seed {s}", synthetic_images(b, (h, w), s).numpy()))
    return out


def _stride_of(meta: dict[str, str]) -> int:
    try:
        strides = [int(s) for s in meta.get("yexport.stride", "").strip("[]").split(",") if s.strip()]
    except ValueError:
        strides = []
    return max(strides, default=32)


def default_shapes(proto: Any) -> list[tuple[int, ...]]:
    """Input shapes to check: the static shape, or three shapes along the dynamic axes (sizes that are
    multiples of the model's largest stride, read from the file's metadata)."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if not proto.graph.input:
        raise InputError("the file has no graph input to feed")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if None not in fixed:
        return [tuple(fixed)]  # type: ignore[arg-type]
    if len(fixed) != 4:
        raise InputError(f"the file's input has dynamic dimensions {[d.dim_param or '?' for d in dims]}: "
                         "give the shapes to check with --shapes")
    try:
        img = [int(v) for v in meta.get("yexport.img", "640,640").split(",")]
    except ValueError:
        img = [640, 640]
    stride = _stride_of(meta)
    b = fixed[0] or 1
    h = fixed[2] or img[0]
    w = fixed[3] or img[-1]
    if fixed[2] is None or fixed[3] is None:
        def snap(v: int) -> int:
            return max(stride, v // stride * stride)
        sizes = [(h, w), (snap(h // 2), snap(w // 2)), (snap(h // 2 + stride), snap(w * 3 // 4))]
        batches = [1, 2, 1] if fixed[0] is None else [b] * 3
        return [(bb, fixed[1] or 3, sh, sw) for bb, (sh, sw) in zip(batches, sizes, strict=True)]
    return [(bb, fixed[1] or 3, h, w) for bb in [1, 2, 4]]
