"""Reading and writing files safely.

Writing: a temporary file in the target directory, fsynced, then a rename, so a reader sees the old
file or the complete new one. An ONNX file and its manifest are committed as a set
(:class:`PairWriter`): ``NAME.onnx.data`` (the weights, for a model stored with external data),
``NAME.onnx`` and ``NAME.json``. All temporary files are written first, then renamed under a lock on
the directory, data first and manifest last, so two writers never interleave their renames and the
manifest's sha256 values always name the files beside it except in the moments between the renames
(which :func:`read_manifest` detects). Temporary names carry the writer's pid; the stale-temp sweep removes
only temporaries whose writer is dead or that are over an hour old.

Reading: :func:`regular_file` refuses FIFOs, devices and unreadable files before anything opens them
for parsing; :func:`load_yaml` parses YAML with bounds on size, nesting and alias expansion.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, InputError

STALE_SECONDS = 3600  # a temporary file this old is stale whoever wrote it
YAML_MAX_BYTES = 1 << 20  # configs are a few kB
YAML_MAX_DEPTH = 32
YAML_MAX_NODES = 100_000  # nodes after alias expansion: a YOLOv5 config has about 300


# ------------------------------------------------------------------------------------------ reading


def regular_file(path: str | Path, what: str = "file", *, max_bytes: int | None = None) -> Path:
    """``path`` if it is a readable regular file (at most ``max_bytes``); a one-line :class:`InputError`
    otherwise. Never opens a FIFO or a device, so it cannot hang."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except NotADirectoryError:
        raise InputError(f"{p}: no such file (a parent is not a directory)") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied (cannot reach the {what})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: not a regular file (a FIFO, socket or device), not a {what}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{p}: {st.st_size:,} bytes is too large for a {what} (at most {max_bytes:,})")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError:
        raise InputError(f"{p}: permission denied (cannot read the {what})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    os.close(fd)
    return p


def _yaml_loader():  # the class is built on first use: yaml is imported lazily
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader that refuses deep nesting and alias ("billion laughs") expansion before constructing."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0

        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            self.depth += 1
            try:
                if self.depth > YAML_MAX_DEPTH:
                    raise _YamlLimit(f"it nests deeper than {YAML_MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


class _YamlLimit(Exception):
    pass


def _expanded_nodes(root: Any) -> int:
    """How many nodes the YAML node graph ``root`` becomes once its aliases are expanded (memoised,
    so linear in the document); raises :class:`_YamlLimit` for recursive aliases or too many nodes."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[Any] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for kv in node.value for x in kv]
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > YAML_MAX_NODES:
                raise _YamlLimit(f"it expands to more than {YAML_MAX_NODES:,} values (aliases of aliases?)")
            continue
        if key in sizes:
            continue
        if key in active:
            raise _YamlLimit("an alias refers to the collection that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse the YAML file ``path`` with bounds on its size, nesting depth and alias expansion.
    Errors are one-line :class:`ConfigError` / :class:`InputError`."""
    import yaml

    p = regular_file(path, what, max_bytes=YAML_MAX_BYTES)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (expected a {what})") from None
    loader = _yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node)
        return loader.construct_document(node)
    except _YamlLimit as exc:
        raise ConfigError(f"{p}: refusing this {what}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: YAML syntax error{where}: {' '.join(str(problem).split())}") from None
    except RecursionError:
        raise ConfigError(f"{p}: refusing this {what}: nested too deeply") from None
    finally:
        loader.dispose()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an exported file (``NAME.onnx`` or ``NAME.json``), checked against the file:
    its sha256 and size must name the ``.onnx`` beside it. A mismatch (an interrupted export, or a file
    replaced by hand) is an :class:`InputError`."""
    p = Path(path)
    mpath = p.with_suffix(".json")
    data = regular_file(mpath, "manifest", max_bytes=64 << 20).read_text(encoding="utf-8")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise InputError(f"{mpath}: not a JSON manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise InputError(f"{mpath}: not a yexport manifest (no sha256)")
    onnx = mpath.with_name(str(manifest.get("file") or p.with_suffix(".onnx").name))
    if onnx.parent != mpath.parent or onnx.name != Path(onnx.name).name:
        raise InputError(f"{mpath}: the manifest names a file outside its folder: {manifest.get('file')!r}")
    digest = sha256_file(regular_file(onnx, "ONNX file"))
    if digest != manifest["sha256"]:
        raise InputError(f"{mpath}: the manifest does not match {onnx.name} (sha256 {manifest['sha256'][:12]}... "
                         f"vs {digest[:12]}...): an interrupted or concurrent export; export it again")
    data_file = manifest.get("data_file")
    if data_file is not None:
        if not isinstance(data_file, str) or Path(data_file).name != data_file or not data_file:
            raise InputError(f"{mpath}: the manifest names a data file outside its folder: {data_file!r}")
        digest = sha256_file(regular_file(mpath.with_name(data_file), "external data file"))
        if digest != manifest.get("data_sha256"):
            raise InputError(f"{mpath}: the manifest does not match {data_file} (sha256 "
                             f"{str(manifest.get('data_sha256'))[:12]}... vs {digest[:12]}...): an interrupted or "
                             "concurrent export; export it again")
    return manifest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ writing


def _temp_path(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale(p: Path) -> list[Path]:
    """Remove temporary files of ``p`` left by dead writers (or older than an hour); returns them.
    A live writer's temporary file is never touched."""
    removed = []
    now = time.time()
    for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
        parts = tmp.name[len(p.name) + 2: -len(".tmp")].split(".")
        try:
            age = now - tmp.lstat().st_mtime
        except OSError:
            continue
        pid = int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None
        if age > STALE_SECONDS or (pid is not None and pid != os.getpid() and not _pid_alive(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _write_temp(p: Path, raw: bytes) -> Path:
    tmp = _temp_path(p)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode a plain open() would give
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _dir_lock(d: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself (no lock file is left behind)."""
    fd = os.open(d, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # a file system without flock: renames still atomic one by one
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    An interrupted write leaves no partial file behind (the temporary file is removed; one left by a
    killed writer is swept by the next writer of that name).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    sweep_stale(p)
    tmp = _write_temp(p, raw)
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)
    return p


class _HashingWriter:
    """A binary file that also hashes and counts what is written to it."""

    def __init__(self, f: Any) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)


class PairWriter:
    """Commit ``NAME.onnx``, its manifest ``NAME.json`` and, for a model with external data, its data
    file ``NAME.onnx.data`` as one set::

        w = PairWriter(path)
        w.stage_data(fill)           # optional: temporary .onnx.data written by fill(f), fsynced, hashed
        w.stage(onnx_bytes)          # temporary .onnx, fsynced
        w.commit(manifest_dict)      # temporary .json (sha256 of both), then all renamed

    The renames run data, ``.onnx``, manifest under the directory lock; a commit without a data file
    removes a data file of that name left by an earlier export, so the set never mixes two exports.
    Use it as a context manager (or call :meth:`discard`) so an error removes the temporaries.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest_path = self.path.with_suffix(".json")
        self.data_path = self.path.with_name(self.path.name + ".data")
        self._tmps: list[Path] = []
        self._onnx_tmp: Path | None = None
        self._data_tmp: Path | None = None
        self.sha256: str | None = None
        self.size = 0
        self.data_sha256: str | None = None
        self.data_size = 0

    def __enter__(self) -> PairWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def _sweep(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.path, self.manifest_path, self.data_path):
            sweep_stale(p)

    def stage_data(self, fill: Callable[[Any], Any]) -> None:
        """Write the external data file's temporary through ``fill(f)`` (``f.write(bytes)``), streamed:
        it is never held in memory; its sha256 and size go into the manifest."""
        self._sweep()
        tmp = _temp_path(self.data_path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._tmps.append(tmp)
        with os.fdopen(fd, "wb") as f:
            w = _HashingWriter(f)
            fill(w)
            f.flush()
            os.fsync(f.fileno())
        self._data_tmp = tmp
        self.data_sha256, self.data_size = w.h.hexdigest(), w.size

    def stage(self, data: bytes) -> None:
        self._sweep()
        self._onnx_tmp = _write_temp(self.path, data)
        self._tmps.append(self._onnx_tmp)
        self.sha256, self.size = hashlib.sha256(data).hexdigest(), len(data)

    def commit(self, manifest: dict[str, Any]) -> tuple[Path, Path]:
        """Write the manifest (its ``file``, ``sha256`` and ``bytes`` name the staged file; ``data_file``,
        ``data_sha256``, ``data_bytes`` its data file) and rename the set into place under the directory
        lock; returns ``(onnx path, manifest path)``."""
        if self.sha256 is None or self._onnx_tmp is None:
            raise RuntimeError("PairWriter.commit needs stage() first")
        manifest = {**manifest, "file": self.path.name, "sha256": self.sha256, "bytes": self.size}
        if self._data_tmp is not None:
            manifest.update(data_file=self.data_path.name, data_sha256=self.data_sha256, data_bytes=self.data_size)
        json_tmp = _write_temp(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        self._tmps.append(json_tmp)
        with _dir_lock(self.path.parent):
            if self._data_tmp is not None:
                os.replace(self._data_tmp, self.data_path)
                self._tmps.remove(self._data_tmp)
            os.replace(self._onnx_tmp, self.path)
            self._tmps.remove(self._onnx_tmp)
            os.replace(json_tmp, self.manifest_path)
            self._tmps.remove(json_tmp)
            if self._data_tmp is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.data_path)  # an earlier export's weights: not part of this set
        _fsync_dir(self.path.parent)
        return self.path, self.manifest_path

    def __del__(self) -> None:  # an error between stage() and commit() leaves no temporary behind
        self.discard()

    def discard(self) -> None:
        for tmp in self._tmps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._tmps.clear()
