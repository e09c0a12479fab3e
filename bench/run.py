"""yexport benchmarks: export cost, graph quality, tool start-up, scale (``make bench``, ``make bench-quick``).

Prints the machine description, then a markdown report ending in a list of targets (met / NOT met);
writes the same report to bench/results.md and every number to bench/results.json.
Progress goes to stderr. See bench/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from _common import describe_machine, fmt_ratio, fmt_s, load_average, log, machine  # noqa: E402
from _quality import OFFICIAL, VARIANTS  # noqa: E402

SECTIONS = ("export", "quality", "startup", "scale", "official")
TARGET_PIPELINE_RATIO = 1.2
TARGET_PARITY_RATIO = 1.2  # parity stage time against (bare forward + bare session + bare run)
TARGET_PROCESS_RATIO = 1.15
TARGET_HELP_S = 0.3
TARGET_STARTUP_RATIO = 1.5
TARGET_STATIC_NODES = 236
TARGET_DYNAMIC_ALL_SIMPLIFIED = 329


def settings(quick: bool, models: list[str] | None) -> dict[str, Any]:
    if quick:
        s = {"export_models": ["yolov5s"], "build_repeat": 1, "export_repeat": 3, "parity_repeat": 3,
             "process_repeat": 1,
             "quality_models": ["yolov5s"], "latency_runs": 20, "latency_warmup": 3, "startup_repeat": 3}
    else:
        s = {"export_models": ["yolov5n", "yolov5s"], "build_repeat": 3, "export_repeat": 5, "parity_repeat": 5,
             "process_repeat": 3,
             "quality_models": ["yolov5n", "yolov5s"], "latency_runs": 30, "latency_warmup": 5, "startup_repeat": 7}
    if models:
        s["export_models"] = s["quality_models"] = models
    return s


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _error(exc: BaseException) -> dict[str, str]:
    log("".join(traceback.format_exception(exc)).rstrip())
    text = str(exc).strip().splitlines()
    return {"error": f"{type(exc).__name__}: {text[0] if text else ''}"[:300]}


def _probe_model() -> bytes:
    """A one-Conv ONNX model, enough to see which provider a session really runs on."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def cuda_probe() -> dict[str, Any]:
    """CUDA is measured only where torch sees a device and an onnxruntime session really runs on it."""
    import torch

    if not torch.cuda.is_available():
        return {"usable": False, "reason": "torch.cuda.is_available() is False"}
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"usable": False, "reason": "this onnxruntime build has no CUDAExecutionProvider"}
    from exporter.parity import open_session

    _, res = open_session(_probe_model(), "cuda")
    if not res.ran:
        return {"usable": False, "reason": res.reason}
    return {"usable": True, "device": torch.cuda.get_device_name(0)}


# ---------------------------------------------------------------------------------------------- run


