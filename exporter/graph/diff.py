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
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ConfigError, InputError
from exporter.graph._canon import (
    SNAPSHOT_MAGIC,
    CanonGraph,
    CNode,
    CValue,
    canonicalize,
    load_any,
    no_gc,
    parse_snapshot,
    strip_hashes,
)

__all__ = ["IGNORABLE", "DiffResult", "diff", "load_graph"]

IGNORABLE = ("names", "initializer-values", "metadata")
_MAX_EDITS = 1000  # beyond this edit distance the aligner anchors on unique signatures first
_LIST_LIMIT_TEXT = 50
_LIST_LIMIT_MD = 200
_GROUP_MD = 30  # longer node/initializer lists are folded per layer in markdown


# ---------------------------------------------------------------------------------------------
# result


@dataclass
class DiffResult:
    """What differs between graph A and graph B. Truthy when they are identical (under ``ignore``)."""

    a: dict[str, Any]
    b: dict[str, Any]
    ignore: tuple[str, ...] = ()
    atol: float = 0.0
    model: list[dict[str, Any]] = field(default_factory=list)  # ir_version, opsets
    metadata: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    op_delta: dict[str, int] = field(default_factory=dict)
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    initializers: list[dict[str, Any]] = field(default_factory=list)
    initializers_with_added_nodes: int = 0
    initializers_with_removed_nodes: int = 0
    matched: int = 0
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # systematic changes, most telling first
    include: tuple[str, ...] = ()

    @property
    def structural(self) -> bool:
        """True when the graph itself differs (nodes, edges, interface, opsets)."""
        return bool(self.model or self.inputs or self.outputs or self.added or self.removed or self.changed)

    @property
    def identical(self) -> bool:
        return not (self.structural or self.metadata or self.initializers)

    def __bool__(self) -> bool:
        return self.identical

    def structure_summary(self) -> str:
        """``+57 BatchNormalization`` style op delta, or 'no change'."""
        if not self.op_delta:
            return "no change in op counts"
        return ", ".join(f"{d:+d} {op}" for op, d in self.op_delta.items())

    def init_summary(self) -> str:
        counts = Counter(c["kind"] for c in self.initializers)
        words = {"added": "added", "removed": "removed", "type": "changed shape or dtype", "values": "changed values"}
        parts = [f"{counts[k]} {w}" for k, w in words.items() if counts[k]]
        if self.initializers_with_added_nodes:
            parts.append(f"{self.initializers_with_added_nodes} added with new nodes")
        if self.initializers_with_removed_nodes:
            parts.append(f"{self.initializers_with_removed_nodes} removed with their nodes")
        return ", ".join(parts) if parts else "no change"

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "structural": self.structural,
            "a": self.a,
            "b": self.b,
            "ignore": list(self.ignore),
            "include": list(self.include),
            "atol": self.atol,
            "summary": self.summary,
            "model": self.model,
            "metadata": self.metadata,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "op_delta": self.op_delta,
            "nodes": {"matched": self.matched, "added": self.added, "removed": self.removed, "changed": self.changed},
            "initializers": {
                "changed": self.initializers,
                "added_with_nodes": self.initializers_with_added_nodes,
                "removed_with_nodes": self.initializers_with_removed_nodes,
            },
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # -- text ---------------------------------------------------------------------------------
    def to_text(self) -> str:
        out = [f"A  {_describe(self.a)}", f"B  {_describe(self.b)}"]
        if self.identical:
            out.append("identical" + (f" (ignoring {', '.join(self.ignore)})" if self.ignore else ""))
            out.extend(f"note: {n}" for n in self.notes)
            return "\n".join(out) + "\n"
        if self.summary:
            out.append("summary:")
            out.extend(f"  {s}" for s in self.summary)
        out.append(f"structure: {self.structure_summary()}")
        for title, items in (("model", self.model), ("metadata", self.metadata)):
            for c in items:
                out.append(f"{title}: {c['field']}: {_v(c['a'])} -> {_v(c['b'])}")
        for title, items in (("input", self.inputs), ("output", self.outputs)):
            for c in items:
                out.append(f"{title} {c['index']}: {c['what']}: {_v(c['a'])} -> {_v(c['b'])}")
        sections = (
            ("nodes added", self.added, lambda e: f"  + B{e['b']} {_label(e)}" + (f"  reads {e['reads']}" if e.get("reads") else "")),
            ("nodes removed", self.removed, lambda e: f"  - A{e['a']} {_label(e)}" + (f"  reads {e['reads']}" if e.get("reads") else "")),
            ("nodes changed", self.changed, lambda e: f"  ~ A{e['a']} -> B{e['b']} {_label(e)}: " + "; ".join(e["changes"])),
        )
        for title, items, fmt in sections:
            if items:
                out.append(f"{title} ({len(items)}):")
                out.extend(fmt(e) for e in items[:_LIST_LIMIT_TEXT])
                if len(items) > _LIST_LIMIT_TEXT:
                    out.append(f"  ... and {len(items) - _LIST_LIMIT_TEXT} more (--format json lists all)")
        out.append(f"initializers: {self.init_summary()}")
        for c in self.initializers[:_LIST_LIMIT_TEXT]:
            out.append(f"  {_init_line(c)}")
        if len(self.initializers) > _LIST_LIMIT_TEXT:
            out.append(f"  ... and {len(self.initializers) - _LIST_LIMIT_TEXT} more (--format json lists all)")
        out.extend(f"note: {n}" for n in self.notes)
        out.append("different")
        return "\n".join(out) + "\n"

    # -- markdown -----------------------------------------------------------------------------
    def to_markdown(self) -> str:
        from exporter.graph.diff_summary import grouped_rows

        verdict = "identical" if self.identical else "different"
        out = [f"### ONNX graph diff: **{verdict}**", ""]
        if self.summary and not self.identical:
            out += [f"- {_md(s.strip())}" for s in self.summary] + [""]
        out += [f"A: {_md_code(self.a.get('path') or '<model>')} ({self.a['kind']}, {self.a['nodes']} nodes)  ",
                f"B: {_md_code(self.b.get('path') or '<model>')} ({self.b['kind']}, {self.b['nodes']} nodes)", ""]
        if self.ignore:
            out += [f"Ignoring: {', '.join(self.ignore)}", ""]
        if self.identical:
            out += [f"> {_md(n)}" for n in self.notes]
            return "\n".join(out).rstrip() + "\n"
        out += [f"**Structure:** {_md(self.structure_summary())}  ", f"**Initializers:** {_md(self.init_summary())}", ""]
        if self.op_delta:
            ca, cb = self.a.get("ops", {}), self.b.get("ops", {})
            out += ["| op | A | B | delta |", "|---|--:|--:|--:|"]
            out += [f"| {_md(op)} | {ca.get(op, 0)} | {cb.get(op, 0)} | {d:+d} |" for op, d in self.op_delta.items()]
            out.append("")
        rows = [(f"model: {c['field']}", c["a"], c["b"]) for c in self.model]
        rows += [(f"metadata: {c['field']}", c["a"], c["b"]) for c in self.metadata]
        rows += [(f"input {c['index']}: {c['what']}", c["a"], c["b"]) for c in self.inputs]
        rows += [(f"output {c['index']}: {c['what']}", c["a"], c["b"]) for c in self.outputs]
        if rows:
            out += ["| what | A | B |", "|---|---|---|"]
            out += [f"| {_md(w)} | {_md(_v(x))} | {_md(_v(y))} |" for w, x, y in rows]
            out.append("")

        def details(summary: str, header: list[str], lines: list[str]) -> None:
            out.extend([f"<details><summary>{summary}</summary>", "", *header])
            out.extend(lines[:_LIST_LIMIT_MD])
            if len(lines) > _LIST_LIMIT_MD:
                out.append(f"\n... and {len(lines) - _LIST_LIMIT_MD} more")
            out.extend(["", "</details>", ""])

        head = ["| node | op | name | reads |", "|---|---|---|---|"]
        by_layer = ["| layer | nodes | ops |", "|---|--:|---|"]
        if len(self.added) > _GROUP_MD:
            details(f"{len(self.added)} nodes added (per layer; --format json lists each)", by_layer,
                    grouped_rows(self.added, "added", _md))
        elif self.added:
            details(f"{len(self.added)} nodes added", head,
                    [f"| B{e['b']} | {_md(e['op'])} | {_md(e.get('name') or '')} | {_md(e.get('reads') or '')} |" for e in self.added])
        if len(self.removed) > _GROUP_MD:
            details(f"{len(self.removed)} nodes removed (per layer; --format json lists each)", by_layer,
                    grouped_rows(self.removed, "removed", _md))
        elif self.removed:
            details(f"{len(self.removed)} nodes removed", head,
                    [f"| A{e['a']} | {_md(e['op'])} | {_md(e.get('name') or '')} | {_md(e.get('reads') or '')} |" for e in self.removed])
        if len(self.changed) > _GROUP_MD:
            details(f"{len(self.changed)} nodes changed (per layer; --format json lists each)",
                    ["| layer | nodes | ops | what changed |", "|---|--:|---|---|"], grouped_rows(self.changed, "changed", _md))
        elif self.changed:
            details(f"{len(self.changed)} nodes changed", ["| A | B | op | changes |", "|---|---|---|---|"],
                    [f"| A{e['a']} | B{e['b']} | {_md(_label(e))} | {_md('; '.join(e['changes']))} |" for e in self.changed])
        if len(self.initializers) > _GROUP_MD:
            details(f"{len(self.initializers)} initializer changes (per layer; --format json lists each)",
                    ["| layer | initializers | kinds |", "|---|--:|---|"], grouped_rows(self.initializers, "init", _md))
        elif self.initializers:
            details(f"{len(self.initializers)} initializer changes", ["| change |", "|---|"],
                    [f"| {_md(_init_line(c))} |" for c in self.initializers])
        out += [f"> {_md(n)}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def render(self, fmt: str = "text") -> str:
        if fmt == "json":
            return self.to_json() + "\n"
        if fmt == "markdown":
            return self.to_markdown()
        return self.to_text()


def _describe(side: dict[str, Any]) -> str:
    return f"{side.get('path') or '<model>'} ({side['kind']}): {side['nodes']} nodes, {side['initializers']} initializers"


def _v(x: Any) -> str:
    return "(none)" if x is None else str(x)


# what a pull-request comment would read as HTML, markup, a link, an image or a mention
_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "|": "\\|", "`": "\\`",
                             "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "~": "\\~", "!": "\\!",
                             "@": "&#64;", "#": "&#35;", "\n": " ", "\r": " ", "\0": " "})


