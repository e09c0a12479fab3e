"""Scale benchmark for ``yexport inspect``, ``snapshot`` and ``diff``.

* synthetic graphs of 1k, 10k and 50k nodes (residual Conv/Relu/Add blocks with small
  initializers): wall time and peak memory of inspect, snapshot and diff (target: under 3 s each
  at 50k nodes); diff compares the graph with a renamed copy that has a few extra nodes;
* a model with ~1 GiB of external-data weights (written as a sparse file, never held in memory):
  inspect's peak memory stays far below the weight size; snapshot hashes the data in 1 MiB chunks;
* start-up: ``yexport inspect`` / ``yexport diff`` on a ~7M-parameter model against the floor
  ``python -c "import onnx; onnx.load(FILE)"``.

Every measurement runs in a fresh subprocess, after its imports: wall time, CPU time (user + system,
the fairer number on a busy machine) and how far the peak RSS rose above the RSS before the call
(the peak mark is reset through ``/proc/self/clear_refs`` where Linux allows).

Run ``python bench/graph_scale.py [--quick]``; ``run(quick)`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_floor import (  # noqa: E402, F401 - re-exported: the 50k-node measurement against the floor
    TARGET_PEAK_VS_LOAD,
    TARGETS_VS_LOAD,
    _env,
    against_load,
    commands,
    floor_files,
    format_against_load,
)

ROOT = Path(__file__).resolve().parents[1]
SIZES_FULL = (1_000, 10_000, 50_000)
SIZES_QUICK = (1_000, 10_000)
TARGET_SECONDS_50K = 3.0
EXTERNAL_BYTES = 1 << 30

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
op, args = sys.argv[1], sys.argv[2:]
if op == "inspect":
    from exporter.graph.inspect import inspect as fn
elif op == "snapshot":
    from exporter.graph.snapshot import snapshot as fn
else:
    from exporter.graph.diff import diff as fn
import onnx  # noqa: F401  (imports are not part of the measured call)


def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


try:  # reset the peak-RSS mark so that it measures this call only
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
rss0 = status("VmRSS")
c0, t0 = cpu(), time.perf_counter()
result = fn(*args)
dt, dc = time.perf_counter() - t0, cpu() - c0
peak = status("VmHWM")
extra = {{}}
if op == "diff":
    extra = {{"identical": result.identical, "added": len(result.added), "removed": len(result.removed),
             "changed": len(result.changed)}}
print(json.dumps({{"seconds": dt, "cpu_seconds": dc, "rss_before_mib": rss0, "peak_rss_mib": peak,
                  "peak_growth_mib": peak - rss0, **extra}}))
"""


