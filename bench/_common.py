"""Shared helpers for bench/run.py: statistics, timing of whole processes, the machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    """Progress on stderr, so stdout carries only the report."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, quartiles and the number of runs of ``values`` (seconds or ms)."""
    v = sorted(float(x) for x in values)
    if not v:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan"), "p25": float("nan"),
                "p75": float("nan"), "values": []}
    if len(v) >= 4:
        q = statistics.quantiles(v, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25, p75 = v[0], v[-1]
    return {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1], "p25": p25, "p75": p75,
            "values": [round(x, 6) for x in values]}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def executable(name: str) -> list[str]:
    """The console script installed beside this interpreter, else ``python -m`` of the CLI module."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "exporter.cli.main"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_process(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 600,
                ok: Sequence[int] = (0,)) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one whole process; raises RuntimeError (with its
    last stderr line) when its exit status is not in ``ok``."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    dt, dc = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode not in ok:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:200]}")
    return dt, dc


def time_processes(commands: dict[str, list[str]], repeat: int, *, warmup: bool = True, cwd: Path | None = None,
                   ok_codes: dict[str, Sequence[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Time each named command ``repeat`` times, round-robin (so load changes on the machine touch
    every command alike), after one untimed warm-up run of each. Wall-time statistics, plus the
    median CPU time (``cpu_median``: less sensitive to other work on the machine). A failing command
    is reported, not raised."""
    out: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    failed: dict[str, str] = {}
    rounds = ([None] if warmup else []) + list(range(repeat))
    for r in rounds:
        for name, cmd in commands.items():
            if name in failed:
                continue
            try:
                dt, dc = run_process(cmd, cwd=cwd, ok=(ok_codes or {}).get(name, (0,)))
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                failed[name] = str(exc)
                continue
            if r is not None:
                times[name].append(dt)
                cpu[name].append(dc)
    for name in commands:
        if name in failed:
            out[name] = {"error": failed[name]}
        else:
            out[name] = {**stats(times[name]), "cpu_median": stats(cpu[name])["median"]}
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(ort_threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md

    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    versions = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxsim", "onnxscript"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "logical_cpus": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "ort_intra_op_threads_latency": ort_threads,
        "ort_threads_parity": "onnxruntime default (one per physical core)",
        "cuda_torch": bool(torch.cuda.is_available()),
        "load_average_start": load_average(),
    }


def describe_machine(m: dict[str, Any]) -> str:
    v = m["versions"]
    ort = v.get("onnxruntime") or v.get("onnxruntime-gpu", "?")
    mem = f"{m['memory_gib']:.1f} GiB" if m.get("memory_gib") else "unknown"
    lines = [
        f"- CPU: {m['cpu']}; {m['cores']} cores usable ({m['logical_cpus']} logical); memory {mem}",
        f"- Python {m['python']} on {m['platform']}; torch {v.get('torch', '?')}, onnx {v.get('onnx', '?')}, "
        f"onnxruntime {ort}, onnxsim {v.get('onnxsim', '-')}, onnxscript {v.get('onnxscript', '-')}",
        f"- threads: torch {m['torch_threads']}; onnxruntime intra-op {m['ort_intra_op_threads_latency']} for the "
        f"latency runs (inter-op 1, sequential), {m['ort_threads_parity']} in the export's parity check",
        f"- load average at start (1/5/15 min): {m['load_average_start']}",
    ]
    return "\n".join(lines)


def fmt_s(x: float | None, digits: int = 2) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return f"{x:.{digits}f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f}x"
