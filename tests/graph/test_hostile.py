"""Hostile ONNX files against the graph commands: external data that points out of the model's
folder or at things that are not files, sizes that do not fit, memory bombs, markdown and DOT
injection. Each refusal is one line with exit 2; an audit hook on ``open`` proves that nothing
outside the model's folder was read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from exporter.cli.main import cli
from exporter.errors import InputError
from exporter.graph.diff import diff
from exporter.graph.graphviz import build_dot
from exporter.graph.load import load_onnx

ROOT = Path(__file__).resolve().parents[2]
BIG = 671_088_640  # elements: 2.5 GiB of float32, declared by a file of about 100 bytes

# -- reads outside the folder: an audit hook (hooks cannot be removed, so it records only while asked)

_OPENED: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextmanager
def opens() -> Iterator[list[str]]:
    seen: list[str] = []
    _OPENED.append(seen)
    try:
        yield seen
    finally:
        _OPENED.pop()


@contextmanager
def deadline(seconds: int = 30) -> Iterator[None]:
    """A hang (a FIFO read, an endless device) fails the test instead of blocking the suite."""
    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- models


def external_model(folder: Path, location: str, *, dims: tuple[int, ...] = (8, 3, 3, 3), offset: int | None = None,
                   length: int | None = None, name: str = "m.onnx") -> Path:
    """A Conv whose weight is external data at ``location`` (nothing is written there)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    if offset is not None:
        w.external_data.add(key="offset", value=str(offset))
    if length is not None:
        w.external_data.add(key="length", value=str(length))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    p = folder / name
    onnx.save(m, str(p))
    return p


def bomb(folder: Path, op: str = "Add") -> Path:
    """A file of about 100 bytes declaring a 671M-element external tensor that does not exist."""
    folder.mkdir(parents=True, exist_ok=True)
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[BIG])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BIG])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    p = folder / "bomb.onnx"
    onnx.save(m, str(p))
    assert p.stat().st_size < 200
    return p


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """model/ (the model's folder), a secret next to it and a subfolder secret outside it."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s3cret!" * 100)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.bin").write_bytes(b"\0" * 4096)
    return {"root": tmp_path, "model": tmp_path / "model", "secret": secret, "out": tmp_path / "out"}


def run(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


def commands(p: Path, out: Path) -> list[list[str | Path]]:
    out.mkdir(exist_ok=True)
    return [["inspect", p], ["snapshot", p], ["diff", p, p], ["graph", p, "-o", out / "g.dot"]]


def assert_refused(p: Path, world: dict[str, Path], match: str, cmds: list[list] | None = None) -> None:
    """Every command: exit 2, one line, no traceback, nothing opened outside the model's folder."""
    folder = p.parent.resolve()
    for cmd in cmds or commands(p, world["out"]):
        with deadline(), opens() as seen:
            code, out = run(*cmd)
        assert code == 2, (cmd, out)
        assert out.count("\n") == 1 and out.startswith("yexport: error: "), (cmd, out)
        assert match in out, (cmd, out)
        assert "Traceback" not in out
        assert_inside(seen, folder, world)


def assert_inside(seen: list[str], folder: Path, world: dict[str, Path]) -> None:
    """No open() of anything under the test's root but the model's folder and the output folder,
    nor of the system files hostile locations name."""
    root = world["root"].resolve()
    for path in seen:
        real = Path(os.path.realpath(path))
        assert str(real) not in ("/etc/passwd", "/etc/hostname", "/dev/zero"), path
        if real.is_relative_to(root):
            assert real.is_relative_to(folder) or real.is_relative_to(world["out"].resolve()), path


# -- locations that leave the folder, or are not files


@pytest.mark.parametrize("location", ["../../etc/passwd", "../secret.txt", "sub/../../secret.txt",
                                      "..\\secret.txt"])
def test_dotdot_locations_are_refused(world: dict[str, Path], location: str) -> None:
    p = external_model(world["model"], location)
    assert_refused(p, world, "leaves the model's folder")


@pytest.mark.parametrize("location", ["/etc/passwd", "/dev/zero", "SECRET"])
def test_absolute_locations_are_refused(world: dict[str, Path], location: str) -> None:
    location = str(world["secret"]) if location == "SECRET" else location
    p = external_model(world["model"], location)
    assert_refused(p, world, "is an absolute path")


@pytest.mark.parametrize("target", ["secret", "dev_zero", "other_dir"])
def test_symlinks_out_of_the_folder_are_refused(world: dict[str, Path], target: str) -> None:
    world["model"].mkdir()
    dest = {"secret": world["secret"], "dev_zero": Path("/dev/zero"), "other_dir": world["root"] / "other"}[target]
    name = "weights.bin" if target != "other_dir" else "lib"
    (world["model"] / name).symlink_to(dest)
    location = name if target != "other_dir" else "lib/weights.bin"
    p = external_model(world["model"], location)
    assert_refused(p, world, "leads out of the model's folder")


