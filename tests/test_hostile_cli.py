"""The hostile-input table: bad files, bad flags and bad output paths against every command.

Each case must end with exit status 2 and exactly one stderr line starting ``yexport: error:``, no
traceback, nothing left in its output folder, and every input file byte for byte unchanged. Most
cases run in-process (click's CliRunner); FIFOs, ``view`` (which would serve forever on success) and
Ctrl-C run in subprocesses with a timeout, so a hang fails the case instead of the suite.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from exporter.cli.main import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60
VERBOSE = bool(os.environ.get("YEXPORT_TEST_VERBOSE"))  # print one line per case (with pytest -s)
MODEL_COMMANDS = ("info", "export", "fuse-check", "profile", "prune-report")
ONNX_COMMANDS = ("inspect", "snapshot", "graph", "render", "check")


class Reduce:
    """Pickles as a call of ``posix.system``: what a malicious checkpoint names."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def laughs_yaml(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nnc: 80\nanchors: [[10,13, 16,30, 33,23]]\nbackbone: *a{levels}\nhead: []\n"


def laughs_list() -> list:
    a: list = ["lol"] * 10
    for _ in range(9):
        a = [a] * 10
    return a


def toy_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@dataclass
class Files:
    root: Path
    inputs: dict[str, Path]  # name -> hostile (or valid) input file
    fifo: Path
    marker: Path  # created if the posix.system pickle ever runs


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("hostile")
    d = root / "in"
    d.mkdir()
    rng = __import__("random").Random(0)
    marker = root / "PWNED"
    inp: dict[str, Path] = {"dir": d / "folder"}
    inp["dir"].mkdir()
    for ext in ("onnx", "pt", "yaml"):
        (d / f"empty.{ext}").write_bytes(b"")
        inp[f"empty.{ext}"] = d / f"empty.{ext}"
        (d / f"random.{ext}").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
        inp[f"random.{ext}"] = d / f"random.{ext}"
    whole = d / "whole.pt"
    torch.save({"w": torch.zeros(4096)}, whole)
    data = whole.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    whole.unlink()
    inp["truncated.pt"] = d / "truncated.pt"
    torch.save({"model": Reduce(marker)}, d / "system.pt")
    inp["system.pt"] = d / "system.pt"
    with zipfile.ZipFile(d / "system.pt") as z:
        assert any(b"system" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": laughs_list()}, d / "laughs.pt")
    inp["laughs.pt"] = d / "laughs.pt"
    (d / "laughs.yaml").write_text(laughs_yaml())
    inp["laughs.yaml"] = d / "laughs.yaml"
    base = (ROOT / "fixtures" / "models" / "yolov5n.yaml").read_text()
    for tag, line in (("nc-abc", 'nc: "abc"'), ("nc-0", "nc: 0"), ("nc--1", "nc: -1"), ("backbone-5", None),
                      ("depth--1", None)):
        text = base
        if tag.startswith("nc"):
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("nc:")) + f"\n{line}\n"
        elif tag == "backbone-5":
            text = text.split("backbone:")[0] + "backbone: 5\nhead: []\n"
        else:
            text = text.replace("depth_multiple: 0.33", "depth_multiple: -0.33")
        (d / f"{tag}.yaml").write_text(text)
        inp[f"{tag}.yaml"] = d / f"{tag}.yaml"
    inp["toy.onnx"] = toy_onnx(d / "toy.onnx")
    (d / "trust.yaml").write_text("trust-checkpoint: true\n")
    inp["trust.yaml"] = d / "trust.yaml"
    (d / "collide.json").write_bytes(b"{}")  # export -o in: collide.json would be its manifest
    inp["collide.json"] = d / "collide.json"
    inp["plain"] = d / "plain.txt"
    inp["plain"].write_text("a file where a folder should be\n")
    fifo = root / "fifo.pt"
    os.mkfifo(fifo)
    return Files(root, inp, fifo, marker)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"


