"""The result of ``yexport diff`` and its three renderings: text for a terminal, JSON, and markdown
ready to paste as a pull-request comment (every cell escaped: a file's names and metadata are
untrusted text). The comparison itself is :mod:`exporter.graph.diff`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DiffResult"]

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

        node_head = ["| node | op | name | reads |", "|---|---|---|---|"]
        by_layer = ["| layer | nodes | ops |", "|---|--:|---|"]
        # (entries, what they are, grouped_rows kind, header per layer, header per entry, row per entry)
        Row = Callable[[dict[str, Any]], str]
        sections: list[tuple[list[dict[str, Any]], str, str, list[str], list[str], Row]] = [
            (self.added, "nodes added", "added", by_layer, node_head,
             lambda e: f"| B{e['b']} | {_md(e['op'])} | {_md(e.get('name') or '')} | {_md(e.get('reads') or '')} |"),
            (self.removed, "nodes removed", "removed", by_layer, node_head,
             lambda e: f"| A{e['a']} | {_md(e['op'])} | {_md(e.get('name') or '')} | {_md(e.get('reads') or '')} |"),
            (self.changed, "nodes changed", "changed", ["| layer | nodes | ops | what changed |", "|---|--:|---|---|"],
             ["| A | B | op | changes |", "|---|---|---|---|"],
             lambda e: f"| A{e['a']} | B{e['b']} | {_md(_label(e))} | {_md('; '.join(e['changes']))} |"),
            (self.initializers, "initializer changes", "init", ["| layer | initializers | kinds |", "|---|--:|---|"],
             ["| change |", "|---|"], lambda c: f"| {_md(_init_line(c))} |"),
        ]
        for entries, what, kind, layer_head, entry_head, row in sections:
            if len(entries) > _GROUP_MD:
                details(f"{len(entries)} {what} (per layer; --format json lists each)", layer_head,
                        grouped_rows(entries, kind, _md))
            elif entries:
                details(f"{len(entries)} {what}", entry_head, [row(e) for e in entries])
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
