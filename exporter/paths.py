"""One output-path policy for every command that writes a file.

- Never onto an input: an output that is the same file as an input (same path, a hard link or a
  symlink to it) is refused.
- The destination is checked before the work starts: its folder is created if missing and a
  temporary file is written and removed there, so a read-only mount, a full disk, an
  unsearchable parent or a file where a folder should be fails in a second, not after the export.
  Folders created by the probe are removed again; the writer creates them when it writes.

Every error is one line (exit status 2).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from exporter.errors import ConfigError, InputError

__all__ = ["check_export_outputs", "check_output_file", "export_files", "probe_writable", "same_file"]

PathLike = str | os.PathLike[str]


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one existing file (through any path, hard link or symlink)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _nearest_existing(d: Path) -> tuple[Path, list[Path]]:
    """The nearest existing ancestor of ``d`` (``d`` itself if it exists) and the missing folders below it."""
    missing: list[Path] = []
    cur = d
    while not os.path.lexists(cur):
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    return cur, missing


def probe_writable(folder: PathLike, what: str = "output folder") -> None:
    """Check that files can be created and written in ``folder`` (created if missing, then removed
    again): a one-line :class:`InputError` naming the reason otherwise."""
    d = Path(folder) if str(folder) else Path(".")
    top, missing = _nearest_existing(d)
    if os.path.lexists(top) and not top.is_dir():
        where = "" if top == d else f" ({top} is a file)"
        raise InputError(f"{d}: not a folder{where}; choose another {what}")
    created: list[Path] = []
    try:
        for m in reversed(missing):
            try:
                os.mkdir(m)
            except FileExistsError:  # another process (a concurrent export) made it meanwhile: not ours
                if not m.is_dir():
                    raise
                continue
            created.append(m)
        probe = d / f".yexport-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)  # a full disk fails here (block reservation at write time)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"{d}: cannot write the {what}: {reason}") from None
    finally:
        for m in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(m)


def _refuse_inputs(out: Path, inputs: Iterable[PathLike | None], flag: str) -> None:
    for src in inputs:
        if src is not None and same_file(out, src):
            raise ConfigError(f"{out}: is the input {src}; refusing to write the output onto an input "
                              f"(choose another {flag})")


def check_output_file(out: PathLike | None, *inputs: PathLike | None, flag: str = "-o") -> None:
    """Before any work: refuse an output file ``out`` that is one of ``inputs`` or a folder, and
    check that its folder is writable. ``out`` None (print to stdout) passes."""
    if out is None:
        return
    o = Path(out)
    _refuse_inputs(o, inputs, flag)
    if o.is_dir():
        raise InputError(f"{o}: is a folder; give a file name to {flag}")
    probe_writable(o.parent, "output file's folder")


def export_files(out_dir: PathLike, stem: str, variants: Iterable[str] = ()) -> list[Path]:
    """Every file ``yexport export`` may write: ``STEM[-VARIANT].onnx``, its ``.json`` manifest,
    and the ``.parity-failed`` pair."""
    d = Path(out_dir)
    bases = [f"{stem}-{v}" for v in variants] or [stem]
    return [d / f"{b}{tail}" for b in bases for tail in (".onnx", ".json", ".parity-failed.onnx",
                                                           ".parity-failed.json")]


def check_export_outputs(out_dir: PathLike, stem: str, variants: Iterable[str] = (),
                         inputs: Iterable[PathLike | None] = ()) -> None:
    """Before an export: none of its files may replace an input, and ``out_dir`` must be writable."""
    inputs = list(inputs)
    for f in export_files(out_dir, stem, variants):
        _refuse_inputs(f, inputs, "-o or --name")
    probe_writable(out_dir)
