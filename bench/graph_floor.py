"""The 50k-node commands of :mod:`graph_scale` against the floor ``python -c "import onnx;
onnx.load(F)"`` (yexport issue 16): whole commands, CPU time per round against the floor's, peak RSS
against the floor's. ``python bench/graph_scale.py --against-load ROUNDS`` runs only this."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _env(pycache: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if pycache is not None:  # bytecode caches as in a normal installation, kept out of the tree
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def commands(a: Path, diffs: tuple[tuple[str, Path], ...], both: Path | None = None) -> dict[str, list[str]]:
    """The whole commands the graph benchmarks time on graph ``a``, by name, in this order: ``floor``
    (``python -c "import onnx; onnx.load(a)"``), with ``both`` also ``floor A+B`` (the same loading
    ``a`` and ``both``: what any diff of the two must read), ``inspect`` and ``snapshot`` of ``a``, then
    ``yexport diff a OTHER`` under each ``(name, OTHER)`` of ``diffs``."""
    yexport = [sys.executable, "-m", "exporter.cli.main"]
    two = ({"floor A+B": [sys.executable, "-c", f"import onnx; onnx.load({str(a)!r}); onnx.load({str(both)!r})"]}
           if both is not None else {})
    return {
        "floor": [sys.executable, "-c", f"import onnx; onnx.load({str(a)!r})"],
        **two,
        "inspect": [*yexport, "inspect", str(a)],
        "snapshot": [*yexport, "snapshot", str(a)],
        **{name: [*yexport, "diff", str(a), str(other)] for name, other in diffs},
    }


TARGETS_VS_LOAD = {"inspect": 1.5, "snapshot": 2.0, "diff": 2.5, "diff F F": 1.2}
#: for information, not a target: diff of two files against the floor that loads both
INFO_VS_TWO_LOADS = ("diff",)
TARGET_PEAK_VS_LOAD = 2.0


def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall s, CPU s (user + system) and peak RSS MiB of one whole command (its own rusage); exit 1 is
    a result (diff: the graphs differ), anything else a failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[-3:])} exited {proc.returncode}")
    return time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def against_load(a: Path, b: Path, repeat: int, folder: Path) -> dict[str, Any]:
    """Whole commands on a big graph against the floor ``python -c "import onnx; onnx.load(F)"``: the
    commands take turns; per-round CPU ratios (the fairer number on a busy machine), medians; peak
    RSS against the floor's.

    The commands are started from a small interpreter of their own: Linux counts the memory of the
    process that forked a command in its peak RSS (kept across ``exec``), so a bench process holding
    the 50k-node graphs would report its own size for every command."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from graph_floor import _against_load_here as f; "
            "print(json.dumps(f(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(HERE), str(a), str(b), str(repeat), str(folder)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _against_load_here(a: Path, b: Path, repeat: int, folder: Path) -> dict[str, Any]:
    """:func:`against_load`, in this (small) process."""
    import statistics

    cmds = commands(a, (("diff", b), ("diff F F", a)), both=b)
    env = _env(folder / "pycache")
    for name, cmd in cmds.items():  # warm the bytecode and page caches
        if name != "diff":
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cmds}
    names = list(cmds)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(_child(cmds[name], env))
    out: dict[str, Any] = {"repeat": repeat, "commands": {}, "ratios": {},
                           "rounds": {k: [round(x[1], 3) for x in v] for k, v in runs.items()}}
    for name, v in runs.items():
        out["commands"][name] = {"wall": statistics.median(x[0] for x in v), "cpu": statistics.median(x[1] for x in v),
                                 "peak_rss_mib": max(x[2] for x in v)}
    for name, target in TARGETS_VS_LOAD.items():
        ratio = statistics.median(x[1] / f[1] for x, f in zip(runs[name], runs["floor"], strict=True))
        peak = out["commands"][name]["peak_rss_mib"] / out["commands"]["floor"]["peak_rss_mib"]
        out["ratios"][name] = {"ratio": ratio, "target": target, "peak_ratio": peak, "peak_target": TARGET_PEAK_VS_LOAD}
    out["vs_two_loads"] = {name: statistics.median(x[1] / f[1] for x, f in zip(runs[name], runs["floor A+B"], strict=True))
                           for name in INFO_VS_TWO_LOADS}
    return out


def floor_files(folder: Path, n: int = 50_000) -> tuple[Path, Path]:
    """The graphs :func:`against_load` measures, as :func:`run` writes them: ``n`` nodes with every
    edge's shape stored, and its renamed twin with a few extra nodes (the diff)."""
    import onnx
    from graph_scale import build_graph

    a, b = folder / f"g{n}.onnx", folder / f"g{n}_b.onnx"
    for path, model in ((a, build_graph(n)), (b, build_graph(n, prefix="renamed_", extra_relu_every=max(1, n // 50)))):
        onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return a, b


def format_against_load(al: dict[str, Any]) -> str:
    lines = ["| command | wall s | CPU s | peak RSS MiB | CPU / floor (per round) | peak / floor |",
             "|---|--:|--:|--:|--:|--:|"]
    for name, c in al["commands"].items():
        rr = al["ratios"].get(name)
        extra = (f"{rr['ratio']:.2f}x (target <= {rr['target']:g}x) | {rr['peak_ratio']:.2f}x"
                 if rr else "1 | 1" if name == "floor" else "– | –")
        lines.append(f"| {name} | {c['wall']:.2f} | {c['cpu']:.2f} | {c['peak_rss_mib']:.0f} | {extra} |")
    for name, ratio in al.get("vs_two_loads", {}).items():
        lines.append(f"\n{name}: {ratio:.2f}x the CPU of `floor A+B` (both files loaded; for information, "
                     "the target is against `floor`)")
    return "\n".join(lines)