def output_args(cmd: str, out: Path) -> list[str]:
    """Each writing command writes into ``out`` (which must stay empty)."""
    return {"export": ["-o", str(out), "--img", "64", "--no-check"], "snapshot": ["-o", str(out / "s.txt")],
            "graph": ["-o", str(out / "g.dot")], "render": ["-o", str(out / "r.png")],
            "prune-report": ["--l1-unstructured", "0.1", "--save", str(out / "p.pt")],
            "info": ["--img", "64"], "fuse-check": ["--img", "64"], "profile": ["--img", "64", "--runs", "1"]}.get(cmd, [])


def table(f: Files) -> list[tuple[str, list[str]]]:
    """(id, argv with {out} standing for the case's output folder)."""
    i = f.inputs
    cases: list[tuple[str, list[str]]] = []
    model_inputs = ["missing", "dir", "empty.pt", "random.pt", "empty.yaml", "random.yaml", "random.onnx",
                    "truncated.pt", "system.pt", "laughs.pt", "laughs.yaml", "nc-abc.yaml", "nc-0.yaml",
                    "nc--1.yaml", "backbone-5.yaml", "depth--1.yaml"]
    for cmd in MODEL_COMMANDS:
        names = model_inputs if cmd in ("info", "export") else ["missing", "dir", "random.pt", "random.yaml",
                                                               "system.pt", "laughs.yaml", "nc-0.yaml"]
        for name in names:
            path = str(f.root / "in" / "missing.pt") if name == "missing" else str(i[name])
            cases.append((f"{cmd}:{name}", [cmd, path, *output_args(cmd, Path("{out}"))]))
    for cmd in (*ONNX_COMMANDS, "diff", "report"):
        for name in ("missing", "dir", "empty.onnx", "random.onnx", "random.pt", "laughs.yaml"):
            path = str(f.root / "in" / "missing.onnx") if name == "missing" else str(i[name])
            argv = [cmd, path, *output_args(cmd, Path("{out}"))]
            if cmd == "diff":
                argv = ["diff", path, str(i["toy.onnx"])]
            cases.append((f"{cmd}:{name}", argv))
    cases += [  # output onto an input, unwritable outputs: refused before any work
        ("snapshot:onto-input", ["snapshot", str(i["toy.onnx"]), "-o", str(i["toy.onnx"])]),
        ("graph:onto-input", ["graph", str(i["toy.onnx"]), "-o", str(i["toy.onnx"])]),
        ("render:onto-input", ["render", str(i["toy.onnx"]), "-o", str(i["toy.onnx"])]),
        ("prune-report:onto-input", ["prune-report", str(i["random.pt"]), "--l1-unstructured", "0.1", "--save",
                                     str(i["random.pt"])]),
        ("export:onto-input", ["export", str(i["collide.json"]), "-o", str(i["collide.json"].parent), "--no-check"]),
        ("export:unwritable", ["export", "yolov5n", "-o", "/proc/yexport-out", "--no-check", "--img", "64"]),
        ("export:parent-is-file", ["export", "yolov5n", "-o", str(i["plain"] / "sub"), "--no-check"]),
        ("snapshot:unwritable", ["snapshot", str(i["toy.onnx"]), "-o", "/proc/yexport/s.txt"]),
        ("graph:parent-is-file", ["graph", str(i["toy.onnx"]), "-o", str(i["plain"] / "g.dot")]),
        ("render:unwritable", ["render", str(i["toy.onnx"]), "-o", "/proc/yexport/r.png"]),
        ("prune-report:unwritable", ["prune-report", "yolov5n", "--l1-unstructured", "0.1", "--save",
                                     "/proc/yexport/p.pt"]),
        ("snapshot:output-is-dir", ["snapshot", str(i["toy.onnx"]), "-o", str(i["dir"])]),
        # bad flags
        ("info:img-100000", ["info", "yolov5n", "--img", "100000"]),
        ("export:providers-comma", ["export", "yolov5n", "--providers", ",", "-o", "{out}"]),
        ("export:atol-nan", ["export", "yolov5n", "--atol", "nan", "-o", "{out}"]),
        ("check:atol-inf", ["check", str(i["toy.onnx"]), "--atol", "inf"]),
        ("export:device", ["export", "yolov5n", "--device", "cuda:99" if torch.cuda.is_available() else "cuda",
                           "-o", "{out}"]),
        ("export:device-name", ["export", "yolov5n", "--device", "tpu", "-o", "{out}"]),
        ("export:images-missing", ["export", "yolov5n", "--images", str(f.root / "no-images"), "-o", "{out}"]),
        ("export:images-empty", ["export", "yolov5n", "--images", str(i["dir"]), "-o", "{out}"]),
        ("export:name-with-folder", ["export", "yolov5n", "--name", "../escape", "-o", "{out}"]),
        ("export:trust-in-config", ["export", "--config", str(i["trust.yaml"]), "yolov5n", "-o", "{out}"]),
        ("export:laughs-config", ["export", "--config", str(i["laughs.yaml"]), "yolov5n", "-o", "{out}"]),
        ("info:abs-not-builtin", ["info", str(f.root / "yolov5n")]),
        ("info:unknown-flag", ["info", "yolov5n", "--bogus"]),
        ("export:nc-0-flag", ["export", "yolov5n", "--nc", "0", "-o", "{out}"]),
        ("no-such-command", ["frobnicate"]),
    ]
    return cases