def run(quick: bool, sections: tuple[str, ...], models: list[str] | None) -> dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    cfg = settings(quick, models)
    threads = cores()
    m = machine(threads)
    print(f"# yexport benchmarks ({'quick' if quick else 'full'} mode)\n\n## Machine\n{describe_machine(m)}\n",
          flush=True)
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "machine": m, "settings": cfg,
                               "sections": list(sections)}
    cache: dict[str, Any] = {}
    files: dict[str, dict[str, Path]] = {}  # model -> variant -> file
    with tempfile.TemporaryDirectory(prefix="yexport-bench-") as tmp:
        folder = Path(tmp)
        if "export" in sections:
            from _export_cost import load, parity_cost, pipeline_cost, process_cost

            ec: dict[str, Any] = {"models": {}}
            for name in cfg["export_models"]:
                entry: dict[str, Any] = {}
                try:
                    log(f"export cost: build {name} x{cfg['build_repeat']}")
                    entry["build"] = load(name, cfg["build_repeat"], cache)
                    entry["pipeline"] = pipeline_cost(name, cache[name], cfg["export_repeat"], folder)
                    files.setdefault(name, {})["fused"] = Path(entry["pipeline"]["file"])
                    entry["parity"] = parity_cost(cache[name], Path(entry["pipeline"]["file"]), cfg["parity_repeat"])
                except Exception as exc:  # report the section as failed, go on with the others
                    entry.update(_error(exc))
                ec["models"][name] = entry
            if "yolov5s" in cfg["export_models"]:
                try:
                    ec["processes"] = process_cost("yolov5s", cfg["process_repeat"], folder)
                except Exception as exc:
                    ec["processes"] = _error(exc)
            results["export"] = ec
        try:
            results["cuda"] = cuda_probe()
        except Exception as exc:
            results["cuda"] = {"usable": False, "reason": _error(exc)["error"]}
        if "quality" in sections:
            from _quality import quality

            from exporter.models import load_model

            qd: dict[str, Any] = {}
            for name in cfg["quality_models"]:
                try:
                    if name not in cache:
                        log(f"graph quality: build {name}")
                        cache[name] = load_model(name)
                    qd[name] = quality(name, cache[name], folder, files.get(name, {}), runs=cfg["latency_runs"],
                                       warmup=cfg["latency_warmup"], threads=threads,
                                       cuda=results["cuda"].get("usable", False))
                    for v, f in qd[name]["files"].items():
                        if "path" in f:
                            files.setdefault(name, {})[v] = Path(f["path"])
                except Exception as exc:
                    qd[name] = _error(exc)
            results["quality"] = qd
        if "startup" in sections:
            from _startup import startup

            try:
                file = files.get("yolov5s", {}).get("fused")
                if file is None:
                    from exporter.api import export
                    from exporter.options import ExportOptions

                    log("start-up: export yolov5s (no earlier section made it)")
                    file = export("yolov5s", out_dir=folder, options=ExportOptions(check=False))[0].path
                results["startup"] = startup(file, files.get("yolov5s", {}).get("keep-bn"), cfg["startup_repeat"])
            except Exception as exc:
                results["startup"] = _error(exc)
        if "scale" in sections:
            try:
                import graph_scale

                log(f"scale: bench/graph_scale.py run(quick={quick})")
                results["scale"] = graph_scale.run(quick)
            except Exception as exc:
                results["scale"] = _error(exc)
        if "official" in sections:
            from _official import official

            try:
                results["official"] = official("yolov5s", 1 if quick else 3, folder)
            except Exception as exc:
                results["official"] = _error(exc)
            if "skipped" in results["official"]:
                log(results["official"]["skipped"])
    results["torch_threads_end"] = torch.get_num_threads()
    results["load_average_end"] = load_average()
    results["seconds"] = time.perf_counter() - t_start
    results["targets"] = targets(results)
    return results


# ------------------------------------------------------------------------------------------ targets


