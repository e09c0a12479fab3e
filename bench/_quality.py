"""Section 2, graph quality: node and op counts, file size and onnxruntime latency per variant."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import log, stats

# (label, variant name for exporter.options.variant_options)
VARIANTS: tuple[tuple[str, str], ...] = (
    ("fused (default)", "fused"),
    ("keep-bn", "keep-bn"),
    ("fused+simplify", "simplify"),
    ("int-shapes", "int-shapes"),
    ("dynamic (batch)", "dynamic"),
    ("dynamic+int-shapes", "dynamic+int-shapes"),
    ("dynamic-all", "dynamic-all"),
    ("dynamic-all+simplify", "dynamic-all+simplify"),
)
DEFAULT = "fused"

# The official YOLOv5 export.py at 640: recorded node counts, not measured here (section 5 measures the
# official whole command when OFFICIAL_REPO and OFFICIAL_PYTHON are given): its --dynamic makes batch,
# height and width dynamic, like our dynamic-all.
OFFICIAL: dict[str, dict[str, dict[str, int]]] = {
    "yolov5s": {
        "fused": {"nodes": 263},
        "simplify": {"nodes": 236},
        "dynamic-all": {"nodes": 524, "Shape": 21, "Gather": 9},
        "dynamic-all+simplify": {"nodes": 329},
    },
}


def graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    return {"nodes": len(m.graph.node), "BatchNormalization": ops["BatchNormalization"], "Shape": ops["Shape"],
            "Gather": ops["Gather"], "bytes": path.stat().st_size, "path": str(path)}


def export_variants(name: str, src: Any, out_dir: Path, reuse: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """One file per variant (parity not checked here: section 1 checks the default); files in
    ``reuse`` (variant -> path) are taken as they are."""
    from exporter.api import export_one
    from exporter.options import ExportOptions, variant_options

    base = ExportOptions(check=False)
    out: dict[str, dict[str, Any]] = {}
    for _, v in VARIANTS:
        path = reuse.get(v)
        try:
            if path is None or not path.is_file():
                log(f"graph quality: export {name} {v}")
                path = out_dir / f"{name}-{v}.onnx"
                res = export_one(src, variant_options(base, v), path, v)
                if res.failures:
                    out[v] = {"error": "; ".join(res.failures), **graph_facts(res.path)}
                    continue
            out[v] = graph_facts(path)
        except Exception as exc:  # one broken variant must not hide the others
            out[v] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return out


def latency(paths: dict[str, Path], *, runs: int, warmup: int, threads: int,
            provider: str = "CPUExecutionProvider") -> dict[str, dict[str, Any]]:
    """Median onnxruntime latency (ms) of each file on one fixed 1x3x640x640 input.

    All sessions are created first; then each round runs every file once, in an order rotated
    from round to round, so that load changes on the machine touch every variant alike."""
    import onnxruntime as ort

    from exporter.models.weights import synthetic_images

    x = synthetic_images(1, (640, 640), 0).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sessions: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for v, p in paths.items():
        try:
            s = ort.InferenceSession(str(p), sess_options=so, providers=[provider])
        except Exception as exc:  # onnxruntime raises its own types
            out[v] = {"error": f"session failed: {str(exc).splitlines()[0]}"}
            continue
        if s.get_providers()[:1] != [provider]:
            out[v] = {"error": f"{provider} asked for, ran on {s.get_providers()[0]}"}
            continue
        sessions[v] = (s, s.get_inputs()[0].name)
    for _ in range(warmup):
        for s, name in sessions.values():
            s.run(None, {name: x})
    times: dict[str, list[float]] = {v: [] for v in sessions}
    order = list(sessions)
    for r in range(runs):
        k = r % max(1, len(order))
        for v in order[k:] + order[:k]:
            s, name = sessions[v]
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times[v].append((time.perf_counter() - t0) * 1000)
    for v in sessions:
        out[v] = stats(times[v])
    return out


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios a/b (the same round ran both, close in time): robust to slow phases of the
    machine that a comparison of two medians is not."""
    return stats([x / y for x, y in zip(a["values"], b["values"], strict=True) if y > 0])


def summarize(lat: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Is the default the fastest, or within noise of it? Within noise: in at least a quarter of the
    rounds the default was no slower than the fastest variant (the 25th percentile of the per-round
    ratio default/fastest is at most 1)."""
    ok = {v: m for v, m in lat.items() if m.get("n")}
    if DEFAULT not in ok:
        return {"measured": False}
    for m in ok.values():
        m["paired_vs_default"] = _paired(m, ok[DEFAULT])
    best = min(ok, key=lambda v: ok[v]["median"])
    d, b = ok[DEFAULT], ok[best]
    pair = _paired(d, b)
    out = {"measured": True, "fastest": best, "default_ms": d["median"], "fastest_ms": b["median"],
           "gap_ms": d["median"] - b["median"], "default_over_fastest": pair["median"],
           "default_over_fastest_p25": pair["p25"], "default_over_fastest_p75": pair["p75"],
           "within_noise": best == DEFAULT or pair["p25"] <= 1.0,
           "default_iqr_ms": d["p75"] - d["p25"]}
    if "keep-bn" in ok:
        k = ok["keep-bn"]
        out["keep_bn_over_fused_ms"] = k["median"] - d["median"]
        out["keep_bn_over_fused_ratio"] = k["paired_vs_default"]["median"]
        out["keep_bn_over_fused_ratio_iqr"] = [k["paired_vs_default"]["p25"], k["paired_vs_default"]["p75"]]
    return out


def quality(name: str, src: Any, out_dir: Path, reuse: dict[str, Path], *, runs: int, warmup: int,
            threads: int, cuda: bool) -> dict[str, Any]:
    files = export_variants(name, src, out_dir, reuse)
    paths = {v: Path(f["path"]) for v, f in files.items() if "path" in f and "error" not in f}
    log(f"graph quality: {name} latency, {len(paths)} files, {runs} runs each after {warmup} warm-up")
    lat = latency(paths, runs=runs, warmup=warmup, threads=threads)
    out: dict[str, Any] = {"files": files, "latency_cpu": lat, "runs": runs, "warmup": warmup, "threads": threads,
                           "summary": summarize(lat)}
    if cuda:
        log(f"graph quality: {name} latency on CUDA")
        out["latency_cuda"] = latency(paths, runs=runs, warmup=warmup, threads=threads,
                                      provider="CUDAExecutionProvider")
    return out