def _md(s: str) -> str:
    """Text safe inside a markdown table cell: no raw HTML, markup, links or mentions survive."""
    return str(s).translate(_MD_ESCAPES)


def _md_code(s: str) -> str:
    """A code span (never read as HTML or markup), fenced past any run of backticks in ``s``."""
    s = " ".join(str(s).replace("\0", " ").splitlines())
    run = longest = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{'`' * (longest + 1)}{pad}{s}{pad}{'`' * (longest + 1)}"


def _label(e: dict[str, Any]) -> str:
    name = e.get("name")
    return f"{e['op']} {json.dumps(name)}" if name else e["op"]


def _init_line(c: dict[str, Any]) -> str:
    where = c.get("where", "")
    if c["kind"] == "added":
        return f"+ {where}: {c['b']} added"
    if c["kind"] == "removed":
        return f"- {where}: {c['a']} removed"
    if c["kind"] == "type":
        return f"~ {where}: {c['a']} -> {c['b']}"
    return f"~ {where}: {c['a']} values differ ({c['detail']})"


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
    model, base_dir, path = load_any(src)
    return canonicalize(model, base_dir=base_dir, path=path)


# ---------------------------------------------------------------------------------------------
# alignment


def _myers(a: list[int], b: list[int], max_d: int) -> list[tuple[int, int]] | None:
    """Matched index pairs of a shortest edit script between ``a`` and ``b`` (Myers' O(ND)
    algorithm), or None when more than ``max_d`` edits would be needed."""
    n, m = len(a), len(b)
    pre = 0
    while pre < n and pre < m and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and suf < m - pre and a[n - 1 - suf] == b[m - 1 - suf]:
        suf += 1
    pairs = list(zip(range(pre), range(pre), strict=True))
    aa, bb = a[pre:n - suf], b[pre:m - suf]
    mid = _myers_core(aa, bb, max_d)
    if mid is None:
        return None
    pairs.extend((pre + i, pre + j) for i, j in mid)
    pairs.extend((n - suf + k, m - suf + k) for k in range(suf))
    return pairs