@dataclass
class Outcome:
    code: int | None
    stderr: str
    stdout: str
    exception: BaseException | None = None


def check_outcome(case: str, o: Outcome, out: Path) -> list[str]:
    problems = []
    if o.code != 2:
        problems.append(f"exit {o.code}")
    if o.exception is not None and not isinstance(o.exception, SystemExit):
        problems.append(f"raised {type(o.exception).__name__}: {o.exception}")
    if "Traceback" in o.stderr + o.stdout:
        problems.append("traceback")
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("yexport: error: "):
        problems.append(f"stderr {lines[:3]!r}")
    if out.exists() and any(out.rglob("*")):
        problems.append(f"left {sorted(p.name for p in out.rglob('*'))}")
    return [f"{case}: {p}" for p in problems]


def test_every_command_is_in_the_table(files: Files) -> None:
    covered = {argv[0] for _, argv in table(files)} | {"view"}
    assert set(COMMANDS) <= covered


def test_hostile_inputs_in_process(files: Files, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    before = {p: digest(p) for p in files.inputs.values()}
    cwd_before = sorted(os.listdir(tmp_path))
    problems: list[str] = []
    cases = table(files)
    t0 = time.perf_counter()
    for n, (case, argv) in enumerate(cases):
        out = tmp_path / "out" / str(n)
        argv = [a.replace("{out}", str(out)) for a in argv]
        t = time.perf_counter()
        r = CliRunner().invoke(cli, argv, catch_exceptions=True)
        o = Outcome(r.exit_code, r.stderr, r.stdout, r.exception)
        problems += check_outcome(case, o, out)
        if VERBOSE:
            print(f"{case:28} {o.code} {time.perf_counter() - t:5.2f}s {o.stderr.strip()[:150]}")
        if time.perf_counter() - t > TIMEOUT:
            problems.append(f"{case}: took {time.perf_counter() - t:.0f} s")
    seconds = time.perf_counter() - t0
    after = {p: digest(p) for p in files.inputs.values()}
    problems += [f"input changed: {p}" for p in before if before[p] != after[p]]
    assert not files.marker.exists(), "the posix.system pickle ran"
    new = set(os.listdir(tmp_path)) - set(cwd_before) - {"out"}
    assert not new, f"files left in the working folder: {new}"
    print(f"\n{len(cases)} in-process cases in {seconds:.1f} s, {len(problems)} problems")
    assert not problems, "\n".join(problems)


def run_subprocess(argv: list[str], timeout: float = TIMEOUT, sigint_after: float | None = None) -> Outcome:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli.main", *argv], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if sigint_after is not None:
            time.sleep(sigint_after)
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return Outcome(None, f"HANG after {timeout} s\n{err}", out)
    return Outcome(proc.returncode, err, out)


@pytest.mark.slow
def test_fifo_and_view_in_subprocesses(files: Files, tmp_path: Path) -> None:
    """A FIFO as input to every command (nothing ever writes to it: a reader would block forever), and
    ``view`` on the hostile files. Run four at a time."""
    i = files.inputs
    cases: list[tuple[str, list[str]]] = []
    for cmd in COMMANDS:
        argv = [cmd, str(files.fifo)]
        if cmd == "diff":
            argv.append(str(i["toy.onnx"]))
        elif cmd == "view":
            argv.append("--no-browse")
        cases.append((f"{cmd}:fifo", argv))
    cases.append(("export:fifo-config", ["export", "--config", str(files.fifo), "yolov5n"]))
    cases.append(("info:fifo-cfg", ["info", str(i["random.pt"]), "--cfg", str(files.fifo)]))
    for name in ("dir", "empty.onnx", "random.onnx", "laughs.yaml"):
        cases.append((f"view:{name}", ["view", str(i[name]), "--no-browse"]))
    before = {p: digest(p) for p in i.values()}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda c: run_subprocess(c[1]), cases))
    seconds = time.perf_counter() - t0
    problems = [p for (case, _), o in zip(cases, outcomes, strict=True)
                for p in check_outcome(case, o, tmp_path / "none")]
    if VERBOSE:
        for (case, _), o in zip(cases, outcomes, strict=True):
            print(f"{case:28} {o.code} {o.stderr.strip()[:150]}")
    problems += [f"input changed: {p}" for p in before if before[p] != digest(p)]
    print(f"\n{len(cases)} subprocess cases in {seconds:.1f} s, {len(problems)} problems")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    """SIGINT in the middle of an export that takes well over 4 s on any machine (yolov5x at 1280: the
    capture alone); it leaves no file behind."""
    out = tmp_path / "out"
    o = run_subprocess(["export", "yolov5x", "--img", "1280", "--no-check", "-o", str(out)], sigint_after=4.0)
    assert o.code == 130, (o.code, o.stderr)
    assert o.stderr.strip() == "yexport: error: interrupted", o.stderr
    assert not out.exists() or not [p for p in out.iterdir() if p.suffix in (".onnx", ".json")]


