"""DOT text for the Graphviz drawings (:mod:`exporter.graph.graphviz`), written here with no Python
dependency, and Graphviz's ``dot``, which turns it into SVG, PNG or PDF."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ConfigError, MissingDependency, YexportError

OUTPUT_FORMATS = ("svg", "png", "pdf", "dot")
_FONT = "Helvetica"


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _q(text: str) -> str:
    """A DOT quoted string; control characters (a NUL breaks ``dot``) are shown as ``\\xNN``."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + _CONTROL.sub(lambda m: f"\\\\x{ord(m.group()):02x}", text) + '"'


def _attr_text(attrs: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items())


class _Dot:
    def __init__(self, name: str, title: str | None) -> None:
        self.lines: list[str] = [
            f"digraph {_q(name)} {{",
            f'  graph [rankdir=TB, fontname="{_FONT}", fontsize=12, nodesep=0.25, ranksep=0.3'
            + (f", label={_q(title)}, labelloc=t" if title else "") + "];",
            f'  node [shape=box, style="rounded,filled", fillcolor="#f3f3f3", color="#555555", fontname="{_FONT}", fontsize=10];',
            f'  edge [fontname="{_FONT}", fontsize=8, color="#666666", fontcolor="#444444", arrowsize=0.6];',
        ]
        self.node_count = 0
        self.edge_count = 0
        self._edges: set[tuple[str, str, str]] = set()

    def node(self, nid: str, attrs: Mapping[str, str]) -> None:
        self.node_count += 1
        self.lines.append(f"  {_q(nid)} [{_attr_text(attrs)}];")

    def edge(self, a: str, b: str, attrs: Mapping[str, str] | None = None) -> None:
        label = (attrs or {}).get("label", "")
        if (a, b, label) in self._edges:
            return
        self._edges.add((a, b, label))
        self.edge_count += 1
        self.lines.append(f"  {_q(a)} -> {_q(b)}" + (f" [{_attr_text(attrs)}]" if attrs else "") + ";")

    def text(self) -> str:
        return "\n".join([*self.lines, "}"]) + "\n"


@dataclass(frozen=True)
class DotGraph:
    """DOT text plus what it shows (for messages and tests)."""

    text: str
    nodes: int
    edges: int
    blocks: int = 0
    added: int = 0
    removed: int = 0

    def summary(self) -> str:
        parts = [f"{self.blocks} module boxes" if self.blocks else f"{self.nodes} nodes", f"{self.edges} edges"]
        if self.added or self.removed:
            parts.append(f"{self.added} added, {self.removed} removed")
        return ", ".join(parts)


def find_dot() -> str:
    """Path of Graphviz's ``dot``; :class:`MissingDependency` names the Debian package."""
    found = shutil.which("dot")
    if not found:
        raise MissingDependency("Graphviz 'dot' not found: install Debian's 'graphviz' package (make install-system)")
    return found


def write_dot(text: str, out: str | Path, timeout: float = 300.0) -> Path:
    """Write DOT ``text`` to ``out``: as is for ``.dot``, through ``dot -T<suffix>`` otherwise."""
    from exporter.io import atomic_write

    dst = Path(out)
    fmt = dst.suffix.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"{dst}: unknown output type '{dst.suffix}': use .svg, .png, .pdf or .dot")
    if fmt == "dot":
        return atomic_write(dst, text)
    exe = find_dot()
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise YexportError(f"Graphviz 'dot' took more than {timeout:.0f} s on this graph") from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise YexportError(f"Graphviz 'dot' failed: {err[0] if err else f'exit code {proc.returncode}'}")
    return atomic_write(dst, proc.stdout)
