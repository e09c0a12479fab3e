"""Numerical parity of an ONNX file against its PyTorch model on onnxruntime providers.

One PyTorch reference run per input; one onnxruntime session per provider; per output max abs,
max rel, mean abs, cosine similarity and a pass/fail against ``|onnx - ref| <= atol + rtol * |ref|``.
The provider that really ran is read from the session: a CUDA request that fell back to CPU is
reported as not run, never as a pass.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ConfigError, InputError
from exporter.options import PROVIDER_NAMES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class OutputParity:
    name: str
    shape: list[int]
    max_abs: float
    max_rel: float  # over elements with |ref| > atol (relative error near zero says nothing)
    mean_abs: float
    cosine: float
    atol: float
    rtol: float
    passed: bool
    worst: str = ""  # where the worst element is, e.g. "[0, 1234, 2]"


@dataclass
class CaseParity:
    """One input (shape, index) on one provider."""

    shape: list[int]
    input: str
    outputs: list[OutputParity]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class ProviderParity:
    requested: str
    provider: str  # the onnxruntime provider asked for
    ran: bool
    ran_on: list[str]  # session.get_providers()
    reason: str = ""  # why it did not run
    cases: list[CaseParity] = field(default_factory=list)
    required: bool = False
    divergence: str = ""  # on failure: the first layer whose output differs, when it can be found

    @property
    def passed(self) -> bool | None:
        """True/False when it ran; None when it did not."""
        return all(c.passed for c in self.cases) if self.ran else None

    def worst(self) -> list[OutputParity]:
        """Per output, its worst case (a failure first, else the largest max_abs), for summaries."""
        by_name: dict[str, OutputParity] = {}
        for c in self.cases:
            for o in c.outputs:
                cur = by_name.get(o.name)
                if cur is None or (not o.passed, o.max_abs) > (not cur.passed, cur.max_abs):
                    by_name[o.name] = o
        return list(by_name.values())


@dataclass
class ParityReport:
    """Truthy when every provider that ran passed and every required provider ran."""

    reference: str  # 'eval' or 'train'
    providers: list[ProviderParity]
    inputs: str
    tolerance: str

    @property
    def passed(self) -> bool:
        ran = [p for p in self.providers if p.ran]
        if not ran:
            return False
        if any(p.required and not p.ran for p in self.providers):
            return False
        return all(p.passed for p in ran)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "reference": self.reference, "inputs": self.inputs,
               "tolerance": self.tolerance, "providers": []}
        for p in self.providers:
            d = {"requested": p.requested, "provider": p.provider, "ran": p.ran, "ran_on": p.ran_on,
                 "reason": p.reason, "passed": p.passed, "required": p.required, "divergence": p.divergence,
                 "outputs": [asdict(o) for o in p.worst()],
                 "cases": [{"shape": c.shape, "input": c.input, "passed": c.passed,
                            "outputs": [asdict(o) for o in c.outputs]} for c in p.cases]}
            out["providers"].append(d)
        return out

    def summary(self) -> str:
        """One short cell per provider, e.g. 'cpu: pass (max abs 2.1e-04)' or 'cuda: not available (...)'."""
        cells = []
        for p in self.providers:
            if not p.ran:
                cells.append(f"{p.requested}: not available ({p.reason})")
                continue
            worst = max((o.max_abs for c in p.cases for o in c.outputs), default=0.0)
            cells.append(f"{p.requested}: {'pass' if p.passed else 'FAIL'} (max abs {worst:.1e})")
        return "; ".join(cells)

    def format(self) -> str:
        """A readable table: one row per provider, case and output."""
        lines = [f"parity against PyTorch ({self.reference} reference), {self.inputs}; {self.tolerance}"]
        header = f"  {'provider':<8} {'ran on':<22} {'input':<18} {'output':<8} {'max_abs':>9} {'max_rel':>9} " \
                 f"{'mean_abs':>9} {'cosine':>10}  result"
        lines.append(header)
        for p in self.providers:
            if not p.ran:
                tag = " (required: FAIL)" if p.required else ""
                lines.append(f"  {p.requested:<8} not available: {p.reason}{tag}")
                continue
            for c in p.cases:
                for o in c.outputs:
                    lines.append(f"  {p.requested:<8} {p.ran_on[0]:<22} {'x'.join(map(str, c.shape)):<18} "
                                 f"{o.name:<8} {o.max_abs:>9.2e} {o.max_rel:>9.2e} {o.mean_abs:>9.2e} "
                                 f"{o.cosine:>10.7f}  {'pass' if o.passed else 'FAIL at ' + o.worst}")
            if p.divergence:
                lines.append(f"  {p.requested:<8} {p.divergence}")
        lines.append(f"  => {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def compare(name: str, ref: np.ndarray, out: np.ndarray, atol: float, rtol: float) -> OutputParity:
    """Element-wise comparison as numpy.allclose(out, ref, rtol, atol) does it, with the figures."""
    if ref.shape != out.shape:
        return OutputParity(name, list(out.shape), float("inf"), float("inf"), float("inf"), 0.0, atol, rtol, False,
                            f"shape {list(out.shape)} != reference {list(ref.shape)}")
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = np.abs(out64 - ref64)
    if diff.size == 0:
        return OutputParity(name, list(out.shape), 0.0, 0.0, 0.0, 1.0, atol, rtol, True)
    bad = ~(diff <= atol + rtol * np.abs(ref64))  # NaN counts as bad
    big = np.abs(ref64) > atol
    max_rel = float((diff[big] / np.abs(ref64[big])).max()) if big.any() else 0.0
    denom = np.linalg.norm(ref64) * np.linalg.norm(out64)
    cosine = float(np.dot(ref64.ravel(), out64.ravel()) / denom) if denom else float(np.array_equal(ref64, out64))
    idx = np.unravel_index(int(np.nanargmax(np.where(bad, diff, -1.0) if bad.any() else diff)), diff.shape)
    worst = f"{list(map(int, idx))}: onnx {out64[idx]:.6g} vs torch {ref64[idx]:.6g}"
    return OutputParity(name, list(out.shape), float(np.nanmax(diff)), max_rel, float(diff.mean()), cosine,
                        atol, rtol, not bad.any(), worst)


def reference_model(model, *, head: str = "decode", training: bool = False):
    """A copy of ``model`` configured like an export (Detect output mode), in eval or train mode."""
    from exporter.models.common import Detect

    ref = deepcopy(model).float()
    for m in ref.modules():
        if isinstance(m, Detect):
            m.output, m.int_shapes = head, False
    return ref.train(training)


def _flatten(y: Any) -> list[np.ndarray]:
    import torch

    if isinstance(y, torch.Tensor):
        return [y.detach().float().cpu().numpy()]
    if isinstance(y, (list, tuple)):
        return [a for t in y for a in _flatten(t)]
    raise TypeError(f"cannot compare a model output of type {type(y).__name__}")


def letterbox(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Image -> (3, H, W) float32 in [0, 1], resized keeping aspect ratio and padded with grey."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
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
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--images {d}: no .jpg/.png images found")
    return files


def make_inputs(shapes: list[tuple[int, ...]], n: int, seed: int, images: str | None) -> list[tuple[str, np.ndarray]]:
    """(label, array) inputs: ``n`` per shape, seeded synthetic images or letterboxed real ones."""
    from exporter.models.weights import synthetic_images

    files = image_files(images) if images else []
    out = []
    for shape in shapes:
        b, _, h, w = shape
        for k in range(n):
            if files:
                batch = [letterbox(files[(k * b + j) % len(files)], (h, w)) for j in range(b)]
                names = ",".join(files[(k * b + j) % len(files)].name for j in range(b))
                out.append((names, np.stack(batch)))
            else:
                out.append((f"synthetic seed {seed + k}", synthetic_images(b, (h, w), seed + k).numpy()))
    return out


@contextlib.contextmanager
def _captured_stderr():
    """Capture what native code prints on file descriptor 2 (onnxruntime's provider errors)."""
    buf: dict[str, str] = {"text": ""}
    try:
        saved = os.dup(2)
    except OSError:
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf["text"] = tmp.read().decode("utf-8", "replace")


def open_session(model_bytes: bytes, requested: str) -> tuple[Any, ProviderParity]:
    """An onnxruntime session for provider ``requested`` ('cpu', 'cuda', 'tensorrt') and what ran."""
    import onnxruntime as ort

    provider = PROVIDER_NAMES[requested]
    result = ProviderParity(requested, provider, False, [])
    available = ort.get_available_providers()
    if provider not in available:
        result.reason = f"this onnxruntime build has no {provider} (installed: {', '.join(available)})"
        return None, result
    so = ort.SessionOptions()
    so.log_severity_level = 3
    chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    with _captured_stderr() as err:
        try:
            sess = ort.InferenceSession(model_bytes, sess_options=so, providers=chain)
        except Exception as exc:  # onnxruntime raises its own exception types
            sess, result.reason = None, f"session failed: {str(exc).splitlines()[0]}"
    if sess is None:
        return None, result
    result.ran_on = sess.get_providers()
    result.ran = result.ran_on[:1] == [provider]
    if not result.ran:
        why = _fallback_reason(err["text"])
        result.reason = f"{provider} is listed but the session fell back to {result.ran_on[0]}" + (f" ({why})" if why else "")
    return sess, result


def _fallback_reason(log: str) -> str:
    """The useful part of onnxruntime's provider error log, without local paths."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    parts = []
    m = re.search(r"with error: ([^\n]+)", text)
    if m:
        parts.append(m.group(1).strip())
    m = re.search(r"(Require [^\n]+?)\. Please", text)
    if m:
        parts.append(m.group(1).strip())
    return "; ".join(re.sub(r"/\S+/", "", p) for p in parts)[:240]


@dataclass
class Reference:
    """Inputs and the PyTorch outputs for them: computed once, compared with any number of graphs."""

    cases: list[tuple[str, np.ndarray]]
    outputs: list[list[np.ndarray]]
    mode: str  # 'eval' | 'train'
    description: str
    head: str = "decode"


def reference_outputs(model: Any, shapes: list[tuple[int, ...]], *, inputs: int = 1, images: str | None = None,
                      training: bool = False, head: str = "decode", seed: int = 0, device: str = "cpu") -> Reference:
    """One PyTorch forward per input (a train-mode forward on a copy for training-mode files)."""
    import torch

    ref_model = reference_model(model, head=head, training=training).to(torch.device(device))
    cases = make_inputs(shapes, inputs, seed, images)
    with torch.no_grad():
        outs = [_flatten(ref_model(torch.from_numpy(x).to(device))) for _, x in cases]
    desc = (f"{len(cases)} input(s) at {', '.join('x'.join(map(str, s)) for s in shapes)}"
            + (f" from {images}" if images else " (seeded synthetic images)"))
    return Reference(cases, outs, "train" if training else "eval", desc, head)


def compare_with(onnx_model: Any, ref: Reference, *, providers: tuple[str, ...] | list[str] = ("cpu",),
                 require: tuple[str, ...] | list[str] = (), atol: float = 1e-3, rtol: float = 1e-3,
                 output_atol: dict[str, float] | None = None, model: Any = None) -> ParityReport:
    """Run ``onnx_model`` on each provider for every reference input and compare. With ``model`` (the
    PyTorch model of ``ref``), a failing provider also names the first diverging layer."""
    import onnx

    data = _as_bytes(onnx_model)
    proto = onnx.load_from_string(data)
    output_atol = output_atol or {}
    out_names = [o.name for o in proto.graph.output]
    unknown = sorted(set(output_atol) - set(out_names))
    if unknown:
        raise ConfigError(f"--atol {unknown[0]}=...: the file has no output {unknown[0]!r} "
                          f"(outputs: {', '.join(out_names)})")
    tol = f"|onnx - torch| <= {atol:g} + {rtol:g} * |torch|"
    if output_atol:
        tol += f" ({', '.join(f'{k}: atol {v:g}' for k, v in output_atol.items())})"
    report = ParityReport(ref.mode, [], ref.description, tol)
    input_name = proto.graph.input[0].name
    for requested in dict.fromkeys([*providers, *require]):
        sess, result = open_session(data, requested)
        result.required = requested in require
        report.providers.append(result)
        if sess is None or not result.ran:
            continue
        for (label, x), expected in zip(ref.cases, ref.outputs, strict=True):
            try:
                outs = sess.run(None, {input_name: x})
            except Exception as exc:  # onnxruntime's InvalidArgument and friends
                dims = [d.dim_value or d.dim_param or "?" for d in proto.graph.input[0].type.tensor_type.shape.dim]
                raise InputError(f"input {'x'.join(map(str, x.shape))} does not fit the file's input {dims}: "
                                 f"{str(exc).splitlines()[0][:160]}") from None
            if len(outs) != len(expected):
                raise InputError(f"the ONNX file has {len(outs)} outputs but the model gives {len(expected)}: "
                                 "is it the model this file was exported from?")
            result.cases.append(CaseParity(list(x.shape), label, [
                compare(n, r, o, output_atol.get(n, atol), rtol)
                for n, r, o in zip(out_names, expected, outs, strict=True)
            ]))
        failing = next((i for i, c in enumerate(result.cases) if not c.passed), None)
        if failing is not None and model is not None:
            from exporter.divergence import locate

            found = locate(proto, model, ref.cases[failing][1], atol=atol, rtol=rtol, provider=result.provider,
                           training=ref.mode == "train", head=ref.head)
            result.divergence = str(found)
    return report


def check_parity(
    onnx_model: Any,
    model: Any,
    *,
    providers: tuple[str, ...] | list[str] = ("cpu",),
    require: tuple[str, ...] | list[str] = (),
    shapes: list[tuple[int, ...]] | None = None,
    inputs: int = 1,
    images: str | None = None,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    output_atol: dict[str, float] | None = None,
    training: bool | None = None,
    head: str | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> ParityReport:
    """Compare ``onnx_model`` (path, bytes or ModelProto) with the PyTorch ``model``.

    ``training``/``head``/``shapes`` default to what the file's yexport metadata says (a training-mode
    file is compared with a train-mode forward on a copy). Returns a :class:`ParityReport` (truthy on pass).
    """
    import onnx

    data = _as_bytes(onnx_model)
    proto = onnx.load_from_string(data)
    meta = {p.key: p.value for p in proto.metadata_props}
    if training is None:
        training = meta.get("yexport.training") == "1"
    if head is None:
        head = meta.get("yexport.head", "decode")
    ref = reference_outputs(model, shapes or default_shapes(proto), inputs=inputs, images=images,
                            training=training, head=head, seed=seed, device=device)
    return compare_with(data, ref, providers=providers, require=require, atol=atol, rtol=rtol,
                        output_atol=output_atol, model=model)


def default_shapes(proto: Any) -> list[tuple[int, ...]]:
    """Input shapes to check: the static shape, or three shapes along the dynamic axes."""
    meta = {p.key: p.value for p in proto.metadata_props}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    img = [int(v) for v in meta.get("yexport.img", "640,640").split(",")]
    stride = max([int(s) for s in meta.get("yexport.stride", "32").strip("[]").split(",") if s.strip()] + [32])
    b = fixed[0] or 1
    h = fixed[2] or img[0]
    w = fixed[3] or img[-1]
    if None not in fixed:
        return [tuple(fixed)]  # type: ignore[arg-type]
    batches = [1, 2, 4] if fixed[0] is None else [b]
    if fixed[2] is None or fixed[3] is None:
        def snap(v: int) -> int:
            return max(stride, v // stride * stride)
        sizes = [(h, w), (snap(h // 2), snap(w // 2)), (snap(h // 2 + stride), snap(w * 3 // 4))]
        return [(bb, 3, sh, sw) for bb, (sh, sw) in zip([1, 2, 1] if fixed[0] is None else [b] * 3, sizes, strict=True)]
    return [(bb, 3, h, w) for bb in batches]


def _as_bytes(model: Any) -> bytes:
    if isinstance(model, bytes):
        return model
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        from exporter.graph.load import load_onnx

        return load_onnx(p, load_weights=True).SerializeToString()
    return model.SerializeToString()