def _t(name: str, measured: str, ok: bool | None, why: str = "") -> dict[str, Any]:
    status = "not measured" if ok is None else ("met" if ok else "NOT met")
    return {"target": name, "measured": measured, "status": status, "why": why}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ec = r.get("export")
    for name, e in (ec or {}).get("models", {}).items():
        p = e.get("pipeline")
        if not p:
            out.append(_t(f"{name}: pipeline without parity <= {TARGET_PIPELINE_RATIO}x bare export", "-", None,
                          e.get("error", "")))
            continue
        st = p["stages"]
        extra = {k: st[k]["median"] for k in ("tidy", "infer_shapes", "checker") if k in st}
        ratio = p["ratio_without_parity"]
        why = ""
        if ratio is not None and ratio > TARGET_PIPELINE_RATIO:
            why = ("stages a bare export does not have: " + ", ".join(f"{k} {v:.2f} s" for k, v in extra.items())
                   + f"; prepare {st['prepare']['median']:.2f} s; prepare+capture+metadata+write alone are "
                   f"{fmt_ratio(p['ratio_counterparts'])} of the bare export")
        out.append(_t(f"{name}: pipeline without parity <= {TARGET_PIPELINE_RATIO}x bare torch.onnx.export",
                      f"per-round ratio {fmt_ratio(ratio)} (medians {p['pipeline_without_parity']['median']:.2f} s vs "
                      f"{p['bare_export']['median']:.2f} s; in CPU time {fmt_ratio(p['ratio_without_parity_cpu'])})", None if ratio is None else ratio <= TARGET_PIPELINE_RATIO,
                      why))
        par = e.get("parity")
        if par:
            ratio = par["ratio"]["median"]
            whole = par["parts"]["parity stage, whole"]["median"]
            bare = par["bare"]["total"]["median"]
            parts = par["parts"]
            big = sorted(((k, v["median"]) for k, v in parts.items() if k not in ("total", "parity stage, whole")),
                         key=lambda t: -t[1])[:4]
            why = "" if ratio <= TARGET_PARITY_RATIO else (
                "the work is one forward, one session and one run, but the stage also copies the model, "
                "re-serializes the graph and compares the outputs; largest parts: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in big))
            out.append(_t(f"{name}: parity <= one torch forward + one ORT session and run per provider and input "
                          f"(read as: time <= {TARGET_PARITY_RATIO}x those bare calls)",
                          f"{par['forwards']} forward, {par['sessions']} session, 1 run; {whole:.2f} s vs "
                          f"bare {bare:.2f} s, per-round ratio {fmt_ratio(ratio)}",
                          ratio <= TARGET_PARITY_RATIO and par["forwards"] == 1, why))
    pr = (ec or {}).get("processes")
    if pr:
        ratio = pr.get("ratio")
        c = pr.get("commands", {})
        y, b = c.get("yexport export --no-check", {}), c.get("bare export", {})
        why = ""
        if ratio is not None and ratio > TARGET_PROCESS_RATIO:
            c_ts = c.get("import torch", {}).get("median")
            c_os = c.get("import torch, onnxscript", {}).get("median")
            why = ("the command also imports onnxscript for tidy"
                   + (f" (+{c_os - c_ts:.2f} s over import torch)" if c_ts and c_os else "")
                   + " and runs tidy, infer_shapes and checker (section 1)")
        out.append(_t(f"yexport export yolov5s --no-check <= {TARGET_PROCESS_RATIO}x the bare export process",
                      f"{fmt_ratio(ratio)} ({fmt_s(y.get('median'))} s vs {fmt_s(b.get('median'))} s; CPU time "
                      f"{fmt_s(y.get('cpu_median'))} s vs {fmt_s(b.get('cpu_median'))} s)"
                      if ratio is not None else pr.get("error", y.get("error", b.get("error", "-"))),
                      None if ratio is None else ratio <= TARGET_PROCESS_RATIO, why))
    for name, q in (r.get("quality") or {}).items():
        if "error" in q:
            out.append(_t(f"{name}: graph quality", "-", None, q["error"]))
            continue
        s = q["summary"]
        f = q["files"]
        if s.get("measured"):
            out.append(_t(f"{name}: default (fused) variant fastest on ORT CPU or within noise",
                          f"default {s['default_ms']:.1f} ms, fastest {s['fastest']} {s['fastest_ms']:.1f} ms; "
                          f"per-round default/fastest {s['default_over_fastest']:.3f} "
                          f"(p25–p75 {s['default_over_fastest_p25']:.3f}–{s['default_over_fastest_p75']:.3f})",
                          s["within_noise"], "" if s["within_noise"] else
                          "the default was slower than the fastest variant in more than 3 of 4 rounds"))
            if "keep_bn_over_fused_ms" in s:
                out.append(_t(f"{name}: keep-bn's cost over fused shown",
                              f"{s['keep_bn_over_fused_ms']:+.1f} ms (median per-round ratio "
                              f"{fmt_ratio(s['keep_bn_over_fused_ratio'])})", True))
        if name == "yolov5s":
            d = f.get("fused", {})
            if "nodes" in d:
                out.append(_t(f"yolov5s default static export <= {TARGET_STATIC_NODES} nodes without a simplifier",
                              f"{d['nodes']} nodes", d["nodes"] <= TARGET_STATIC_NODES))
            di = f.get("dynamic+int-shapes", {})
            if "nodes" in di:
                out.append(_t("yolov5s --dynamic batch --int-shapes: 0 Shape, 0 Gather",
                              f"{di['Shape']} Shape, {di['Gather']} Gather",
                              di["Shape"] == 0 and di["Gather"] == 0))
            da = f.get("dynamic-all+simplify", {})
            if "nodes" in da:
                out.append(_t(f"yolov5s --dynamic all --simplify < {TARGET_DYNAMIC_ALL_SIMPLIFIED} nodes",
                              f"{da['nodes']} nodes", da["nodes"] < TARGET_DYNAMIC_ALL_SIMPLIFIED))
    su = r.get("startup")
    if su:
        if "error" in su:
            out.append(_t("start-up", "-", None, su["error"]))
        else:
            c = su["commands"]
            imports = {k: v.get("imports", {}) for k, v in c.items() if k.startswith("yexport")
                       and "KEEP-BN" not in k}
            torch_in = [k for k, v in imports.items() if v.get("torch")]
            unknown = [k for k, v in imports.items() if "torch" not in v]
            out.append(_t("torch not imported by yexport --help / inspect / diff",
                          "imported by: " + (", ".join(torch_in) or "none") +
                          (f" (unknown: {', '.join(unknown)})" if unknown else ""),
                          None if unknown else not torch_in))
            h = c.get("yexport --help", {})
            if "median" in h:
                out.append(_t(f"yexport --help under {TARGET_HELP_S} s", f"{h['median']:.3f} s",
                              h["median"] < TARGET_HELP_S, "" if h["median"] < TARGET_HELP_S else
                              f"python -c pass alone takes {fmt_s(c.get('python -c pass', {}).get('median'), 3)} s "
                              "on this machine"))
            for k in ("yexport inspect FILE", "yexport diff FILE FILE"):
                v = c.get(k, {})
                if "x_floor" in v:
                    out.append(_t(f"{k.split(' FILE')[0]} within {TARGET_STARTUP_RATIO}x the onnx.load floor",
                                  f"{v['x_floor']:.2f}x ({v['median']:.2f} s; in CPU time "
                                  f"{fmt_ratio(v.get('x_floor_cpu'))})", v["x_floor"] <= TARGET_STARTUP_RATIO,
                                  "" if v["x_floor"] <= TARGET_STARTUP_RATIO else
                                  f"wall-time median of {su['repeat']} runs on a busy machine; see the CPU-time "
                                  "ratio"))
    sc = r.get("scale")
    if sc:
        if "error" in sc:
            out.append(_t("scale (bench/graph_scale.py)", "-", None, sc["error"]))
        else:
            w = sc.get("within_target_at_50k") or {}
            if w:
                bad = [k for k, v in w.items() if not v]
                out.append(_t("inspect / snapshot / diff under 3 s CPU at 50k nodes",
                              "all under" if not bad else "over: " + ", ".join(bad), not bad))
            else:
                out.append(_t("inspect / snapshot / diff under 3 s CPU at 50k nodes", "-", None,
                              "quick mode skips the 50k-node graphs"))
            out.append(_t("inspect of a 1 GiB external-data model far below the weight size (peak memory)",
                          f"{sc['external']['inspect']['peak_growth_mib']:.0f} MiB peak growth",
                          bool(sc.get("external_inspect_far_below_weights"))))
            for label, v in sc.get("floor_ratios", {}).items():
                out.append(_t(f"50k nodes: {label} <= {v['target']:g}x the bare onnx.load", f"{v['ratio']:.2f}x CPU",
                              v["ratio"] <= v["target"]))
    off = r.get("official")
    if off is not None:
        if "ratios" not in off:
            for label in ("export (checked) / official", "export --no-check / official", "check / export --no-check"):
                out.append(_t(label, "-", None, off.get("skipped") or off.get("error", "")))
        else:
            for label, v in off["ratios"].items():
                out.append(_t(f"{label} <= {v['target']:g}x (CPU, per round)",
                              f"{v['cpu']['median']:.2f}x CPU, {v['wall']['median']:.2f}x wall",
                              v["cpu"]["median"] <= v["target"]))
    return out


# ----------------------------------------------------------------------------------------- markdown


def _range(s: dict[str, Any], digits: int = 2) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['min']:.{digits}f}–{s['max']:.{digits}f}"