def build_graph(n_nodes: int, *, channels: int = 4, size: int = 8, seed: int = 0, prefix: str = "",
                extra_relu_every: int = 0) -> Any:
    """A valid ONNX graph of about ``n_nodes`` nodes: residual blocks
    ``Conv -> Relu -> Conv -> Add(skip) -> Relu`` with small (channels x channels x 3 x 3) weights.

    ``prefix`` renames every node and value; ``extra_relu_every`` inserts a Relu after every k-th
    block (a renamed, slightly edited twin for the diff)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    blocks = max(1, n_nodes // 5)
    conv_attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    for b in range(blocks):
        p = f"{prefix}b{b}_"
        for k in (1, 2):
            w = rng.standard_normal((channels, channels, 3, 3), dtype=np.float32) * 0.1
            inits.append(numpy_helper.from_array(w, f"{p}w{k}"))
            inits.append(numpy_helper.from_array(np.zeros(channels, np.float32), f"{p}bias{k}"))
        nodes += [
            helper.make_node("Conv", [prev, f"{p}w1", f"{p}bias1"], [f"{p}c1"], name=f"{p}conv1", **conv_attrs),
            helper.make_node("Relu", [f"{p}c1"], [f"{p}r1"], name=f"{p}relu1"),
            helper.make_node("Conv", [f"{p}r1", f"{p}w2", f"{p}bias2"], [f"{p}c2"], name=f"{p}conv2", **conv_attrs),
            helper.make_node("Add", [f"{p}c2", prev], [f"{p}sum"], name=f"{p}add"),
            helper.make_node("Relu", [f"{p}sum"], [f"{p}out"], name=f"{p}relu2"),
        ]
        prev = f"{p}out"
        if extra_relu_every and b % extra_relu_every == extra_relu_every - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"{p}extra"], name=f"{p}extra"))
            prev = f"{p}extra"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name=f"{prefix}output"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])
    graph = helper.make_graph(nodes, "scale", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graph_scale")


def build_external_model(folder: Path, total_bytes: int = EXTERNAL_BYTES, tensors: int = 16) -> Path:
    """A Conv chain (64 -> C channels 3x3, then C -> C 1x1) whose weights, about ``total_bytes`` in
    all, live in one external-data file.

    The tensors carry dims and external-data references only (``set_external_data``); the data file
    is made with ``truncate`` (sparse, zeros), so nothing near the weight size is ever in memory."""
    import math

    import onnx
    from onnx import TensorProto, helper
    from onnx.external_data_helper import set_external_data

    c = int(math.sqrt(total_bytes / tensors / 4))  # a C x C x 1 x 1 float32 tensor per 1x1 conv
    nodes, inits = [], []
    prev = "x"
    offset = 0
    for k in range(tensors):
        dims = [c, 64, 3, 3] if k == 0 else [c, c, 1, 1]
        nbytes = 4 * math.prod(dims)
        t = onnx.TensorProto(name=f"w{k}", data_type=TensorProto.FLOAT, dims=dims, raw_data=b"")
        set_external_data(t, location="weights.bin", offset=offset, length=nbytes)  # wants raw_data present
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        inits.append(t)
        offset += nbytes
        nodes.append(helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], name=f"conv{k}",
                                      kernel_shape=dims[2:], pads=[1, 1, 1, 1] if k == 0 else [0, 0, 0, 0]))
        prev = f"c{k}"
    with open(folder / "weights.bin", "wb") as fh:
        fh.truncate(offset)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "external", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="graph_scale")
    path = folder / "external.onnx"
    onnx.save(model, str(path))
    return path


def build_7m_model(seed: int = 0) -> Any:
    """~7.1M parameters in 48 3x3 Conv(128) + SiLU (Sigmoid, Mul) blocks: the size of a yolov5s."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = 128
    nodes, inits, prev = [], [], "x"
    for k in range(48):
        inits.append(numpy_helper.from_array(rng.standard_normal((c, c, 3, 3), dtype=np.float32), f"w{k}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(c, dtype=np.float32), f"b{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{k}"], [f"s{k}"]),
                  helper.make_node("Mul", [f"c{k}", f"s{k}"], [f"m{k}"])]
        prev = f"m{k}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 20, 20])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, c, 20, 20])
    return helper.make_model(helper.make_graph(nodes, "seven_m", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def measure(op: str, *args: Path) -> dict[str, Any]:
    """Run one library call in a fresh interpreter; time and peak RSS of that call."""
    code = _CHILD.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, op, *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _best_walls(cmds: dict[str, list[str]], repeat: int, env: dict[str, str]) -> dict[str, float]:
    """Best wall time of each command; the commands take turns, so a burst of load elsewhere
    on the machine hits them alike."""
    def once(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        return time.perf_counter() - t0

    for cmd in cmds.values():  # warm the bytecode and page caches
        once(cmd)
    best = {name: float("inf") for name in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            best[name] = min(best[name], once(cmd))
    return best


def startup(folder: Path, repeat: int) -> dict[str, Any]:
    """Whole-command wall time against the bare ``import onnx; onnx.load`` floor (best of ``repeat``,
    after a warm-up run, with bytecode caches as an installed package has them)."""
    import onnx

    a, b = folder / "seven_m.onnx", folder / "seven_m_b.onnx"
    model = build_7m_model(0)
    params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    onnx.save(model, str(a))
    onnx.save(build_7m_model(1), str(b))
    cmds = commands(a, (("diff_identical", a), ("diff_other_weights", b)))
    best = _best_walls(cmds, repeat, _env(folder / "pycache"))
    floor = best.pop("floor")
    out: dict[str, Any] = {"parameters": params, "file_mib": a.stat().st_size / (1 << 20), "floor_seconds": floor}
    for name, t in best.items():
        out[name] = {"seconds": t, "x_floor": t / floor}
    return out


def run(quick: bool) -> dict[str, Any]:
    """All measurements; ``quick`` skips the 50k-node size and the 1 GiB snapshot and repeats less."""
    import onnx

    sizes = SIZES_QUICK if quick else SIZES_FULL
    result: dict[str, Any] = {"quick": quick, "scale": [], "targets": {"seconds_at_50k": TARGET_SECONDS_50K}}
    with tempfile.TemporaryDirectory(prefix="graph_scale_") as tmp:
        folder = Path(tmp)
        for n in sizes:
            a, b = folder / f"g{n}.onnx", folder / f"g{n}_b.onnx"
            model = build_graph(n)
            onnx.save(model, str(a))
            onnx.save(build_graph(n, prefix="renamed_", extra_relu_every=max(1, n // 50)), str(b))
            row: dict[str, Any] = {"nodes": len(model.graph.node), "shapes": "inferred",
                                   "file_mib": a.stat().st_size / (1 << 20)}
            for op, args in (("inspect", (a,)), ("snapshot", (a,)), ("diff", (a, b))):
                row[op] = measure(op, *args)
            result["scale"].append(row)
            if n == sizes[-1]:
                # the same graphs with every edge's shape stored, as `yexport export` writes them
                for p in (a, b):
                    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(p))), str(p))
                row = {"nodes": len(model.graph.node), "shapes": "stored", "file_mib": a.stat().st_size / (1 << 20)}
                for op, args in (("inspect", (a,)), ("snapshot", (a,)), ("diff", (a, b))):
                    row[op] = measure(op, *args)
                result["scale"].append(row)
                result["against_load"] = {"nodes": row["nodes"], **against_load(a, b, 3 if quick else 5, folder)}
            a.unlink()
            b.unlink()
        ext_dir = folder / "external"
        ext_dir.mkdir()
        ext = build_external_model(ext_dir)
        ext_res: dict[str, Any] = {"weights_bytes": (ext_dir / "weights.bin").stat().st_size,
                                   "onnx_file_bytes": ext.stat().st_size, "inspect": measure("inspect", ext)}
        if not quick:
            ext_res["snapshot"] = measure("snapshot", ext)
        result["external"] = ext_res
        result["startup"] = startup(folder, repeat=3 if quick else 7)
    at_50k = [r for r in result["scale"] if r["nodes"] >= 50_000]
    result["within_target_at_50k"] = {
        f"{op} ({r['shapes']} shapes)": r[op]["cpu_seconds"] < TARGET_SECONDS_50K
        for r in at_50k for op in ("inspect", "snapshot", "diff")}
    al = result.get("against_load")
    if al:
        result["floor_ratios"] = {f"{k} (whole command, CPU)": v for k, v in al["ratios"].items()}
        result["floor_ratios"].update({f"{k} peak RSS": {"ratio": v["peak_ratio"], "target": v["peak_target"]}
                                       for k, v in al["ratios"].items()})
    ins = result["external"]["inspect"]
    result["external_inspect_far_below_weights"] = ins["peak_growth_mib"] * (1 << 20) < EXTERNAL_BYTES / 10
    return result


def format_table(r: dict[str, Any]) -> str:
    lines = ["| graph | op | wall s | CPU s | peak RSS growth MiB |", "|---|---|--:|--:|--:|"]
    for row in r["scale"]:
        for op in ("inspect", "snapshot", "diff"):
            m = row[op]
            lines.append(f"| {row['nodes']:,} nodes, {row['shapes']} shapes | {op} | {m['seconds']:.2f} | "
                         f"{m['cpu_seconds']:.2f} | {m['peak_growth_mib']:.0f} |")
    ext = r["external"]
    for op in ("inspect", "snapshot"):
        if op in ext:
            m = ext[op]
            lines.append(f"| {ext['weights_bytes'] / (1 << 30):.2f} GiB external weights | {op} | {m['seconds']:.2f} | "
                         f"{m['cpu_seconds']:.2f} | {m['peak_growth_mib']:.0f} |")
    al = r.get("against_load")
    if al:
        lines += ["", f"{al['nodes']:,} nodes (stored shapes), whole commands against `python -c \"import onnx; "
                      f"onnx.load(F)\"`, {al['repeat']} interleaved rounds, medians:", "",
                  format_against_load(al)]
    s = r["startup"]
    lines.append("")
    lines.append(f"start-up on a {s['parameters'] / 1e6:.1f}M-parameter model ({s['file_mib']:.0f} MiB): "
                 f"floor `import onnx; onnx.load` {s['floor_seconds']:.2f} s")
    for name in ("inspect", "snapshot", "diff_identical", "diff_other_weights"):
        lines.append(f"  yexport {name.replace('_', ' ')}: {s[name]['seconds']:.2f} s ({s[name]['x_floor']:.2f}x floor)")
    if r.get("within_target_at_50k"):
        lines.append(f"CPU under {TARGET_SECONDS_50K:g} s at 50k nodes: " +
                     ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["within_target_at_50k"].items()))
    lines.append(f"inspect of the external-weights model far below the weight size: "
                 f"{'yes' if r['external_inspect_far_below_weights'] else 'NO'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip 50k nodes and the 1 GiB snapshot")
    ap.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    ap.add_argument("--against-load", type=int, metavar="ROUNDS", default=0,
                    help="only the 50k-node commands against the `import onnx; onnx.load` floor, ROUNDS rounds")
    args = ap.parse_args()
    if args.against_load:
        with tempfile.TemporaryDirectory(prefix="graph_scale_") as tmp:
            folder = Path(tmp)
            a, b = floor_files(folder)
            al = against_load(a, b, args.against_load, folder)
        print(json.dumps(al, indent=2) if args.json else format_against_load(al))
        return
    r = run(args.quick)
    print(json.dumps(r, indent=2) if args.json else format_table(r))


if __name__ == "__main__":
    main()
