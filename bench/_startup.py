"""Section 3, tool start-up: ``yexport --help``, ``inspect`` and ``diff`` as whole processes against
the floor ``python -c "import onnx; onnx.load(FILE)"``, and whether each command imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import executable, log, time_processes

MARK = "BENCH-IMPORTS "
#: the modules whose import is reported: onnx (with numpy and ml_dtypes) is only needed for shape
#: inference and value arrays, torch, onnxruntime and onnxsim never by the graph commands
HEAVY = ("torch", "onnxruntime", "onnxsim", "onnx", "ml_dtypes")
# runs the CLI in this interpreter, then reports which heavy modules it imported
_WRAPPER = f"""
import json, sys
from exporter.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="yexport")
except SystemExit:
    pass
HEAVY = {HEAVY!r}
print({MARK!r} + json.dumps({{m: m in sys.modules for m in HEAVY}}), file=sys.stderr)
"""


def imported(args: list[str]) -> dict[str, Any]:
    """Which of :data:`HEAVY` the command ``yexport ARGS`` imported."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True, text=True, timeout=300,
                          check=False)
    for line in reversed(proc.stderr.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"error": (proc.stderr.strip().splitlines() or ["no report"])[-1][:200]}


def startup(file: Path, other: Path | None, repeat: int) -> dict[str, Any]:
    yexport = executable("yexport")
    f = str(file)
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "floor: import onnx; onnx.load(FILE)": [sys.executable, "-c", f"import onnx; onnx.load({f!r})"],
        "yexport --help": [*yexport, "--help"],
        "yexport inspect FILE": [*yexport, "inspect", f],
        "yexport diff FILE FILE": [*yexport, "diff", f, f],
    }
    cli_args: dict[str, list[str]] = {"yexport --help": ["--help"], "yexport inspect FILE": ["inspect", f],
                                      "yexport diff FILE FILE": ["diff", f, f]}
    if other is not None and other.is_file():
        # two different files (exit status 1: they differ); shown for information
        commands["yexport diff FILE KEEP-BN-FILE"] = [*yexport, "diff", f, str(other)]
        cli_args["yexport diff FILE KEEP-BN-FILE"] = ["diff", f, str(other)]
    log(f"start-up: {repeat} round(s) of {len(commands)} commands")
    res = time_processes(commands, repeat, warmup=True, ok_codes={"yexport diff FILE KEEP-BN-FILE": (0, 1)})
    floor = res["floor: import onnx; onnx.load(FILE)"]
    for name, m in res.items():
        if floor.get("median") and "median" in m:
            m["x_floor"] = m["median"] / floor["median"]
            m["x_floor_cpu"] = m["cpu_median"] / floor["cpu_median"] if floor["cpu_median"] else None
        if name in cli_args:
            m["imports"] = imported(cli_args[name])
    return {"repeat": repeat, "file": f, "commands": res}