def _myers_core(a: list[int], b: list[int], max_d: int) -> list[tuple[int, int]] | None:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    maxd = min(n + m, max_d)
    off = maxd + 1
    v = [0] * (2 * maxd + 3)
    trace: list[list[int]] = []
    for d in range(maxd + 1):
        trace.append(v[off - d - 1:off + d + 2])
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and v[off + k - 1] < v[off + k + 1]):
                x = v[off + k + 1]
            else:
                x = v[off + k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            v[off + k] = x
            if x >= n and y >= m:
                return _backtrack(trace, d, n, m)
    return None


def _backtrack(trace: list[list[int]], dmax: int, n: int, m: int) -> list[tuple[int, int]]:
    snakes: list[tuple[int, int, int]] = []  # (x, y, length) of each diagonal run, last first
    x, y = n, m
    for d in range(dmax, 0, -1):
        vs, base = trace[d], d + 1
        k = x - y
        pk = k + 1 if (k == -d or (k != d and vs[base + k - 1] < vs[base + k + 1])) else k - 1
        px = vs[base + pk]
        py = px - pk
        run = min(x - px, y - py)
        if run > 0:
            snakes.append((x - run, y - run, run))
        x, y = px, py
    if min(x, y) > 0:
        snakes.append((0, 0, min(x, y)))
    pairs: list[tuple[int, int]] = []
    for sx, sy, run in reversed(snakes):
        pairs.extend(zip(range(sx, sx + run), range(sy, sy + run), strict=True))
    return pairs


def _align(a: list[int], b: list[int], notes: list[str], depth: int = 0) -> list[tuple[int, int]]:
    """Matched index pairs of two signature sequences: Myers' shortest edit script while the edit
    distance stays small (its cost grows with its square), else patience anchors (signatures that
    occur exactly once on each side, kept in order) and the same again between the anchors."""
    pairs = _myers(a, b, _MAX_EDITS)
    if pairs is not None:
        return pairs
    anchors = _patience_anchors(a, b) if depth < 8 else []
    if not anchors:
        if len(a) * len(b) <= 4_000_000:
            _note(notes, "graphs differ in many places; some nodes were aligned by a coarser method (difflib)")
            sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
            return [(blk.a + k, blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size)]
        _note(notes, "graphs differ in too many places to align some stretches; their nodes are reported "
                     "as removed and added")
        return []
    out: list[tuple[int, int]] = []
    prev_i = prev_j = -1
    for i, j in [*anchors, (len(a), len(b))]:
        if i - prev_i > 1 and j - prev_j > 1:
            lo_i, lo_j = prev_i + 1, prev_j + 1
            out.extend((lo_i + x, lo_j + y) for x, y in _align(a[lo_i:i], b[lo_j:j], notes, depth + 1))
        if i < len(a):
            out.append((i, j))
        prev_i, prev_j = i, j
    return out


def _patience_anchors(a: list[int], b: list[int]) -> list[tuple[int, int]]:
    """Longest increasing run of (i, j) over signatures unique in both sequences."""
    import bisect

    ca, cb = Counter(a), Counter(b)
    pos_b = {x: j for j, x in enumerate(b) if cb[x] == 1}
    cand = [(i, pos_b[x]) for i, x in enumerate(a) if ca[x] == 1 and x in pos_b]
    if not cand:
        return []
    tails: list[int] = []  # tails[k]: smallest j ending an increasing run of length k + 1
    tail_idx: list[int] = []
    back: list[int] = [-1] * len(cand)
    for n, (_, j) in enumerate(cand):
        k = bisect.bisect_left(tails, j)
        if k == len(tails):
            tails.append(j)
            tail_idx.append(n)
        else:
            tails[k] = j
            tail_idx[k] = n
        back[n] = tail_idx[k - 1] if k else -1
    run, n = [], tail_idx[-1]
    while n >= 0:
        run.append(cand[n])
        n = back[n]
    return run[::-1]


def _note(notes: list[str], msg: str) -> None:
    if msg not in notes:
        notes.append(msg)


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


@functools.lru_cache(maxsize=4096)
def _slot_name(op: str, slot: int, opset: int | None) -> str:
    """``input 2 (B)`` using the operator schema where onnx knows it."""
    try:
        import onnx.defs

        domain, _, name = op.rpartition(".")
        schema = onnx.defs.get_schema(name, opset or 1000, domain or "")
        formal = schema.inputs
        if slot < len(formal):
            return f"input {slot} ({formal[slot].name})"
        if formal and formal[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return f"input {slot} ({formal[-1].name})"
    except Exception:  # noqa: BLE001 - custom ops, unknown opsets
        pass
    return f"input {slot}"


class _Side:
    """Per-graph lookups used by the diff."""

    def __init__(self, g: CanonGraph, tag: str) -> None:
        self.g = g
        self.tag = tag
        self.inits = g.init_by_ref()
        self.prod = g.producers()
        self.gin = {v.ref: k for k, v in enumerate(g.inputs)}
        self.nodes = g.nodes
        # values computed from constants alone (Constant nodes, Identity of an initializer, ...)
        self.const: set[str] = set(self.inits)
        self.alias: dict[str, str] = {}  # Identity output -> the initializer it forwards
        const = self.const
        for n in g.nodes:
            if not n.implicit and all(r == "_" or r in const for r in n.inputs):
                const.update(r for r in n.outputs if r != "_")
                if n.op == "Identity" and n.inputs and n.outputs:
                    src = self.alias.get(n.inputs[0], n.inputs[0])
                    if src in self.inits:
                        self.alias[n.outputs[0]] = src
        # per node: (slot, ref, type) of the inputs that are neither constant nor omitted
        const.add("_")
        self.data: list[list[tuple[int, str, str]]] = []
        for n in g.nodes:
            ins = n.inputs
            if len(ins) == 1:
                self.data.append([] if ins[0] in const else [(0, ins[0], n.input_types[0])])
            else:
                tys = n.input_types
                self.data.append([(k, r, tys[k]) for k, r in enumerate(ins) if r not in const])
        const.discard("_")

    def init_of(self, ref: str) -> str | None:
        """The initializer a value is (directly or through Identity nodes), else None."""
        if ref in self.inits:
            return ref
        return self.alias.get(ref)

    def data_inputs(self, n: CNode) -> list[tuple[int, str, str]]:
        return self.data[n.index]

    def source(self, ref: str, match: dict[int, int] | None) -> tuple:
        """Where a value comes from, in B's numbering: ('node', b_index, slot), ('in', k),
        ('init',), ('none',) or ('new', ...) when it comes from a node with no counterpart.
        Nodes without counterpart are looked through along their first data input."""
        for _ in range(10_000):
            if ref == "_":
                return ("none",)
            if ref in self.gin:
                return ("in", self.gin[ref])
            if ref in self.const:
                return ("const",)
            pr = self.prod.get(ref)
            if pr is None:
                return ("other", ref)
            idx, slot = pr
            if match is None:
                return ("node", idx, slot)
            if idx in match:
                return ("node", match[idx], slot)
            data = self.data_inputs(self.nodes[idx])
            if not data:
                return ("new", self.tag, idx)
            ref = data[0][1]
        return ("other", ref)

    def describe(self, src: tuple) -> str:
        if src[0] == "node":
            nodes = self.nodes
            return f"%{src[1]}{'' if src[2] == 0 else f'.{src[2]}'} {nodes[src[1]].op}"
        if src[0] == "in":
            return f"%in{src[1]}"
        return src[0]


def diff(a: Any, b: Any, *, ignore: Any = (), atol: float = 0.0, include: Any = ()) -> DiffResult:
    """Compare graph A with graph B (ONNX files, snapshot files or ModelProtos).

    ``ignore`` takes any of ``names`` (graph input/output names), ``initializer-values`` and
    ``metadata``; ``atol`` is the largest absolute difference in initializer values that still
    counts as equal. Metadata is compared as graph identity (see ``exporter.stages.metadata``):
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


def _diff(ga: CanonGraph, gb: CanonGraph, ign: tuple[str, ...], atol: float, run_metadata: bool = False) -> DiffResult:
    from exporter.graph.diff_summary import summarize
    from exporter.graph.match import match_nodes

    res = DiffResult(_side(ga), _side(gb), ign, float(atol), include=("run-metadata",) if run_metadata else ())
    res.notes.extend(f"A: {n}" for n in ga.notes)
    res.notes.extend(f"B: {n}" for n in gb.notes)
    sa, sb = _Side(ga, "A"), _Side(gb, "B")
    ignore_values = "initializer-values" in ign

    _compare_model(ga, gb, res, with_metadata="metadata" not in ign, run_metadata=run_metadata)
    ca, cb = Counter(n.op for n in ga.nodes), Counter(n.op for n in gb.nodes)
    delta = {op: cb[op] - ca[op] for op in set(ca) | set(cb) if cb[op] != ca[op]}
    res.op_delta = dict(sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0])))

    pairs = match_nodes(sa, sb, ignore_values, res.notes, _align)
    match = dict(pairs)
    res.matched = len(pairs)
    ident_b = {j: j for j in match.values()}
    for n in gb.nodes:
        if n.index not in ident_b:
            res.added.append(_node_entry("b", sb, n))
    for n in ga.nodes:
        if n.index not in match:
            res.removed.append(_node_entry("a", sa, n))
    res.initializers_with_added_nodes = len({r for n in gb.nodes if n.index not in ident_b
                                             for r in n.inputs if r in sb.inits})
    res.initializers_with_removed_nodes = len({r for n in ga.nodes if n.index not in match
                                               for r in n.inputs if r in sa.inits})

    seen: set[tuple[str, str]] = set()
    for ia, ib in pairs:
        changes = _compare_node(sa, sb, ia, ib, match, ident_b, ignore_values, atol, res, seen)
        if changes:
            na, nb = ga.nodes[ia], gb.nodes[ib]
            res.changed.append({"a": f"%{ia}", "b": f"%{ib}", "op": nb.op, "name": nb.name or na.name,
                                "changes": changes})
    _compare_unused_initializers(ga, gb, res)
    _compare_interface(sa, sb, match, ident_b, res, check_names="names" not in ign)
    if (ga.kind == "snapshot" or gb.kind == "snapshot") and not ignore_values:
        res.notes.append("initializer values compared by content hash only (a snapshot holds no values); "
                         "--atol does not apply")
    if not res.identical:
        res.summary = summarize(ga, gb, sa, sb, pairs, res)
    return res


def _compare_model(ga: CanonGraph, gb: CanonGraph, res: DiffResult, with_metadata: bool,
                   run_metadata: bool = False) -> None:
    from exporter.stages.metadata import graph_identity

    if ga.ir_version is not None and gb.ir_version is not None and ga.ir_version != gb.ir_version:
        res.model.append({"field": "ir_version", "a": ga.ir_version, "b": gb.ir_version})
    for dom in sorted(set(ga.opsets) | set(gb.opsets)):
        oa, ob = ga.opsets.get(dom), gb.opsets.get(dom)
        if oa != ob:
            res.model.append({"field": f"opset {dom}", "a": oa, "b": ob})
    if with_metadata:
        ma, mb = graph_identity(ga.metadata, include_run=run_metadata), graph_identity(gb.metadata, include_run=run_metadata)
        for key in sorted(set(ma) | set(mb)):
            va, vb = ma.get(key), mb.get(key)
            if va != vb:
                res.metadata.extend(_metadata_changes(key, va, vb))
        if run_metadata and ga.producer and gb.producer and ga.producer != gb.producer:
            res.metadata.append({"field": "producer", "a": ga.producer, "b": gb.producer})


def _metadata_changes(key: str, va: str | None, vb: str | None) -> list[dict[str, Any]]:
    """One change per metadata key, or per changed field when both values are JSON objects
    (e.g. ``yexport.options: keep_bn false -> true`` rather than two long JSON texts)."""
    try:
        ja, jb = json.loads(va or ""), json.loads(vb or "")
    except ValueError:
        ja = jb = None
    if not (isinstance(ja, dict) and isinstance(jb, dict)):
        return [{"field": key, "a": va, "b": vb}]
    return [{"field": f"{key}.{k}", "a": json.dumps(ja.get(k)) if k in ja else None,
             "b": json.dumps(jb.get(k)) if k in jb else None}
            for k in sorted(set(ja) | set(jb)) if ja.get(k) != jb.get(k) or (k in ja) != (k in jb)]


def _node_entry(tag: str, side: _Side, n: CNode) -> dict[str, Any]:
    data = side.data_inputs(n)
    reads = f"{tag.upper()}{_orig(side, data[0][1])}" if data else ""
    return {tag: f"%{n.index}", "op": n.op, "name": n.name, "reads": reads}


def _compare_node(sa: _Side, sb: _Side, ia: int, ib: int, match: dict[int, int], ident_b: dict[int, int],
                  ignore_values: bool, atol: float, res: DiffResult, seen: set[tuple[str, str]]) -> list[str]:
    """What changed in a matched node pair; initializer changes go to ``res.initializers``."""
    na, nb = sa.nodes[ia], sb.nodes[ib]
    opset = sa.g.opsets.get("ai.onnx")
    changes: list[str] = []
    if na.op != nb.op:
        changes.append(f"op: {na.op} -> {nb.op}")
    if na.attrs != nb.attrs:
        for attr in sorted(set(na.attrs) | set(nb.attrs)):
            xa, xb = na.attrs.get(attr), nb.attrs.get(attr)
            if ignore_values and xa is not None and xb is not None:
                xa, xb = strip_hashes(xa), strip_hashes(xb)
            if xa != xb:
                changes.append(f"{attr}: {_v(xa)} -> {_v(xb)}")
    da, db = sa.data[ia], sb.data[ib]
    if len(da) != len(db):
        changes.append(f"data inputs: {len(da)} -> {len(db)}")
    for (slot, ra, ta), (_, rb, tb) in zip(da, db, strict=False):
        if ta != tb:
            changes.append(f"{_slot_name(na.op, slot, opset)}: {ta} -> {tb}")
        src_a, src_b = sa.source(ra, match), sb.source(rb, ident_b)
        if src_a != src_b and src_a[0] in ("node", "in") and src_b[0] in ("node", "in"):
            changes.append(f"{_slot_name(na.op, slot, opset)}: reads A{_orig(sa, ra)} -> B{sb.describe(src_b)}")
    if na.output_types != nb.output_types:
        if len(na.outputs) != len(nb.outputs):
            changes.append(f"outputs: {len(na.outputs)} -> {len(nb.outputs)}")
        for j, (ta, tb) in enumerate(zip(na.output_types, nb.output_types, strict=False)):
            if ta != tb:
                changes.append(f"output {j}: {ta} -> {tb}")
    # constant inputs slot by slot: initializers (also behind Identity) are compared, not counted as structure
    if len(da) == len(na.inputs) and len(db) == len(nb.inputs):
        return changes

    def where(slot: int) -> str:
        return f"A%{ia}/B%{ib} {na.op} {_slot_name(na.op, slot, opset)}"

    for slot in range(max(len(na.inputs), len(nb.inputs))):
        ra = na.inputs[slot] if slot < len(na.inputs) else "_"
        rb = nb.inputs[slot] if slot < len(nb.inputs) else "_"
        wa, wb = sa.init_of(ra), sb.init_of(rb)
        if wa is not None and wb is not None:
            if (wa, wb) not in seen:
                seen.add((wa, wb))
                c = _compare_init(sa.inits[wa], sb.inits[wb], ignore_values, atol)
                if c:
                    res.initializers.append({**c, "where": where(slot)})
        elif wa is not None and rb == "_":
            res.initializers.append({"kind": "removed", "where": where(slot), "a": sa.inits[wa].type, "b": None})
        elif ra == "_" and wb is not None:
            res.initializers.append({"kind": "added", "where": where(slot), "a": None, "b": sb.inits[wb].type})
        elif ra != "_" and rb != "_" and (ra in sa.const) != (rb in sb.const):
            what_a = "constant" if ra in sa.const else "computed value"
            what_b = "constant" if rb in sb.const else "computed value"
            changes.append(f"{_slot_name(na.op, slot, opset)}: {what_a} -> {what_b}")
        elif (ra == "_") != (rb == "_") and (ra in sa.const or rb in sb.const):
            changes.append(f"{_slot_name(na.op, slot, opset)}: {'absent' if ra == '_' else 'present'} -> "
                           f"{'absent' if rb == '_' else 'present'}")
    return changes


def _compare_unused_initializers(ga: CanonGraph, gb: CanonGraph, res: DiffResult) -> None:
    used_a = {r for n in ga.nodes for r in n.inputs} | {v.source for v in ga.outputs}
    used_b = {r for n in gb.nodes for r in n.inputs} | {v.source for v in gb.outputs}
    ua = Counter(i.type for i in ga.initializers if i.ref not in used_a)
    ub = Counter(i.type for i in gb.initializers if i.ref not in used_b)
    for t in sorted(set(ua) | set(ub)):
        res.initializers.extend({"kind": "removed", "where": "unused initializer", "a": t, "b": None}
                                for _ in range(ua[t] - ub[t]))
        res.initializers.extend({"kind": "added", "where": "unused initializer", "a": None, "b": t}
                                for _ in range(ub[t] - ua[t]))


def _compare_interface(sa: _Side, sb: _Side, match: dict[int, int], ident_b: dict[int, int], res: DiffResult,
                       check_names: bool) -> None:
    ga, gb = sa.g, sb.g
    for title, la, lb, target in (("input", ga.inputs, gb.inputs, res.inputs),
                                  ("output", ga.outputs, gb.outputs, res.outputs)):
        for k in range(max(len(la), len(lb))):
            va: CValue | None = la[k] if k < len(la) else None
            vb: CValue | None = lb[k] if k < len(lb) else None
            if va is None or vb is None:
                target.append({"index": k, "what": "added" if va is None else "removed",
                               "a": None if va is None else f"{va.name or va.ref}: {va.type}",
                               "b": None if vb is None else f"{vb.name or vb.ref}: {vb.type}"})
                continue
            if check_names and va.name is not None and vb.name is not None and va.name != vb.name:
                target.append({"index": k, "what": "name", "a": va.name, "b": vb.name})
            if va.type != vb.type:
                target.append({"index": k, "what": "type", "a": va.type, "b": vb.type})
            if title == "output" and va.source and vb.source:
                src_a, src_b = sa.source(va.source, match), sb.source(vb.source, ident_b)
                if src_a[0] in ("node", "in") and src_b[0] in ("node", "in") and src_a != src_b:
                    target.append({"index": k, "what": "source", "a": f"A{_orig(sa, va.source)}",
                                   "b": f"B{sb.describe(src_b)}"})


def _identical_files(a: Any, b: Any, ign: tuple[str, ...], atol: float, run_metadata: bool) -> DiffResult | None:
    """The result for two ONNX files with the same bytes, from one checked parse and no matching; None
    when the files differ, either is a snapshot, or external data could differ (other folders)."""
    if not _same_bytes(a, b):
        return None
    try:
        with open(a, "rb") as fh:
            if fh.read(len(SNAPSHOT_MAGIC)) == SNAPSHOT_MAGIC.encode():
                return None
    except OSError:
        return None
    from exporter.graph.load import _EXTERNAL, check_tensor, iter_tensors, load_onnx, model_dir

    model = load_onnx(Path(a), load_weights=False)  # the same checks as a full diff: a hostile file still fails
    external = [(w, t) for w, t in iter_tensors(model) if t.data_location == _EXTERNAL]
    if external:
        if model_dir(a) != model_dir(b):
            return None
        base = model_dir(a)
        for where, t in external:  # the values are compared, so they must be there (stat only, nothing read)
            check_tensor(t, base, where=f"{a}: {where}", need_data=True)
    g = model.graph
    ops = Counter(n.op_type if not n.domain or n.domain == "ai.onnx" else f"{n.domain}.{n.op_type}" for n in g.node)
    inits = len({t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer})

    def side(path: Any) -> dict[str, Any]:
        return {"path": str(path), "kind": "onnx", "nodes": len(g.node), "initializers": inits,
                "ops": dict(sorted(ops.items()))}

    return DiffResult(side(a), side(b), ign, atol, matched=len(g.node),
                      include=("run-metadata",) if run_metadata else ())


def _load_pair(a: Any, b: Any) -> tuple[CanonGraph, CanonGraph]:
    """Both canonical graphs; two byte-identical files are read once."""
    ga = load_graph(a)
    if ga.kind == "onnx" and _same_bytes(a, b) and (
            not any(i.external for i in ga.initializers) or Path(a).resolve().parent == Path(b).resolve().parent):
        return ga, dataclasses.replace(ga, path=str(b))
    return ga, load_graph(b)


def _same_bytes(a: Any, b: Any) -> bool:
    """Both paths name regular files with the same content (compared in 1 MiB blocks)."""
    if not (isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike))):
        return False
    try:
        sa, sb = os.stat(a), os.stat(b)
        if sa.st_size != sb.st_size or not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)):
            return False
        if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):  # one file named twice: nothing to read
            return True
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _orig(side: _Side, ref: str) -> str:
    return side.describe(side.source(ref, None))


def _compare_init(ia: Any, ib: Any, ignore_values: bool, atol: float) -> dict[str, Any] | None:
    if ia.type != ib.type:
        return {"kind": "type", "a": ia.type, "b": ib.type}
    if ignore_values:
        return None
    if ia.tensor is not None and ib.tensor is not None:
        if ia.digest() == ib.digest():  # streamed in chunks: equal content never loads a tensor
            return None
        if ia.external or ib.external:
            from exporter.graph.load import compare_streamed

            return compare_streamed(ia, ib, atol)
        da, db = ia.data(), ib.data()
        try:
            import numpy as np

            xa, xb = ia.array(da), ib.array(db)
            if xa.dtype.kind in "biuf" and xa.shape == xb.shape:
                if xa.dtype.kind == "f" and xa.dtype.itemsize >= 4:
                    delta = np.abs(xa - xb)
                else:
                    delta = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
                dmax = float(delta.max()) if delta.size else 0.0
                if dmax <= atol:
                    return None
                return {"kind": "values", "a": ia.type, "b": ib.type, "detail": f"max |delta| {dmax:.4g}",
                        "max_abs_diff": dmax}
        except Exception:  # noqa: BLE001 - packed or odd dtypes: bytes differ is all we know
            pass
        return {"kind": "values", "a": ia.type, "b": ib.type, "detail": "bytes differ"}
    ha, hb = ia._digest if ia.tensor is None else ia.digest(), ib._digest if ib.tensor is None else ib.digest()
    if ha is None or hb is None or ha == hb:
        return None
    return {"kind": "values", "a": ia.type, "b": ib.type, "detail": f"hash {ha} -> {hb}"}
