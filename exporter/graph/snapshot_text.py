"""Snapshot text of a canonical graph, and reading it back (see :mod:`exporter.graph.snapshot`).

The format (pinned by the golden files in ``fixtures/golden`` and the snapshot tests)::

    # yexport graph snapshot v1
    ir_version: 8
    opsets: ai.onnx=17
    metadata:
      "key": "value"
    inputs:
      %in0 "images": f32[1,3,640,640]
    outputs:
      %out0 "output0": f32[1,25200,85] = %241
    initializers:
      %w0: f32[32,3,6,6] #0123456789abcdef
    nodes:
      %0: f32[1,32,320,320] = Conv(%in0: f32[1,3,640,640], %w0: f32[32,3,6,6])  kernel_shape=[6,6]
        | body lines of subgraphs, if any
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from exporter.errors import InputError
from exporter.graph.canon_graph import (
    CanonGraph,
    CInit,
    CNode,
    CValue,
    _attrs_text,
    _values,
    render_node,  # noqa: F401 - re-exported: the node line is part of the format
)

SNAPSHOT_MAGIC = "# yexport graph snapshot v1"


def render_body(g: CanonGraph, *, io_names: bool = True, hashes: bool = True) -> list[str]:
    lines = ["inputs:"]
    for v in g.inputs:
        nm = f" {json.dumps(v.name)}" if io_names and v.name is not None else ""
        lines.append(f"  {v.ref}{nm}: {v.type}")
    lines.append("outputs:")
    for v in g.outputs:
        nm = f" {json.dumps(v.name)}" if io_names and v.name is not None else ""
        lines.append(f"  {v.ref}{nm}: {v.type} = {v.source}")
    lines.append("initializers:")
    if hashes:
        lines.extend([f"  {i.ref}: {i.type} #{i.digest()}" for i in g.initializers])
    else:
        lines.extend([f"  {i.ref}: {i.type}" for i in g.initializers])
    lines.append("nodes:")
    if g.node_lines is not None:
        lines.extend(g.node_lines)
        return lines
    attr_text: dict[int, str] = {}  # attribute dicts are shared between nodes: rendered once each
    append = lines.append
    for n in g.nodes:
        attrs = n.attrs
        if attrs:
            a = attr_text.get(id(attrs))
            if a is None:
                a = attr_text[id(attrs)] = _attrs_text(attrs)
        else:
            a = ""
        append(f"  {_values(n.outputs, n.output_types) or '()'} = {n.op}({_values(n.inputs, n.input_types)}){a}")
        if n.body:
            lines.extend(f"    | {b}" for b in n.body)
    return lines


def render_snapshot(g: CanonGraph, *, io_names: bool = True, metadata: bool = True, run_metadata: bool = False) -> str:
    """Snapshot text; the metadata is the graph's identity (see ``exporter.identity``), plus
    the run record (parity options, stages, source path, versions) with ``run_metadata``."""
    from exporter.identity import graph_identity

    lines = [SNAPSHOT_MAGIC, f"ir_version: {g.ir_version}",
             "opsets: " + " ".join(f"{d}={v}" for d, v in g.opsets.items())]
    if metadata:
        lines.append("metadata:")
        for k, v in graph_identity(g.metadata, include_run=run_metadata).items():
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)}")
    lines.extend(render_body(g, io_names=io_names))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# reading it back


def _unquoted(s: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, char, bracket depth after it)`` for each character of ``s`` outside double quotes."""
    depth, quoted, i = 0, False, start
    while i < len(s):
        c = s[i]
        if quoted:
            if c == "\\":
                i += 2
                continue
            quoted = c != '"'
        elif c == '"':
            quoted = True
        else:
            if c in "[(<{":
                depth += 1
            elif c in "])>}":
                depth -= 1
            yield i, c, depth
        i += 1