def md_export(ec: dict[str, Any]) -> list[str]:
    from _export_cost import STAGES

    L = ["## 1. Export cost (CPU, 640x640, default options: fused, TorchScript, opset 18)", ""]
    for name, e in ec.get("models", {}).items():
        if "pipeline" not in e:
            L += [f"### {name}: not measured ({e.get('error', 'no result')})", ""]
            continue
        p = e["pipeline"]
        st = p["stages"]
        total = p["export_one"]["median"]
        L += [f"### {name}: {p['repeat']} round(s), medians; {p['nodes']} nodes; parity {p['parity']}", "",
              "| stage | median s | min–max s | share of export_one |", "|---|--:|--:|--:|"]
        b = e.get("build", {})
        L.append(f"| build (load_model; not part of export_one) | {fmt_s(b.get('median'))} | {_range(b)} | – |")
        for k in STAGES[1:]:
            if k in st:
                L.append(f"| {k} | {st[k]['median']:.3f} | {_range(st[k], 3)} | {st[k]['median'] / total:.0%} |")
            elif k != "build":
                L.append(f"| {k} | – | – | not run with the default options |")
        for label, key in (("**export_one, end to end**", "export_one"),
                           ("export_one − parity stage (same runs)", "export_one_minus_parity"),
                           ("**pipeline without parity** (export_one with check off, own runs)",
                            "pipeline_without_parity"),
                           ("prepare+capture+metadata+write (what a bare export also does)", "bare_counterparts"),
                           ("**bare torch.onnx.export** (same prepared model, TorchScript, opset 18)", "bare_export")):
            s = p[key]
            L.append(f"| {label} | {s['median']:.3f} | {_range(s, 3)} | – |")
        rs = p["ratio_without_parity_stats"]
        L += ["", f"- pipeline without parity / bare export, median of the per-round ratios: "
                  f"**{fmt_ratio(p['ratio_without_parity'])}** (range {rs['min']:.2f}–{rs['max']:.2f}; ratio of the "
                  f"medians {fmt_ratio(p['ratio_of_medians'])}; in CPU time {fmt_ratio(p['ratio_without_parity_cpu'])};"
                  f" target <= {TARGET_PIPELINE_RATIO}x)",
              f"- prepare+capture+metadata+write / bare: {fmt_ratio(p['ratio_counterparts'])}; capture stage / bare: "
              f"{fmt_ratio(p['ratio_capture'])}",
              "- the rest is what the bare export does not do: tidy (constant folding, BN-aware rewrites, "
              "CSE), infer_shapes (a size on every edge) and checker (full onnx.checker + BatchNorm promises)", ""]
        par = e.get("parity")
        if par:
            parts, bare = par["parts"], par["bare"]
            L += [f"Parity check, {par['repeat']} round(s) after a warm-up: the stage as a whole and its parts, "
                  f"each timed alone, against a bare torch forward and a bare onnxruntime session + run on the same "
                  f"file and input ({par['forwards']} input {' '.join('x'.join(map(str, s)) for s in par['shapes'])}"
                  ", 1 provider: CPU)", "",
                  "| part | parity's part, median s | bare call, median s |", "|---|--:|--:|"]
            for k in parts:
                label = f"**{k}**" if k in ("total", "parity stage, whole") else k
                b = bare.get(k if k != "parity stage, whole" else "total", {}).get("median")
                L.append(f"| {label} | {parts[k]['median']:.3f} | {fmt_s(b, 3)} |")
            if "parity" in st:
                L.append(f"| parity stage inside export_one (rounds above) | {st['parity']['median']:.3f} | – |")
            rr = par["ratio"]
            L += ["", f"- parity stage / (bare forward + session + run), median of the per-round ratios: "
                      f"**{fmt_ratio(rr['median'])}** (range {rr['min']:.2f}–{rr['max']:.2f})", ""]
    pr = ec.get("processes")
    if pr:
        if "error" in pr:
            L += [f"### Whole processes: not measured ({pr['error']})", ""]
        else:
            L += [f"### Whole processes, yolov5s, {pr['repeat']} round(s) (round-robin), medians", "",
                  "| command | median s | min–max s | CPU s (median) | runs |", "|---|--:|--:|--:|--:|"]
            for k, v in pr["commands"].items():
                label = {"import torch": "`python -c \"import torch\"`",
                         "import torch, onnxscript": "`python -c \"import torch, onnxscript\"` (tidy imports onnxscript for dynamic, training and dynamo graphs)",
                         "bare export": "bare export process (load_model + torch.onnx.export)",
                         "yexport export --no-check": "`yexport export yolov5s --no-check -o TMP`"}.get(k, k)
                if "error" in v:
                    L.append(f"| {label} | failed: {v['error']} | | | |")
                else:
                    L.append(f"| {label} | {v['median']:.2f} | {_range(v)} | {fmt_s(v.get('cpu_median'))} | {v['n']} |")
            L.append("")
            L.append(f"- yexport export / bare export process: **{fmt_ratio(pr.get('ratio'))}** "
                     f"(target <= {TARGET_PROCESS_RATIO}x)")
            ys = ec.get("models", {}).get("yolov5s", {}).get("pipeline", {}).get("stages", {}).get("capture")
            y = pr["commands"].get("yexport export --no-check", {}).get("median")
            if ys and y:
                L.append(f"- whole command / its export step (capture stage, {ys['median']:.2f} s): "
                         f"{y / ys['median']:.1f}x; the official export.py's whole command is measured in "
                         "section 5 (when OFFICIAL_REPO and OFFICIAL_PYTHON are given)")
            L.append("")
    return L


