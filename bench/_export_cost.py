"""Section 1, export cost: per-stage wall time of ``exporter.api.export_one`` against a bare
``torch.onnx.export`` of the same prepared model, the parity check's parts against a bare forward
plus a bare onnxruntime session and run, and the whole ``yexport export`` process against its floor."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bare_export import bare_export
from _common import executable, log, stats, time_processes, timed

BENCH = Path(__file__).resolve().parent
# 'write' is recorded by export_one itself, 'build' (load_model) by this benchmark
STAGES = ("build", "prepare", "capture", "tidy", "infer_shapes", "simplify", "metadata", "checker", "parity", "write")
# the pipeline's counterparts of what a bare export does: copy+fuse, the exporter call, file write
BARE_COUNTERPARTS = ("prepare", "capture", "metadata", "write")


def load(name: str, repeat: int, cache: dict[str, Any]) -> dict[str, Any]:
    """Build ``name`` ``repeat`` times (timed); keeps the last one in ``cache`` for later sections."""
    from exporter.models import load_model

    times = []
    for _ in range(repeat):
        dt, src = timed(lambda: load_model(name))
        times.append(dt)
        cache[name] = src
    return stats(times)


def _cpu_timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result) of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def pipeline_cost(name: str, src: Any, repeat: int, out_dir: Path) -> dict[str, Any]:
    """``repeat`` rounds of three calls, in an order rotated from round to round: a bare export,
    ``export_one`` without parity and ``export_one`` with parity (the stage records); after one
    untimed warm-up of each (the first call in a process pays one-off set-up and imports).
    The ratio is the median of the per-round ratios (its two calls ran close in time)."""
    from exporter.api import export_one
    from exporter.options import ExportOptions
    from exporter.pipeline import Context
    from exporter.stages.prepare import prepare

    opts = ExportOptions()  # the default: fused, TorchScript, opset 18, parity on CPU
    no_check = opts.replace(check=False)
    path = out_dir / f"{name}.onnx"
    bare_path = out_dir / f"{name}-bare.onnx"
    stage_times: dict[str, list[float]] = defaultdict(list)
    t: dict[str, list[float]] = defaultdict(list)  # wall and CPU time per kind of call
    failures: list[str] = []
    result: Any = None

    def run_bare(record: bool = True) -> None:
        c = prepare(Context(options=opts, source=src))
        dt, dc, _ = _cpu_timed(lambda: bare_export(c.model, c.example, str(bare_path)))
        if record:
            t["bare"].append(dt)
            t["bare_cpu"].append(dc)

    def run_no_check(record: bool = True) -> None:
        dt, dc, res = _cpu_timed(lambda: export_one(src, no_check, out_dir / f"{name}-no-check.onnx", "fused"))
        failures.extend(res.failures)
        if record:
            t["no_check"].append(dt)
            t["no_check_cpu"].append(dc)

    def run_check(record: bool = True) -> None:
        nonlocal result
        dt, _, result = _cpu_timed(lambda: export_one(src, opts, path, "fused"))
        failures.extend(result.failures)
        if not record:
            return
        t["export_one"].append(dt)
        secs = {r.name: r.seconds for r in result.records}
        for k, v in secs.items():
            stage_times[k].append(v)
        t["check_minus_parity"].append(dt - secs.get("parity", 0.0))
        t["counterparts"].append(sum(secs.get(k, 0.0) for k in BARE_COUNTERPARTS))

    calls = [run_bare, run_no_check, run_check]
    for fn in calls:
        fn(record=False)
    paired: list[float] = []
    paired_cpu: list[float] = []
    for r in range(repeat):
        log(f"export cost: {name} round {r + 1}/{repeat}")
        for fn in calls[r % 3:] + calls[:r % 3]:
            fn()
        paired.append(t["no_check"][-1] / t["bare"][-1])
        paired_cpu.append(t["no_check_cpu"][-1] / t["bare_cpu"][-1])
    st = {k: stats(v) for k, v in t.items()}
    b = st["bare"]["median"]
    return {
        "repeat": repeat,
        "file": str(path),
        "nodes": result.nodes if result is not None else None,
        "parity": result.parity.summary() if result is not None and result.parity is not None else None,
        "failures": failures,
        "stages": {k: stats(v) for k, v in stage_times.items()},
        "export_one": st["export_one"],
        "pipeline_without_parity": st["no_check"],
        "pipeline_without_parity_cpu": st["no_check_cpu"],
        "export_one_minus_parity": st["check_minus_parity"],
        "bare_counterparts": st["counterparts"],
        "bare_export": st["bare"],
        "bare_export_cpu": st["bare_cpu"],
        "ratio_without_parity": stats(paired)["median"],
        "ratio_without_parity_stats": stats(paired),
        "ratio_without_parity_cpu": stats(paired_cpu)["median"],
        "ratio_of_medians": st["no_check"]["median"] / b if b else None,
        "ratio_counterparts": st["counterparts"]["median"] / b if b else None,
        "ratio_capture": stats(stage_times["capture"])["median"] / b if b and stage_times["capture"] else None,
    }


def _flat(y: Any) -> list[Any]:
    import torch

    if isinstance(y, torch.Tensor):
        return [y.numpy()]
    return [a for t in y for a in _flat(t)]


def _parity_round(src: Any, path: Path, proto: Any, shapes: list[tuple[int, ...]]) -> tuple[dict, dict]:
    """One round: the parity stage's parts, then the bare forward, session and run."""
    import onnx
    import onnxruntime as ort
    import torch

    from exporter.options import ExportOptions
    from exporter.parity import compare_floor, fused_copy, make_inputs, open_session, reference_model
    from exporter.parity.compare import whole
    from exporter.pipeline import Context
    from exporter.stages.parity import parity

    input_name = proto.graph.input[0].name
    parts: dict[str, float] = {}
    bare: dict[str, float] = {}
    opts = ExportOptions()
    stage, _ = timed(lambda: parity(Context(options=opts, source=src, onnx=proto, model=fused_copy(src.model))))
    parts["reference copies"], ref = timed(lambda: reference_model(src.model, head="decode"))
    ref64 = ref.double()
    ref = reference_model(src.model, head="decode")
    parts["inputs"], cases = timed(lambda: make_inputs(shapes, 1, 0, None))
    x = cases[0][1]
    with torch.no_grad():
        parts["torch forward"], expected = timed(lambda: _flat(ref(torch.from_numpy(x))))
        parts["float64 forward"], truth = timed(lambda: _flat(ref64(torch.from_numpy(x).double())))
    parts["serialize"], data = timed(lambda: onnx.load_from_string(proto.SerializeToString()).SerializeToString())
    parts["ORT session"], (sess, _) = timed(lambda: open_session(data, "cpu"))
    parts["ORT run"], outs = timed(lambda: sess.run(None, {input_name: x}))
    parts["compare"], _ = timed(lambda: [compare_floor("o", o, e, t, whole())
                                         for e, o, t in zip(expected, outs, truth, strict=True)])
    parts["total"] = sum(parts.values())

    model = src.model  # already in eval mode: load_model returns it so
    with torch.no_grad():
        bare["torch forward"], _ = timed(lambda: model(torch.from_numpy(x)))
    bare["ORT session"], s = timed(lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    bare["ORT run"], _ = timed(lambda: s.run(None, {input_name: x}))
    bare["total"] = sum(bare.values())
    parts["parity stage, whole"] = stage
    return parts, bare


def parity_cost(src: Any, path: Path, repeat: int) -> dict[str, Any]:
    """The parity stage as a whole and its parts, each timed alone, next to a bare torch forward and
    a bare onnxruntime session + run on the same file and input; ``repeat`` rounds after one warm-up.
    ``ratio``: per round, the whole stage over the bare forward + session + run."""
    import onnx

    from exporter.parity import default_shapes

    proto = onnx.load(str(path))
    shapes = default_shapes(proto)
    parts: dict[str, list[float]] = defaultdict(list)
    bare: dict[str, list[float]] = defaultdict(list)
    _parity_round(src, path, proto, shapes)  # warm-up: first runs at a new input size pay one-off set-up
    ratios = []
    for r in range(repeat):
        log(f"parity cost: round {r + 1}/{repeat}")
        p, b = _parity_round(src, path, proto, shapes)
        for k, v in p.items():
            parts[k].append(v)
        for k, v in b.items():
            bare[k].append(v)
        ratios.append(p["parity stage, whole"] / b["total"])
    return {"repeat": repeat, "shapes": [list(s) for s in shapes], "forwards": len(shapes), "sessions": 1,
            "parts": {k: stats(v) for k, v in parts.items()}, "bare": {k: stats(v) for k, v in bare.items()},
            "ratio": stats(ratios)}


def process_cost(name: str, repeat: int, out_dir: Path) -> dict[str, Any]:
    """Whole processes, round-robin, after one untimed ``import torch`` (warms the file cache):
    ``python -c 'import torch'``, the same plus onnxscript (which the tidy stage needs), the bare
    export script and ``yexport export --no-check``."""
    floor = [sys.executable, "-c", "import torch"]
    commands = {
        "import torch": floor,
        "import torch, onnxscript": [sys.executable, "-c", "import torch, onnxscript"],
        "bare export": [sys.executable, str(BENCH / "_bare_export.py"), name, str(out_dir / f"{name}-bare-proc.onnx")],
        "yexport export --no-check": [*executable("yexport"), "export", name, "--no-check", "-o",
                                      str(out_dir / "proc")],
    }
    time_processes({"warm-up": floor}, 1, warmup=False)
    log(f"whole processes: {name}, {repeat} round(s) of {', '.join(commands)}")
    res = time_processes(commands, repeat, warmup=False)
    out: dict[str, Any] = {"repeat": repeat, "commands": res}
    y, b = res["yexport export --no-check"].get("median"), res["bare export"].get("median")
    out["ratio"] = y / b if y and b else None
    return out
