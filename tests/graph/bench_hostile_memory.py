"""Peak memory of `yexport graph`, `diff` and `snapshot` on memory bombs (issue 11).

    .venv/bin/python tests/graph/bench_hostile_memory.py /tmp/h11mem           # real 2.5 GiB data files
    .venv/bin/python tests/graph/bench_hostile_memory.py /tmp/h11mem --sparse  # sparse files (quicker)

Makes (a) ``bomb/bomb.onnx``: about 100 bytes declaring a 671M-element float32 external tensor whose
data file does not exist, and (b) ``big_a/`` and ``big_b/``: a Conv whose 2.5 GiB weight is external
data (the two differ in their last element), then runs each command under ``/usr/bin/time -v`` and
prints the maximum resident set size. Not collected by pytest (the files take minutes to write).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
YEXPORT = [sys.executable, "-m", "exporter.cli.main"]
N = 671_088_640  # float32 elements: 2.5 GiB


def model(folder: Path, location: str, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n // 64, 64, 1, 1])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        w.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "big", [x], [y], [w])
    p = folder / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


def data_file(path: Path, n: int, last: float, sparse: bool) -> None:
    with open(path, "wb") as fh:
        if sparse:
            fh.truncate(4 * (n - 1))
            fh.seek(0, 2)
        else:
            block = np.arange(1 << 20, dtype=np.float32)
            for _ in range((n - 1) // block.size):
                fh.write(block.tobytes())
            fh.write(np.zeros((n - 1) % block.size, np.float32).tobytes())
        fh.write(np.float32(last).tobytes())


def bomb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[N])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "bomb", [x], [y], [w])
    p = folder / "bomb.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    return p


def measure(args: list[str]) -> tuple[int, int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *YEXPORT, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("yexport")][-1:] or [proc.stdout.strip()[-60:]]
    return proc.returncode, rss, wall, last[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--sparse", action="store_true", help="sparse data files (reads return zeros, fast)")
    opts = ap.parse_args()
    d = opts.dir.resolve()
    b = bomb(d / "bomb")
    a_p, b_p = model(d / "big_a", "w.bin", N), model(d / "big_b", "w.bin", N)
    for p, last in ((a_p, 1.0), (b_p, 1.5)):
        if not (p.parent / "w.bin").exists():
            data_file(p.parent / "w.bin", N, last, opts.sparse)
    runs = [
        ("graph", ["graph", str(b), "-o", str(d / "bomb.dot")]),
        ("snapshot", ["snapshot", str(b)]),
        ("diff", ["diff", str(b), str(b)]),
        ("graph", ["graph", str(a_p), "-o", str(d / "big.dot")]),
        ("snapshot", ["snapshot", str(a_p)]),
        ("diff", ["diff", str(a_p), str(b_p)]),
    ]
    print(f"{'command':<60} {'exit':>4} {'max RSS':>10} {'wall':>7}")
    for _, args in runs:
        code, rss, wall, tail = measure(args)
        shown = " ".join(Path(a).name if "/" in a else a for a in args)
        print(f"{shown:<60} {code:>4} {rss / 1024:>7.0f} MB {wall:>6.1f}s  {tail}")


if __name__ == "__main__":
    main()
