"""Section 5, against the official exporter: whole commands on the same official checkpoint, interleaved.

Needs an official YOLOv5 checkout and a Python environment that runs it, given as
``OFFICIAL_REPO=/path/to/yolov5 OFFICIAL_PYTHON=/path/to/python``. Without them the section says
"official exporter: not measured (set OFFICIAL_REPO and OFFICIAL_PYTHON)" and measures nothing.

The checkpoint is made by the official code itself: its ``models/yolo.py`` builds the model from its
own ``models/MODEL.yaml``, our seeded weights are loaded into it (the state_dict names are the same),
and it is saved as an official training checkpoint (fp16 model object). Each round then runs, in a
rotated order:

* official: ``OFFICIAL_PYTHON export.py --weights CKPT --include onnx --imgsz 640`` (in OFFICIAL_REPO);
* ``yexport export CKPT`` (checked: parity against the float64 truth) and ``--no-check``;
* ``yexport check FILE --against CKPT`` on the file of the unchecked export.

Wall and CPU (user + system, of the child process tree) per command; ratios per round, medians over
rounds. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set for the official command only: its
``torch.load`` of a pickled model predates torch 2.6's ``weights_only`` default.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import log, stats

NOT_MEASURED = "official exporter: not measured (set OFFICIAL_REPO and OFFICIAL_PYTHON)"
TARGETS = {"export (checked) / official": 0.8, "export --no-check / official": 0.6,
           "check / export --no-check": 1.5}

_MAKE_CKPT = r"""
import sys, torch
from copy import deepcopy
sys.path.insert(0, ".")
from models.yolo import Model
cfg, sd_path, out = sys.argv[1:4]
m = Model(cfg)
m.load_state_dict(torch.load(sd_path), strict=True)
m.names = {i: f"class{i}" for i in range(m.yaml["nc"])}
torch.save({"epoch": -1, "best_fitness": None, "model": deepcopy(m).half(), "ema": None, "updates": None,
            "optimizer": None, "opt": {}, "git": None, "date": None}, out)
"""


def configured() -> tuple[Path, Path] | None:
    repo, py = os.environ.get("OFFICIAL_REPO"), os.environ.get("OFFICIAL_PYTHON")
    if not repo or not py:
        return None
    return Path(repo).expanduser().resolve(), Path(py).expanduser()


def _timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds (user + system of the child and what it waited for) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "rc": proc.returncode, "err": err.decode("utf-8", "replace")[-600:]}


def make_checkpoint(repo: Path, py: Path, model: str, folder: Path) -> Path:
    import torch

    from exporter.models import load_model

    sd = folder / f"{model}-state_dict.pt"
    torch.save(load_model(model).model.state_dict(), sd)
    out = folder / f"{model}-official.pt"
    cfg = repo / "models" / f"{model}.yaml"
    proc = subprocess.run([str(py), "-c", _MAKE_CKPT, str(cfg), str(sd), str(out)], cwd=repo, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"the official code could not write the checkpoint: {proc.stderr.strip()[-400:]}")
    return out


def official(model: str, rounds: int, folder: Path) -> dict[str, Any]:
    """The section's numbers, or {"skipped": NOT_MEASURED} without an official checkout."""
    cfg = configured()
    if cfg is None:
        return {"skipped": NOT_MEASURED}
    repo, py = cfg
    if not (repo / "export.py").is_file():
        return {"skipped": f"official exporter: not measured ({repo}/export.py not found)"}
    work = folder / "official"
    work.mkdir(exist_ok=True)
    log(f"official: checkpoint of {model} written by the official code in {repo}")
    ckpt = make_checkpoint(repo, py, model, work)
    yexport = [sys.executable, "-m", "exporter.cli.main"]
    ours_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    off_env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    out_checked, out_plain = work / "checked", work / "plain"

    def run_official() -> dict[str, Any]:
        off_ckpt = work / "off" / ckpt.name  # export.py writes beside the weights: its own copy
        off_ckpt.parent.mkdir(exist_ok=True)
        shutil.copy(ckpt, off_ckpt)
        return _timed([str(py), "export.py", "--weights", str(off_ckpt), "--include", "onnx", "--imgsz", "640"],
                      cwd=repo, env=off_env)

    def fresh(d: Path) -> Path:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    file = out_plain / f"{ckpt.stem}.onnx"
    commands = {
        "official export.py": run_official,
        "yexport export (checked)": lambda: _timed([*yexport, "export", str(ckpt), "-o", str(fresh(out_checked))],
                                                   env=ours_env),
        "yexport export --no-check": lambda: _timed([*yexport, "export", str(ckpt), "--no-check", "-o",
                                                     str(fresh(out_plain))], env=ours_env),
        "yexport check --against": lambda: _timed([*yexport, "check", str(file), "--against", str(ckpt)],
                                                  env=ours_env),
    }
    names = list(commands)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for r in range(rounds):
        # rotate, but the check needs the unchecked export's file: it always comes after it
        order = names[r % 3:3] + names[:r % 3] + [names[3]]
        for name in order:
            log(f"official: round {r + 1}/{rounds}: {name}")
            res = commands[name]()
            if res["rc"] != 0:
                raise RuntimeError(f"{name} failed (exit {res['rc']}): {res['err'].strip()[-400:]}")
            runs[name].append(res)
    out: dict[str, Any] = {"model": model, "rounds": rounds, "repo": str(repo), "python": str(py),
                           "commands": {k: {"wall": stats([x["wall"] for x in v]), "cpu": stats([x["cpu"] for x in v])}
                                        for k, v in runs.items()}}
    pairs = {"export (checked) / official": ("yexport export (checked)", "official export.py"),
             "export --no-check / official": ("yexport export --no-check", "official export.py"),
             "check / export --no-check": ("yexport check --against", "yexport export --no-check")}
    out["ratios"] = {}
    for label, (num, den) in pairs.items():
        out["ratios"][label] = {
            kind: stats([a[kind] / b[kind] for a, b in zip(runs[num], runs[den], strict=True)])
            for kind in ("cpu", "wall")}
        out["ratios"][label]["target"] = TARGETS[label]
    return out


def markdown(o: dict[str, Any]) -> list[str]:
    L = ["## 5. Against the official exporter (whole commands, same checkpoint)", ""]
    if "skipped" in o or "error" in o:
        return [*L, o.get("skipped") or f"official exporter: not measured ({o['error']})", ""]
    L += [f"{o['model']}, official checkpoint written by the official code ({o['repo']}, {o['python']}); "
          f"{o['rounds']} round(s), commands interleaved in a rotated order; medians (min–max)", "",
          "| command | wall s | CPU s (user+sys) |", "|---|--:|--:|"]
    for k, v in o["commands"].items():
        w, c = v["wall"], v["cpu"]
        L.append(f"| {k} | {w['median']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | "
                 f"{c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f}) |")
    L += ["", "| ratio (per round, median) | CPU | wall | target |", "|---|--:|--:|--:|"]
    for k, v in o["ratios"].items():
        L.append(f"| {k} | {v['cpu']['median']:.2f} | {v['wall']['median']:.2f} | <= {v['target']:g} |")
    L.append("")
    return L


def main() -> None:
    import argparse
    import json
    import tempfile

    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(description="yexport against the official exporter (OFFICIAL_REPO, OFFICIAL_PYTHON)")
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="yexport-official-") as tmp:
        o = official(args.model, args.rounds, Path(tmp))
    print("\n".join(markdown(o)))
    print(json.dumps(o, indent=2, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
