"""Measure the parity rule both ways: honest exports must pass, seeded faults must fail.

    python bench/parity_rule.py [--img 640] [--models yolov5n,yolov5s] [--sections zoo,checkpoints,faults]

- zoo: every built-in model, fused and keep-bn, exported with the default check; per model the largest
  ratio of the file's error against float64 to PyTorch fp32's own (99.9th percentile and maximum, over
  every column group and input) and the errors themselves.
- checkpoints: official-layout checkpoints (written as the tests' fixture writer does: BatchNorm gammas in
  [0.5, 1.5), calibrated statistics, fp16 weights) exported fused and keep-bn, static, --dynamic batch and
  --dynamic all, with TorchScript and dynamo.
- faults: each seeded fault of tests/faults.py on a good export, with its smallest group ratio.

Prints markdown tables (progress on stderr) and, at the end, the honest maximum and the fault minimum,
the margin that the constants K_Q / K_MAX of exporter/parity/compare.py must sit inside.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporter.api import export  # noqa: E402
from exporter.models import builtin_names, load_model  # noqa: E402
from exporter.options import ExportOptions  # noqa: E402
from exporter.parity.compare import K_MAX, K_Q  # noqa: E402


def log(msg: str) -> None:
    print(f"[parity_rule {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def figures(report: Any) -> dict[str, float]:
    """Largest ratios and errors over every provider, input, output and group of a report."""
    q = m = err = floor = 0.0
    for p in report.providers:
        for c in p.cases:
            for o in c.outputs:
                for g in o.groups:
                    q, m = max(q, g.ratio), max(m, g.ratio_max)
                    err, floor = max(err, g.onnx_q), max(floor, g.torch_q)
    return {"ratio": q, "ratio_max": m, "err_q": err, "fp32_q": floor}


def row(name: str, variant: str, res: Any) -> str:
    if res.parity is None:
        return f"| {name} | {variant} | not checked | | | | | {res.seconds:.0f} |"
    f = figures(res.parity)
    verdict = "pass" if res.parity else "FAIL"
    return (f"| {name} | {variant} | {verdict} | {f['ratio']:.2f}x | {f['ratio_max']:.2f}x | {f['err_q']:.2e} | "
            f"{f['fp32_q']:.2e} | {res.seconds:.0f} |")


HEADER = ("| model | variant | verdict | ratio q99.9 | ratio max | ONNX err q99.9 | fp32 err q99.9 | s |\n"
          "|---|---|---|---|---|---|---|---|")


def zoo(models: list[str], img: int, out: Path, honest: list[float]) -> None:
    print("\n## Zoo (built-in models, synthetic weights, default check)\n")
    print(HEADER)
    for name in models:
        log(f"zoo: {name}")
        src = load_model(name)
        for res in export(src, variants=["fused", "keep-bn"], out_dir=out, options=ExportOptions(img=(img, img))):
            print(row(name, res.variant, res), flush=True)
            if res.parity is not None:
                f = figures(res.parity)
                honest.extend([f["ratio"], f["ratio_max"] / (K_MAX / K_Q)])


def checkpoints(models: list[str], img: int, out: Path, honest: list[float]) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from exporter.models import build_model
    from exporter.models.weights import calibrate
    from tests.models.conftest import write_official

    print("\n## Official-layout checkpoints (gammas in [0.5, 1.5), calibrated statistics, fp16 weights)\n")
    print(HEADER)
    variants = ["fused", "keep-bn", "dynamic", "keep-bn+dynamic", "dynamic-all", "keep-bn+dynamic-all",
                "dynamo", "keep-bn+dynamo", "dynamic+dynamo", "dynamic-all+dynamo"]
    for name in models:
        model = calibrate(build_model(name, seed=1), seed=1)  # other weights than the built-in's seed 0
        ckpt = write_official(model, out / f"{name}-official.pt", "v5.0" if "v5.0" in name else "v6+")
        src = load_model(ckpt)
        for v in variants:
            log(f"checkpoint: {name} {v}")
            try:
                (res,) = export(src, variants=[v], out_dir=out, options=ExportOptions(img=(img, img)))
            except Exception as exc:  # a variant that cannot be made is reported, not hidden
                print(f"| {name}.pt | {v} | error: {str(exc).splitlines()[0][:80]} | | | | | |", flush=True)
                continue
            print(row(f"{name}.pt", v, res), flush=True)
            if res.parity is not None:
                f = figures(res.parity)
                honest.extend([f["ratio"], f["ratio_max"] / (K_MAX / K_Q)])


def faults_section(name: str, img: int, out: Path, caught: list[float]) -> None:
    import onnx

    from exporter.parity import build_reference, compare_with, default_shapes, fused_copy
    from tests.faults import broken, faults

    print(f"\n## Seeded faults ({name} at {img}, fused)\n")
    print("| fault | verdict | largest group ratio q99.9 | ratio max |\n|---|---|---|---|")
    src = load_model(name)
    (res,) = export(src, out_dir=out, name=f"{name}-faults", options=ExportOptions(img=(img, img), check=False))
    proto = onnx.load(str(res.path))
    ref = build_reference(src.model, default_shapes(proto), exported=fused_copy(src.model))
    for fault, f in faults(proto).items():
        log(f"fault: {fault}")
        rep = compare_with(broken(proto, f), ref, detections=False)
        fig = figures(rep)
        print(f"| {fault} | {'pass' if rep else 'FAIL'} | {fig['ratio']:.3g}x | {fig['ratio_max']:.3g}x |", flush=True)
        caught.append(max(fig["ratio"], fig["ratio_max"] / (K_MAX / K_Q)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img", type=int, default=640)
    ap.add_argument("--models", default=None, help="comma-separated built-ins for the zoo (default: all)")
    ap.add_argument("--checkpoint-models", default="yolov5n,yolov5s,yolov5s-v5.0")
    ap.add_argument("--fault-model", default="yolov5n")
    ap.add_argument("--sections", default="zoo,checkpoints,faults")
    a = ap.parse_args()
    sections = a.sections.split(",")
    honest: list[float] = []
    caught: list[float] = []
    print(f"# Parity rule: K_Q = {K_Q:g} (99.9th percentile), K_MAX = {K_MAX:g} (maximum), img {a.img}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "zoo" in sections:
            zoo(a.models.split(",") if a.models else builtin_names(), a.img, out, honest)
        if "checkpoints" in sections:
            checkpoints(a.checkpoint_models.split(","), a.img, out, honest)
        if "faults" in sections:
            faults_section(a.fault_model, a.img, out, caught)
    print("\n## Margin (in units of K_Q: a value is ratio q99.9, or ratio max scaled by K_Q / K_MAX)\n")
    if honest:
        print(f"- honest files: worst {max(honest):.2f} (must stay below K_Q = {K_Q:g})")
    if caught:
        print(f"- seeded faults: mildest {min(caught):.3g} (must stay above K_Q = {K_Q:g})")


if __name__ == "__main__":
    main()