@pytest.mark.parametrize(("err", "needle"), [
    (OSError(28, "No space left on device"), "No space left on device"),
    (OSError(30, "Read-only file system"), "Read-only file system"),
    (PermissionError(13, "Permission denied"), "Permission denied"),
])
def test_an_unwritable_output_fails_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    err: OSError, needle: str) -> None:
    """Full disk, read-only mount, permission denied (simulated: these tests run as root on one disk)."""
    import exporter.models

    def fail_write(fd, data):
        raise err

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("exporter.paths.os.write", fail_write)
    monkeypatch.setattr(exporter.models, "load_model", never)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["export", "yolov5n", "-o", str(out), "--no-check"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.output
    assert not out.exists()


@pytest.mark.parametrize("err", [PermissionError(13, "Permission denied", "/some/file"),
                                 OSError(28, "No space left on device", "/full/disk/x.onnx")])
def test_os_errors_inside_a_command_are_one_line(monkeypatch: pytest.MonkeyPatch, err: OSError) -> None:
    def boom(*a, **k):
        raise err

    monkeypatch.setattr("exporter.analysis.summary.summarize", boom)
    r = CliRunner().invoke(cli, ["info", "yolov5n", "--img", "64"])
    assert r.exit_code == 2, r.output
    assert r.stderr == f"yexport: error: {err.filename}: {err.strerror}\n"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), __import__("click").exceptions.Abort()])
def test_interrupts_exit_130_in_process(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr("exporter.analysis.summary.summarize", boom)
    r = CliRunner().invoke(cli, ["info", "yolov5n", "--img", "64"])
    assert r.exit_code == 130 and r.stderr == "yexport: error: interrupted\n", r.output