def md_quality(qd: dict[str, Any], cuda: dict[str, Any]) -> list[str]:
    L = ["## 2. Graph quality (1x3x640x640; parity not re-checked here, section 1 checks the default)", ""]
    for name, q in qd.items():
        if "error" in q:
            L += [f"### {name}: not measured ({q['error']})", ""]
            continue
        lat = q["latency_cpu"]
        off = OFFICIAL.get(name, {})
        L += [f"### {name}: onnxruntime CPU latency, median of {q['runs']} runs after {q['warmup']} warm-up, "
              f"intra-op threads {q['threads']}, rounds interleaved across variants", "",
              "| variant | nodes | BatchNorm | Shape | Gather | size MB | ORT CPU median ms | p25–p75 ms | "
              "per-round ratio to default (p25–p75) | official export.py |",
              "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
        for label, v in VARIANTS:
            f = q["files"].get(v, {})
            m = lat.get(v, {})
            o = off.get(v)
            official = ", ".join(f"{val} {k}" if k != "nodes" else f"{val} nodes" for k, val in o.items()) if o else ""
            if "nodes" not in f:
                L.append(f"| {label} | failed: {f.get('error', '?')} | | | | | | | | {official} |")
                continue
            if "median" in m:
                ms, iqr = f"{m['median']:.1f}", f"{m['p25']:.1f}–{m['p75']:.1f}"
                pr = m.get("paired_vs_default")
                rel = f"{pr['median']:.3f} ({pr['p25']:.3f}–{pr['p75']:.3f})" if pr else "-"
            else:
                ms, iqr, rel = m.get("error", "-"), "-", "-"
            note = f" ({f['error']})" if "error" in f else ""
            L.append(f"| {label}{note} | {f['nodes']} | {f['BatchNormalization']} | {f['Shape']} | {f['Gather']} | "
                     f"{f['bytes'] / 1e6:.2f} | {ms} | {iqr} | {rel} | {official} |")
        s = q["summary"]
        L.append("")
        if s.get("measured"):
            L.append(f"- fastest by median: {s['fastest']} ({s['fastest_ms']:.1f} ms); default {s['default_ms']:.1f} ms; "
                     f"per-round ratio default/fastest {s['default_over_fastest']:.3f} (p25–p75 "
                     f"{s['default_over_fastest_p25']:.3f}–{s['default_over_fastest_p75']:.3f}): "
                     f"{'within noise' if s['within_noise'] else 'NOT within noise'} (within noise: the default was "
                     "no slower than the fastest in at least a quarter of the rounds)")
            if "keep_bn_over_fused_ms" in s:
                lo, hi = s["keep_bn_over_fused_ratio_iqr"]
                L.append(f"- keep-bn costs {s['keep_bn_over_fused_ms']:+.1f} ms over fused by median, per-round ratio "
                         f"{fmt_ratio(s['keep_bn_over_fused_ratio'])} (p25–p75 {lo:.3f}–{hi:.3f}) on onnxruntime CPU "
                         "(onnxruntime folds Conv+BatchNormalization itself when it creates the session, so the "
                         "difference is small)")
        if off:
            L.append("- official export.py node counts: recorded figures (written into bench/_quality.py), not measured in "
                     "this run; its --dynamic is our dynamic-all. The "
                     "official whole command is measured in section 5 when OFFICIAL_REPO and OFFICIAL_PYTHON are given")
        if "latency_cuda" in q:
            L += ["", f"CUDA ({cuda.get('device', '')}), onnxruntime CUDAExecutionProvider, median ms:", "",
                  "| variant | median ms | p25–p75 ms |", "|---|--:|--:|"]
            for label, v in VARIANTS:
                m = q["latency_cuda"].get(v, {})
                if "median" in m:
                    L.append(f"| {label} | {m['median']:.2f} | {m['p25']:.2f}–{m['p75']:.2f} |")
                else:
                    L.append(f"| {label} | {m.get('error', '-')} | |")
        L.append("")
    return L


def md_startup(su: dict[str, Any]) -> list[str]:
    L = ["## 3. Tool start-up (whole processes on the yolov5s ONNX file)", ""]
    if "error" in su:
        return [*L, f"not measured: {su['error']}", ""]
    L += [f"{su['repeat']} round(s), round-robin, after one warm-up run of each; medians", "",
          "| command | median s | min–max s | CPU s (median) | x floor | torch imported | onnxruntime imported "
          "| onnx imported |",
          "|---|--:|--:|--:|--:|---|---|---|"]
    for k, v in su["commands"].items():
        imp = v.get("imports", {})

        def yn(mod: str, imp: dict[str, Any] = imp) -> str:
            return "–" if not imp else ("?" if mod not in imp else ("yes" if imp[mod] else "no"))

        if "error" in v:
            L.append(f"| `{k}` | failed: {v['error']} | | | | | | |")
        else:
            L.append(f"| `{k}` | {v['median']:.3f} | {_range(v, 3)} | {fmt_s(v.get('cpu_median'), 3)} | "
                     f"{fmt_ratio(v.get('x_floor'))} | {yn('torch')} | {yn('onnxruntime')} | {yn('onnx')} |")
    L += ["", "- imports checked by running the same command in-process and then reading `sys.modules`;"
              " the diff of two different files (fused vs keep-bn) is shown for information", ""]
    return L


def md_scale(sc: dict[str, Any]) -> list[str]:
    L = ["## 4. Scale (bench/graph_scale.py)", ""]
    if "error" in sc:
        return [*L, f"not measured: {sc['error']}", ""]
    import graph_scale

    return [*L, graph_scale.format_table(sc), ""]


def report(r: dict[str, Any]) -> str:
    """The markdown report after the machine description."""
    cfg = r["settings"]
    L = [f"Mode: **{r['mode']}**. Repeats: export {cfg['export_repeat']} (models {', '.join(cfg['export_models'])}),"
         f" parity parts {cfg['parity_repeat']}, whole export processes {cfg['process_repeat']}, latency "
         f"{cfg['latency_runs']} runs after {cfg['latency_warmup']} warm-up (models "
         f"{', '.join(cfg['quality_models'])}), start-up {cfg['startup_repeat']}. Threads: torch "
         f"{r['machine']['torch_threads']}, onnxruntime intra-op {r['machine']['ort_intra_op_threads_latency']} "
         "for latency.", ""]
    if r["mode"] == "quick":
        L += ["Quick mode skips: yolov5n (sections 1 and 2 run yolov5s only), repeated whole export processes and "
              "builds (one run each: single timings, not medians), the 50k-node scale graphs and the 1 GiB "
              "snapshot; in-process export and parity rounds, latency runs and start-up rounds are fewer.", ""]
    cuda = r.get("cuda", {})
    L += [f"CUDA: onnxruntime latency per variant measured on {cuda.get('device')} (section 2)"
          if cuda.get("usable") else
          f"no GPU: CUDA not measured ({cuda.get('reason', 'not probed')})", ""]
    if "export" in r:
        L += md_export(r["export"])
    if "quality" in r:
        L += md_quality(r["quality"], cuda)
    if "startup" in r:
        L += md_startup(r["startup"])
    if "scale" in r:
        L += md_scale(r["scale"])
    if "official" in r:
        from _official import markdown

        L += markdown(r["official"])
    L += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for t in r["targets"]:
        res = t["status"] + (f": {t['why']}" if t["why"] else "")
        L.append(f"| {t['target']} | {t['measured']} | {res} |")
    L += ["", f"Total benchmark time {r['seconds']:.0f} s; load average at start {r['machine']['load_average_start']},"
              f" at end {r['load_average_end']} (other work on the machine makes every number noisier)."]
    return "\n".join(L) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return x.name
    if isinstance(x, float) and x != x:
        return None
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, yolov5s only, quick scale run (~3 min)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--models", default=None, help="models for sections 1 and 2 (default: yolov5n,yolov5s; "
                                                   "yolov5s with --quick)")
    ap.add_argument("--out", default=str(BENCH), help="folder for results.json and results.md")
    args = ap.parse_args()
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)} (choose from {', '.join(SECTIONS)})")
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    r = run(args.quick, sections, models)
    body = report(r)
    print(body, flush=True)
    from exporter.io import atomic_write

    out = Path(args.out)
    head = f"# yexport benchmarks ({r['mode']} mode)\n\n## Machine\n{describe_machine(r['machine'])}\n\n"
    atomic_write(out / "results.md", head + body)
    atomic_write(out / "results.json", json.dumps(_jsonable(r), indent=2) + "\n")
    log(f"wrote {out / 'results.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