def _attribute_model(folder: Path, location: str, *, hidden: bool) -> Path:
    """Two Constant nodes with equal ``value`` attributes, then one whose tensor is external data at
    ``location``: as its ``value`` or (``hidden``) in the ``t`` field of an attribute typed INTS."""
    folder.mkdir(parents=True, exist_ok=True)
    inline = numpy_helper.from_array(np.ones(4, np.float32))
    nodes = [helper.make_node("Constant", [], [f"c{k}"], value=inline) for k in range(2)]
    ext = onnx.TensorProto(data_type=TensorProto.FLOAT, dims=[8, 3, 3, 3])
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value=location)
    if hidden:
        odd = helper.make_node("Relu", ["c0"], ["c2"])
        attr = odd.attribute.add(name="axes", type=onnx.AttributeProto.INTS)
        attr.ints.extend([1])
        attr.t.CopyFrom(ext)
    else:
        odd = helper.make_node("Constant", [], ["c2"], value=ext)
    nodes += [odd, helper.make_node("Sum", ["c0", "c1", "c2"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph(nodes, "g", [], [y]), opset_imports=[helper.make_opsetid("", 17)])
    p = folder / "m.onnx"
    onnx.save(m, str(p))
    return p


@pytest.mark.parametrize("hidden", [False, True])
def test_external_tensors_in_attributes_are_checked(world: dict[str, Path], hidden: bool) -> None:
    p = _attribute_model(world["model"], "../secret.txt", hidden=hidden)
    assert_refused(p, world, "leaves the model's folder")


def test_fifo_and_directory_locations_are_refused_without_hanging(world: dict[str, Path]) -> None:
    folder = world["model"]
    folder.mkdir()
    os.mkfifo(folder / "w.fifo")
    (folder / "w.dir").mkdir()
    for location in ("w.fifo", "w.dir"):
        p = external_model(folder, location)
        assert_refused(p, world, "is not a regular file")


def test_fifo_as_the_model_file_is_refused_without_hanging(world: dict[str, Path]) -> None:
    world["model"].mkdir()
    fifo = world["model"] / "m.onnx"
    os.mkfifo(fifo)
    assert_refused(fifo, world, "not a regular file",
                   [["inspect", fifo], ["snapshot", fifo], ["diff", fifo, fifo], ["graph", fifo, "-o", "x.dot"]])
    with deadline(), pytest.raises(InputError, match="not a regular file"):
        load_onnx("/dev/zero")


def test_a_symlink_inside_the_folder_is_fine(world: dict[str, Path]) -> None:
    folder = world["model"]
    folder.mkdir()
    (folder / "real.bin").write_bytes(np.ones(8 * 27, np.float32).tobytes())
    (folder / "w.bin").symlink_to("real.bin")
    p = external_model(folder, "w.bin")
    with opens() as seen:
        code, out = run("snapshot", p)
    assert code == 0, out
    assert_inside(seen, folder, world)
    assert any(Path(s).name == "real.bin" for s in seen)  # the hash really read the data (link resolved)


# -- sizes that do not fit


@pytest.mark.parametrize("case", ["length_past_eof", "offset_past_eof", "short_file", "length_mismatch"])
def test_sizes_are_checked_before_reading(world: dict[str, Path], case: str) -> None:
    folder = world["model"]
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\0" * 100)  # the weight declares 8*3*3*3*4 = 864 bytes
    kwargs = {"length_past_eof": {"offset": 0, "length": 864}, "offset_past_eof": {"offset": 10_000},
              "short_file": {}, "length_mismatch": {"length": 8}}[case]
    p = external_model(folder, "w.bin", **kwargs)
    assert_refused(p, world, "does not match the declared shape" if case == "length_mismatch" else "which holds 100 bytes")


def test_inline_declaration_without_data_is_refused(world: dict[str, Path]) -> None:
    folder = world["model"]
    folder.mkdir()
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[BIG])  # declares 2.5 GiB, holds 0 bytes
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [BIG])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(folder / "m.onnx"))
    assert_refused(folder / "m.onnx", world, "declares 671,088,640 values but the file holds 0")


def test_declared_671m_elements_with_no_data(world: dict[str, Path]) -> None:
    """Structure-only commands draw and inspect it; anything that needs the values says it is missing."""
    p = bomb(world["model"])
    world["out"].mkdir()
    for cmd in (["inspect", p], ["graph", p, "-o", world["out"] / "b.dot"]):
        with opens() as seen:
            code, out = run(*cmd)
        assert code == 0, (cmd, out)
        assert_inside(seen, p.parent, world)
    assert_refused(p, world, "'w.bin' not found next to the model", [["snapshot", p], ["diff", p, p]])


def _limited(args: list[str], gib: float = 2.0) -> subprocess.CompletedProcess:
    """Run yexport with its address space capped: any attempt to materialise 2.5 GiB fails."""
    import resource

    def cap() -> None:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "exporter.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=cap)