def split_top(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    out, start = [], 0
    for i, c, depth in _unquoted(s):
        if i >= start and depth == 0 and c not in "])>}" and s.startswith(sep, i):
            out.append(s[start:i])
            start = i + len(sep)
    out.append(s[start:])
    return out


def _split_ref_type(s: str) -> tuple[str, str]:
    s = s.strip()
    if s == "_":
        return "_", ""
    r, _, t = s.partition(": ")
    return r.strip(), t.strip()


def parse_node_line(line: str, index: int) -> CNode:
    head, eq, rest = line.partition(" = ")
    if not eq:
        raise ValueError("expected 'outputs = Op(inputs)'")
    k = rest.find("(")
    if k <= 0:
        raise ValueError("expected 'Op(' after '='")
    op = rest[:k]
    # the ')' that closes the '(' at k
    i = next((j for j, c, depth in _unquoted(rest, k) if depth == 0 and c in "])>}"), -1)
    if i < 0:
        raise ValueError("unbalanced parentheses")
    ins_text, attr_text = rest[k + 1:i], rest[i + 1:].strip()
    outs = [_split_ref_type(x) for x in split_top(head, ", ")] if head != "()" else []
    ins = [_split_ref_type(x) for x in split_top(ins_text, ", ")] if ins_text.strip() else []
    attrs: dict[str, str] = {}
    if attr_text:
        for item in split_top(attr_text, "  "):
            item = item.strip()
            if not item:
                continue
            name, eq2, val = item.partition("=")
            if not eq2:
                raise ValueError(f"bad attribute {item!r}")
            attrs[name] = val
    return CNode(index, op, [r for r, _ in ins], [t for _, t in ins], [r for r, _ in outs], [t for _, t in outs], attrs)


_VALUE_RE = re.compile(r'(?P<ref>%\S+?)(?: (?P<name>"(?:[^"\\]|\\.)*"))?: (?P<type>.+?)(?: = (?P<src>\S+))?\Z')
_INIT_RE = re.compile(r"(?P<ref>%\S+): (?P<type>\S+)(?: #(?P<hash>\S+))?\Z")


def parse_snapshot(text: str, path: str | None = None) -> CanonGraph:
    """Read snapshot text back into a :class:`CanonGraph` (hashes, no values)."""
    where = path or "<snapshot>"
    lines = text.splitlines()
    if not lines or lines[0].strip() != SNAPSHOT_MAGIC:
        raise InputError(f"{where}: not a yexport snapshot (first line must be {SNAPSHOT_MAGIC!r})")
    g = CanonGraph("snapshot", path, None, {}, {}, [], [], [], [])
    section = None
    for ln, raw in enumerate(lines[1:], start=2):
        if not raw.strip() or raw.startswith("#") or raw.startswith("    |"):
            continue
        try:
            if not raw.startswith(" "):
                key, _, val = raw.partition(":")
                val = val.strip()
                if key == "ir_version":
                    g.ir_version = int(val) if val and val != "None" else None
                elif key == "opsets":
                    for item in val.split():
                        d, _, v = item.rpartition("=")
                        g.opsets[d] = int(v)
                elif key in ("metadata", "inputs", "outputs", "initializers", "nodes"):
                    section = key
                else:
                    raise ValueError(f"unknown section {key!r}")
                continue
            body = raw.strip()
            if section == "metadata":
                obj: Any = json.loads("{" + body + "}")
                g.metadata.update(obj)
            elif section in ("inputs", "outputs"):
                m = _VALUE_RE.match(body)
                if not m:
                    raise ValueError(f"bad {section[:-1]} line")
                name = json.loads(m["name"]) if m["name"] else None
                (g.inputs if section == "inputs" else g.outputs).append(CValue(m["ref"], name, m["type"], m["src"]))
            elif section == "initializers":
                m = _INIT_RE.match(body)
                if not m:
                    raise ValueError("bad initializer line")
                g.initializers.append(CInit(m["ref"], m["type"], _digest=m["hash"]))
            elif section == "nodes":
                g.nodes.append(parse_node_line(body, len(g.nodes)))
            else:
                raise ValueError("line outside any section")
        except (ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"{where}:{ln}: malformed snapshot line ({exc})") from None
    return g
