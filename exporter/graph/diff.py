"""Structural diff of two ONNX graphs (files, ModelProtos or snapshot texts).

Nodes are matched by structure, never by name: both graphs are put in canonical order (see
``exporter.graph._canon``) and the two node sequences are aligned twice, first on full node
signatures (op, attributes, data-input and output types; initializer inputs left out, so a Conv that
gains or loses its bias still matches), then, inside each unmatched stretch, on the op alone, which
pairs nodes whose attributes or shapes changed. What is left over was added or removed. Matched nodes
are then checked edge by edge: each data input must come from the matched counterpart of the same
producer (looking through nodes that were added or removed in a chain), so rewiring is caught too.

Initializers are compared per (matched node, input slot): shape and dtype, then values, by bytes
and, where they differ, by the largest absolute difference against ``atol``. Values are only
comparable when both sides are ONNX files; a snapshot carries content hashes.

The pieces: the alignment in :mod:`exporter.graph.align`, the matching in
:mod:`exporter.graph.match`, the pair-by-pair comparison in :mod:`exporter.graph.diff_compare`,
the result and its text, JSON and markdown in :mod:`exporter.graph.diff_report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, InputError
from exporter.graph._canon import canonicalize, load_any, no_gc
from exporter.graph.align import _align, _myers  # noqa: F401 - re-exported (tests, callers)
from exporter.graph.canon_graph import CanonGraph
from exporter.graph.diff_compare import (
    Side,
    compare_interface,
    compare_model,
    compare_pairs,
    compare_unused_initializers,
    node_entry,
)
from exporter.graph.diff_report import DiffResult
from exporter.graph.snapshot_text import SNAPSHOT_MAGIC, parse_snapshot

__all__ = ["IGNORABLE", "DiffResult", "diff", "load_graph"]

IGNORABLE = ("names", "initializer-values", "metadata")


# ---------------------------------------------------------------------------------------------
# loading


MAX_SNAPSHOT_BYTES = 256 << 20  # a snapshot of a 50k-node graph is a few MB


def load_graph(src: Any) -> CanonGraph:
    """A :class:`CanonGraph` from an ONNX file, a snapshot text file or a ModelProto."""
    if isinstance(src, CanonGraph):
        return src
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if p.is_file():
            try:
                with open(p, "rb") as fh:
                    head = fh.read(len(SNAPSHOT_MAGIC))
            except OSError as exc:
                raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
            if head == SNAPSHOT_MAGIC.encode():
                from exporter.io import regular_file

                regular_file(p, "snapshot", max_bytes=MAX_SNAPSHOT_BYTES)  # read whole: bounded first
                try:
                    text = p.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    raise InputError(f"{p}: snapshot is not valid UTF-8 text") from None
                return parse_snapshot(text, str(src))
    model, base_dir, path, scan = load_any(src)
    return canonicalize(model, base_dir=base_dir, path=path, scan=scan)


# ---------------------------------------------------------------------------------------------
# the diff


def _parse_ignore(ignore: Any) -> tuple[str, ...]:
    items: list[str] = []
    if isinstance(ignore, str):
        ignore = [ignore]
    for it in ignore or ():
        items.extend(x.strip() for x in str(it).split(",") if x.strip())
    bad = [x for x in items if x not in IGNORABLE]
    if bad:
        raise ConfigError(f"unknown --ignore value {bad[0]!r} (choose from {', '.join(IGNORABLE)})")
    return tuple(x for x in IGNORABLE if x in items)


def _side(g: CanonGraph) -> dict[str, Any]:
    ops = Counter(n.op for n in g.nodes)
    return {"path": g.path, "kind": g.kind, "nodes": len(g.nodes), "initializers": len(g.initializers),
            "ops": dict(sorted(ops.items()))}


def diff(a: Any, b: Any, *, ignore: Any = (), atol: float = 0.0, include: Any = ()) -> DiffResult:
    """Compare graph A with graph B (ONNX files, snapshot files or ModelProtos).

    ``ignore`` takes any of ``names`` (graph input/output names), ``initializer-values`` and
    ``metadata``; ``atol`` is the largest absolute difference in initializer values that still
    counts as equal. Metadata is compared as graph identity (see ``exporter.identity``):
    the run record (parity options, stages, source path, versions) only with
    ``include=("run-metadata",)``. The result is truthy when the graphs are identical."""
    from exporter.graph.snapshot import _run_metadata

    ign = _parse_ignore(ignore)
    if atol < 0:
        raise ConfigError(f"--atol must be >= 0, got {atol}")
    run_metadata = _run_metadata(include)
    with no_gc():
        same = _identical_files(a, b, ign, float(atol), run_metadata)
        if same is not None:
            return same
        ga, gb = _load_pair(a, b)
        return _diff(ga, gb, ign, float(atol), run_metadata)


def structural_match(ga: CanonGraph, gb: CanonGraph, notes: list[str] | None = None) -> tuple[Side, Side, Any]:
    """The per-graph lookups of A and B and the matching of their nodes (``.pairs``: canonical
    indices), exactly as :func:`diff` makes them (for the Graphviz highlighting, too)."""
    from exporter.graph.match import match

    sa, sb = Side(ga, "A"), Side(gb, "B")
    return sa, sb, match(sa, sb, False, [] if notes is None else notes, _align)


def _diff(ga: CanonGraph, gb: CanonGraph, ign: tuple[str, ...], atol: float, run_metadata: bool = False) -> DiffResult:
    from exporter.graph.diff_summary import summarize
    from exporter.graph.match import match as match_nodes

    res = DiffResult(_side(ga), _side(gb), ign, float(atol), include=("run-metadata",) if run_metadata else ())
    res.notes.extend(f"A: {n}" for n in ga.notes)
    res.notes.extend(f"B: {n}" for n in gb.notes)
    sa, sb = Side(ga, "A"), Side(gb, "B")
    ignore_values = "initializer-values" in ign

    compare_model(ga, gb, res, with_metadata="metadata" not in ign, run_metadata=run_metadata)
    ca, cb = Counter(res.a["ops"]), Counter(res.b["ops"])
    delta = {op: cb[op] - ca[op] for op in set(ca) | set(cb) if cb[op] != ca[op]}
    res.op_delta = dict(sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0])))

    matching = match_nodes(sa, sb, ignore_values, res.notes, _align)
    pairs = matching.pairs
    match = dict(pairs)
    res.matched = len(pairs)
    ident_b = {j: j for j in match.values()}
    added = [n for n in gb.nodes if n.index not in ident_b] if len(ident_b) < len(gb.nodes) else []
    removed = [n for n in ga.nodes if n.index not in match] if len(match) < len(ga.nodes) else []
    res.added.extend(node_entry("b", sb, n) for n in added)
    res.removed.extend(node_entry("a", sa, n) for n in removed)
    res.initializers_with_added_nodes = len({r for n in added for r in n.inputs if r in sb.inits})
    res.initializers_with_removed_nodes = len({r for n in removed for r in n.inputs if r in sa.inits})

    compare_pairs(sa, sb, pairs, match, ident_b, matching.same, ignore_values, atol, res)
    compare_unused_initializers(sa, sb, res)
    compare_interface(sa, sb, match, ident_b, res, check_names="names" not in ign)
    if (ga.kind == "snapshot" or gb.kind == "snapshot") and not ignore_values:
        res.notes.append("initializer values compared by content hash only (a snapshot holds no values); "
                         "--atol does not apply")
    if not res.identical:
        res.summary = summarize(ga, gb, sa, sb, pairs, res)
    return res


def _identical_files(a: Any, b: Any, ign: tuple[str, ...], atol: float, run_metadata: bool) -> DiffResult | None:
    """The result for two ONNX files with the same bytes, from one checked parse and no matching; None
    when the files differ, either is a snapshot, or external data could differ (other folders)."""
    same, mentions_location = _same_bytes(a, b, needle=_LOCATION)
    if not same:
        return None
    try:
        with open(a, "rb") as fh:
            if fh.read(len(SNAPSHOT_MAGIC)) == SNAPSHOT_MAGIC.encode():
                return None
    except OSError:
        return None
    from exporter.graph.load import _EXTERNAL, check_tensor, iter_tensors, load_onnx, model_dir

    model = load_onnx(Path(a), load_weights=False)  # the same checks as a full diff: a hostile file still fails
    # an external tensor that passed the loader's checks names its file under the key "location":
    # a file without those bytes anywhere has none, and its tensors need not be walked
    external = [(w, t) for w, t in iter_tensors(model) if t.data_location == _EXTERNAL] if mentions_location else []
    if external:
        if model_dir(a) != model_dir(b):
            return None
        base = model_dir(a)
        for where, t in external:  # the values are compared, so they must be there (stat only, nothing read)
            check_tensor(t, base, where=f"{a}: {where}", need_data=True)
    g = model.graph
    nodes = g.node
    op_types = [n.op_type for n in nodes]
    domains = [n.domain for n in nodes]
    if all(d in ("", "ai.onnx") for d in set(domains)):
        ops = Counter(op_types)
    else:
        ops = Counter(op if not d or d == "ai.onnx" else f"{d}.{op}" for op, d in zip(op_types, domains, strict=True))
    inits = len({t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer})

    def side(path: Any) -> dict[str, Any]:
        return {"path": str(path), "kind": "onnx", "nodes": len(nodes), "initializers": inits,
                "ops": dict(sorted(ops.items()))}

    return DiffResult(side(a), side(b), ign, atol, matched=len(nodes),
                      include=("run-metadata",) if run_metadata else ())


_LOCATION = b"location"


def _load_pair(a: Any, b: Any) -> tuple[CanonGraph, CanonGraph]:
    """Both canonical graphs; two byte-identical files are read once. A's initializers let go of
    its ModelProto before B is read (only one parsed model is in memory at a time)."""
    ga = load_graph(a)
    if ga.kind == "onnx" and _same_bytes(a, b)[0] and (
            not any(i.external for i in ga.initializers) or Path(a).resolve().parent == Path(b).resolve().parent):
        return ga, dataclasses.replace(ga, path=str(b))
    if ga.kind == "onnx" and isinstance(a, (str, os.PathLike)):  # the model was ours: it can go
        for i in ga.initializers:
            i.detach()
    return ga, load_graph(b)


def _same_bytes(a: Any, b: Any, needle: bytes = b"") -> tuple[bool, bool]:
    """Whether both paths name regular files with the same content (compared in 1 MiB blocks), and
    whether ``needle`` occurs in it (True when not looked for or not known)."""
    if not (isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike))):
        return False, True
    try:
        sa, sb = os.stat(a), os.stat(b)
        if sa.st_size != sb.st_size or not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
            return False, True
        one_file = (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
        if one_file and not needle:  # one file named twice: nothing to read
            return True, True
        found = not needle
        tail = b""
        with open(a, "rb") as fa, contextlib.ExitStack() as stack:
            fb = fa if one_file else stack.enter_context(open(b, "rb"))
            while True:
                x = fa.read(1 << 20)
                if not one_file and x != fb.read(1 << 20):
                    return False, True
                if not x:
                    return True, found
                if not found:
                    found = needle in tail + x[:len(needle) - 1] or needle in x
                    tail = x[-(len(needle) - 1):]
    except OSError:
        return False, True


