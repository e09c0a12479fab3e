"""A model over 2 GiB, end to end: export, check, and every reader, one phase per process so that the
peak memory of each can be measured on its own.

    /usr/bin/time -v python bench/big_model.py export OUT     # export without the check
    /usr/bin/time -v python bench/big_model.py check OUT      # the float64-rule check of OUT/big.onnx
    python bench/big_model.py readers OUT                     # inspect, snapshot, diff, graph, view (HTTP)

The model (``tests.pipeline.test_external_data.Big``: about 590M float32 parameters in Linear layers)
is rebuilt identically in each phase from its fixed fill, so ``check`` compares against the same weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _model():
    from tests.pipeline.test_external_data import Big

    return Big().eval()


def export(out: Path) -> None:
    import exporter

    t0 = time.perf_counter()
    model = _model()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model: {size / 2**30:.2f} GiB of float32 weights, built in {time.perf_counter() - t0:.1f} s")
    [r] = exporter.export(model, out_dir=out, name="big", img=(32, 32), check=False)
    for rec in r.records:
        print(f"  {rec.name:13s} {rec.seconds:7.1f} s  {rec.changed[:110]}")
    print(f"ok={r.ok} {r.path} + {r.path.name}.data: {r.size / 2**30:.2f} GiB in all")


def check(out: Path) -> None:
    import exporter

    model = _model()
    report = exporter.check_parity(out / "big.onnx", model, inputs=1)
    print(report.format())
    sys.exit(0 if report else 1)


def readers(out: Path) -> None:
    import urllib.request

    from click.testing import CliRunner

    from exporter.cli.main import cli
    from exporter.graph.netron import serve
    from exporter.io import read_manifest

    f = out / "big.onnx"
    t0 = time.perf_counter()
    m = read_manifest(f)
    print(f"manifest: both sha256 match ({m['bytes']:,} + {m['data_bytes']:,} bytes) in {time.perf_counter() - t0:.1f} s")
    for args in (["inspect", f], ["snapshot", f, "-o", out / "big.snapshot.txt"], ["diff", f, f],
                 ["graph", f, "-o", out / "big.dot"]):
        t0 = time.perf_counter()
        r = CliRunner().invoke(cli, [str(a) for a in args])
        print(f"yexport {args[0]}: exit {r.exit_code} in {time.perf_counter() - t0:.1f} s: "
              f"{(r.output.strip().splitlines() or [''])[-1][:100]}")
    with serve(f) as server:
        got = 0
        with urllib.request.urlopen(server.model_url.rsplit("/", 1)[0] + "/" + m["data_file"], timeout=60) as resp:
            while block := resp.read(1 << 24):
                got += len(block)
        print(f"yexport view: the server streams {m['data_file']} ({got:,} bytes) beside {server.model_url}")


if __name__ == "__main__":
    phase, where = sys.argv[1], Path(sys.argv[2])
    {"export": export, "check": check, "readers": readers}[phase](where)
