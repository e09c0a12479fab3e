"""Parity inputs: the shapes to check and the images to check them on (never the capture example)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import InputError
from exporter.options import InputSpec

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


def shape_text(shape: Any) -> str:
    """1x3x640x640; a set of several inputs as 1x16:int64+1x16:bool."""
    if shape and isinstance(shape[0], InputSpec):
        return "+".join("x".join(map(str, sp.shape)) + ("" if sp.dtype == "float32" else f":{sp.dtype}")
                        for sp in shape)
    return "x".join(map(str, shape))


def _spec_inputs(specs: tuple[InputSpec, ...], n: int, seed: int, files: list[Path]) -> list[tuple[str, Any]]:
    """``n`` seeded input sets for a model with several or non-float inputs: synthetic (or --images)
    images for Bx3xHxW float inputs, uniform [0, 1) for other float ones, integers in [0, high), booleans."""
    from exporter.models.weights import synthetic_images

    out: list[tuple[str, Any]] = []
    for k in range(n):
        s = seed + INPUT_SEED_OFFSET + k
        rng = np.random.default_rng(s)
        arrays = []
        for sp in specs:
            if sp.is_image and files:
                b = sp.shape[0]
                arrays.append(np.stack([letterbox(files[(k * b + j) % len(files)], (sp.shape[2], sp.shape[3]))
                                        for j in range(b)]).astype(sp.dtype))
            elif sp.is_image:
                arrays.append(synthetic_images(sp.shape[0], (sp.shape[2], sp.shape[3]), s).numpy().astype(sp.dtype))
            elif sp.is_float:
                arrays.append(rng.random(sp.shape, dtype=np.float64).astype(sp.dtype))
            elif sp.dtype == "bool":
                arrays.append(rng.integers(0, 2, sp.shape).astype(bool))
            else:
                arrays.append(rng.integers(0, sp.high, sp.shape).astype(sp.dtype))
        out.append((f"seeded {'images' if files else 'inputs'} {s}", tuple(arrays)))
    return out


def make_inputs(shapes: list[Any], n: int | None, seed: int, images: str | None) -> list[tuple[str, Any]]:
    """(label, array) inputs: ``n`` per shape, seeded synthetic images or letterboxed real ones. A shape
    that is a tuple of :class:`InputSpec` (a model with several or non-float inputs) gives (label, tuple of
    arrays), one per input."""
    from exporter.models.weights import synthetic_images

    if n is None:
        n = default_count(shapes, images)
    if n < 1:
        raise InputError("parity needs at least one input (inputs >= 1)")
    files = image_files(images) if images else []
    out = []
    for shape in shapes:
        if shape and isinstance(shape[0], InputSpec):
            if files and not any(sp.is_image for sp in shape):
                raise InputError(f"--images: the file's inputs are {shape_text(shape)}, not an image batch (Bx3xHxW)")
            out += _spec_inputs(tuple(shape), n, seed, files)
            continue
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
    if "yexport.inputs" in meta:
        return input_sets(proto, meta["yexport.inputs"])
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


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def input_sets(proto: Any, recorded: str) -> list[Any]:
    """Input sets to check for a file exported with ``--input-shape`` (``yexport.inputs``: name, example
    shape, dtype, integer bound per input): the example shapes, and for dynamic axes two more sets
    with the batch at 2 and other dynamic sizes at three quarters (at least 1)."""
    import json

    try:
        rows = {r["name"]: r for r in json.loads(recorded)}
    except (ValueError, TypeError, KeyError):
        rows = {}
    specs: list[InputSpec] = []
    dyn: list[list[int]] = []
    for i in proto.graph.input:
        t = i.type.tensor_type
        dims = list(t.shape.dim)
        row = rows.get(i.name, {})
        example = [int(v) for v in row.get("shape", [])] if len(row.get("shape", [])) == len(dims) else []
        fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
        if not example and None in fixed:
            raise InputError(f"input {i.name!r} has dynamic dimensions and no recorded example shape: give "
                             "--shapes")
        shape = tuple(f if f is not None else e for f, e in zip(fixed, example or fixed, strict=True))
        dtype = row.get("dtype") or _ONNX_DTYPES.get(t.elem_type, "float32")
        specs.append(InputSpec(shape, dtype, int(row.get("high", 2)) or 2))  # type: ignore[arg-type]
        dyn.append([k for k, f in enumerate(fixed) if f is None])
    if not specs:
        raise InputError("the file has no graph input to feed")
    sets: list[Any] = [tuple(specs)]
    if any(dyn):
        for batch, scale in ((2, 1.0), (1, 0.75)):  # batch 2; then the other dynamic sizes smaller
            moved = []
            for sp, axes in zip(specs, dyn, strict=True):
                resized = list(sp.shape)
                for a in axes:
                    resized[a] = batch if a == 0 else max(1, int(resized[a] * scale))
                moved.append(InputSpec(tuple(resized), sp.dtype, sp.high))
            sets.append(tuple(moved))
    return sets
