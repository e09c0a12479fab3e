"""The GPU check (``make gpu-check``): CUDA proven on hardware, in one short run.

1. Exports yolov5s fused, keep-bn, dynamic (batch) and half on the CPU, without a check (works anywhere).
2. From here CUDA is needed: torch must see a CUDA device and onnxruntime must really run
   CUDAExecutionProvider (read from a session, not from the list of available providers). Where it
   cannot, the check stops with one line saying why (exit 2).
3. ``yexport check FILE --providers cpu,cuda --require cuda --repeat 3`` for each file, and one
   ``yexport export yolov5s --device cuda --providers cpu,cuda --require cuda`` (capture and reference on
   the GPU), then one table: per file and provider the verdict, the error ratio to PyTorch's own noise
   on that device, the provider figure (CUDA vs CPU, max abs) and the run-to-run spread.

Sized to fit in a few minutes on one GPU: yolov5s at 640, 2 inputs per file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("fused", "keep-bn", "dynamic", "half")


def yexport() -> list[str]:
    exe = Path(sys.executable).with_name("yexport")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "exporter.cli.main"]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    t0 = time.perf_counter()
    r = subprocess.run([*yexport(), *args], capture_output=True, text=True)
    print(f"[gpu-check] yexport {' '.join(args)}: exit {r.returncode} in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    return r


def cuda_reason() -> str:
    """Why CUDA cannot be used here, or '' when torch and onnxruntime both really run on it."""
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime has no CUDAExecutionProvider ({', '.join(ort.get_available_providers())})"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ran = sess.get_providers()
    return "" if ran[:1] == ["CUDAExecutionProvider"] else f"onnxruntime lists CUDA but the session ran on {ran[0]}"


def table(rows: list[dict[str, object]]) -> str:
    cols = ["file", "provider", "ran on", "verdict", "ratio", "cuda vs cpu", "run-to-run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def rows_of(name: str, report: dict) -> list[dict[str, object]]:
    out = []
    for p in report["providers"]:
        ratios = [o["ratio"] for o in p["outputs"] if o.get("ratio") is not None]
        out.append({"file": name, "provider": p["requested"], "ran on": ",".join(p["ran_on"]) or "-",
                    "verdict": {True: "pass", False: "FAIL", None: "not run"}[p["passed"]],
                    "ratio": f"{max(ratios):.2f}x" if ratios else "-",
                    "cuda vs cpu": f"{p['vs_cpu_max_abs']:.2e}" if p.get("vs_cpu_max_abs") is not None else "",
                    "run-to-run": f"{p['repeat_max_abs']:.2e}" if p.get("repeat_max_abs") is not None else ""})
    return out


def main() -> int:
    import torch

    print(f"[gpu-check] torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}", file=sys.stderr)
    out = Path(os.environ.get("GPU_CHECK_OUT") or tempfile.mkdtemp(prefix="yexport-gpu-"))
    r = run(["export", "yolov5s", "--variants", ",".join(VARIANTS), "--no-check", "-o", str(out), "--force"])
    if r.returncode:
        print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "export failed", file=sys.stderr)
        return r.returncode
    why = cuda_reason()
    if why:
        print(f"gpu-check: the CPU part is done ({len(VARIANTS)} files in {out}); CUDA is needed from here on "
              f"and cannot be used: {why}", file=sys.stderr)
        return 2
    rows: list[dict[str, object]] = []
    failed = False
    for v in VARIANTS:
        f = out / f"yolov5s-{v}.onnx"
        r = run(["check", str(f), "--providers", "cpu,cuda", "--require", "cuda", "--repeat", "3", "--json"])
        failed |= r.returncode != 0
        rows += rows_of(f.name, json.loads(r.stdout)) if r.stdout.strip().startswith("{") else \
            [{"file": f.name, "verdict": f"error: {r.stderr.strip()[:120]}"}]
    r = run(["export", "yolov5s", "--device", "cuda", "--providers", "cpu,cuda", "--require", "cuda", "-o",
             str(out / "on-cuda"), "--json"])
    failed |= r.returncode != 0
    if r.stdout.strip().startswith("["):
        (manifest,) = json.loads(r.stdout)
        rows += rows_of("yolov5s.onnx (--device cuda)", manifest["parity"])
    else:
        rows.append({"file": "yolov5s.onnx (--device cuda)", "verdict": f"error: {r.stderr.strip()[:120]}"})
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