@pytest.mark.parametrize("op", ["Add", "Reshape1d"])
def test_graph_never_materialises_a_declaration(world: dict[str, Path], op: str) -> None:
    if op == "Add":
        p = bomb(world["model"])
    else:  # no initializer at all: a constant Reshape target makes a 671M-long 1-D value mid-graph
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, BIG // 2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        shape = numpy_helper.from_array(np.array([-1], np.int64), "s")
        nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Add", ["r", "r"], ["y"])]
        m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [shape]), opset_imports=[helper.make_opsetid("", 17)])
        world["model"].mkdir()
        p = world["model"] / "reshape.onnx"
        onnx.save(m, str(p))
    proc = _limited(["graph", str(p), "-o", str(world["root"] / "b.dot")])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "671088640" in (world["root"] / "b.dot").read_text()


# -- big external data: hashes and value differences are streamed


def _sparse_model(folder: Path, mib: int, tail: bytes) -> Path:
    """``mib`` MiB of float32 external data (a sparse file) whose last bytes are ``tail``."""
    folder.mkdir(parents=True, exist_ok=True)
    n = (mib << 20) // 4
    with open(folder / "w.bin", "wb") as fh:
        fh.truncate((mib << 20) - len(tail))
        fh.seek(0, 2)
        fh.write(tail)
    return external_model(folder, "w.bin", dims=(n,), offset=0, length=mib << 20)


def test_diff_of_big_external_tensors_streams(tmp_path: Path) -> None:
    import tracemalloc

    a = _sparse_model(tmp_path / "a", 96, np.float32(1.0).tobytes())
    b = _sparse_model(tmp_path / "b", 96, np.float32(1.5).tobytes())
    tracemalloc.start()
    r = diff(a, b)
    same = diff(a, a.parent / "m.onnx")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert same.identical
    [change] = r.initializers
    assert change["detail"] == "max |delta| 0.5", change
    assert peak < 24 << 20, peak  # far below the 2 x 96 MiB of weights
    assert diff(a, b, atol=0.5).identical


# -- markdown and DOT injection


HOSTILE = "</details> ## LGTM <img src=https://example.com/x.png> `code` | [link](https://example.com) @here"


def test_markdown_escapes_names_attributes_and_metadata(tmp_path: Path) -> None:
    def model(extra: bool) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
        if extra:
            nodes.append(helper.make_node("Neg", ["r"], ["n"], name=HOSTILE))
            nodes.append(helper.make_node("Identity", ["n"], ["y"], name="out"))
        else:
            nodes.append(helper.make_node("Identity", ["r"], ["y"], name="out"))
        m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
        m.metadata_props.add(key="author", value=HOSTILE if extra else "me")
        return m

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model(False), str(a))
    onnx.save(model(True), str(b))
    code, md = run("diff", a, b, "--format", "markdown")
    assert code == 1, md
    assert "<img" not in md and "</details> ##" not in md and "[link](" not in md and "@here" not in md
    ours = ("<details><summary>", "</summary>", "</details>")
    rest = md
    for tag in ours:
        rest = rest.replace(tag, "")
    assert "<" not in rest, rest  # every remaining '<' is one of our own tags
    assert md.count("<details>") == md.count("</details>")
    assert "&lt;img src=https://example.com/x.png&gt;" in md


def test_markdown_paths_stay_code(tmp_path: Path, chain_path: Path) -> None:
    odd = tmp_path / "a`<b>`.onnx"
    odd.write_bytes(chain_path.read_bytes())
    code, md = run("diff", odd, chain_path, "--format", "markdown")
    assert code == 0
    assert f"A: ``{odd}``" in md


def test_control_characters_in_names_do_not_break_dot(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x\x01", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["x\x01"], ["y"], name="re\x00lu\x1b[31m\r")
    m = helper.make_model(helper.make_graph([node], "g\x00", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    text = build_dot(m).text
    assert not any(ord(c) < 32 and c != "\n" for c in text)
    p = tmp_path / "nul.onnx"
    onnx.save(m, str(p))
    if subprocess.run(["which", "dot"], capture_output=True).returncode == 0:
        code, out = run("graph", p, "-o", tmp_path / "nul.svg")
        assert code == 0, out
        assert "\\x00" in (tmp_path / "nul.svg").read_text()


def test_structure_commands_never_open_the_weights(world: dict[str, Path]) -> None:
    folder = world["model"]
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.ones(8 * 27, np.float32).tobytes())
    p = external_model(folder, "w.bin")
    world["out"].mkdir()
    for cmd in (["inspect", p], ["graph", p, "-o", world["out"] / "g.dot"]):
        with opens() as seen:
            code, out = run(*cmd)
        assert code == 0, (cmd, out)
        assert not any(Path(s).name == "w.bin" for s in seen), (cmd, seen)


def test_an_oversized_snapshot_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from exporter.graph.diff import MAX_SNAPSHOT_BYTES, SNAPSHOT_MAGIC

    big = tmp_path / "big.graph.txt"
    with open(big, "wb") as f:  # sparse: costs no disk
        f.write(SNAPSHOT_MAGIC.encode())
        f.truncate(MAX_SNAPSHOT_BYTES + 1)
    res = CliRunner().invoke(cli, ["diff", str(big), str(big)])
    assert res.exit_code == 2 and "too large for a snapshot" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
