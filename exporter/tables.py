"""Tables for the terminal, for pipes and for markdown, rendered by rich.

``render(columns, rows)`` gives the same table everywhere: a header, a line of dashes, one line per
row with columns two spaces apart (so ``row.split()`` finds the cells of a pipe's output), and
footnotes below for text too long for a cell. With ``color`` (the CLI sets it only when stdout is a
terminal and ``NO_COLOR`` is unset) verdict words are coloured (pass/ok green, FAIL/NO red);
without it the text has no control characters at all. ``width`` is the terminal's: cells then wrap
instead of running off the screen; ``None`` (pipes, files, the library) never wraps.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Footnotes", "render", "size_text", "stream_style"]

_GOOD = re.compile(r"\b(pass|PASS|ok|yes|within)\b")
_BAD = re.compile(r"\b(FAIL(?:ED)?|NO|OUT OF|sha256 mismatch|file missing|not available)\b")


@dataclass
class Footnotes:
    """Long texts moved out of table cells: ``ref(text)`` gives ``[1]`` (the same number for the same
    text) and :meth:`lines` the notes to print under the table."""

    texts: list[str] = field(default_factory=list)

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {t}" for i, t in enumerate(self.texts, 1)]


def size_text(n: int | float) -> str:
    """Bytes in decimal units, the same in every command: 29.0 MB (1 MB = 10^6 bytes), 850 kB, 1.2 GB."""
    for div, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}" if suffix != "kB" else f"{n / div:.0f} kB"
    return f"{int(n)} B"


def stream_style(stream: IO[str] | Any) -> dict[str, Any]:
    """``color`` and ``width`` for output to ``stream``: colour and wrapping only on a terminal, and
    no colour where ``NO_COLOR`` is set or ``TERM=dumb``."""
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if not tty:
        return {"color": False, "width": None}
    import shutil

    color = "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return {"color": color, "width": shutil.get_terminal_size((120, 24)).columns}


def _box() -> Any:
    from rich.box import Box

    # top, head, head row (the dashes under the header), mid, row, foot row, foot, bottom
    return Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def render(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, fmt: str = "text",
           right: Iterable[str] = (), footnotes: Footnotes | Sequence[str] | None = None,
           notes: Sequence[str] = (), color: bool = False, width: int | None = None, title: str | None = None) -> str:
    """The table as text (``fmt='text'``) or GitHub markdown (``fmt='markdown'``), ending with a newline.

    ``right``: columns aligned right (numbers). ``footnotes`` are printed under the table as
    ``[n] text``; ``notes`` after them as ``note: text`` (markdown: block quotes)."""
    cells = [[_cell(c) for c in row] for row in rows]
    right = set(right)
    notes_lines = list(footnotes.lines() if isinstance(footnotes, Footnotes) else (footnotes or ()))
    if fmt == "markdown":
        return _markdown(columns, cells, right, notes_lines, list(notes), title)
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=_box(), show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), show_header=True,
                  header_style="bold" if color else "", highlight=False, collapse_padding=True)
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", no_wrap=width is None,
                         overflow="fold")
    for row in cells:
        texts = []
        for c in row:
            t = Text(c)
            if color:
                t.highlight_regex(_GOOD, "green")
                t.highlight_regex(_BAD, "bold red")
            texts.append(t)
        table.add_row(*texts)
    buf = io.StringIO()
    console = Console(file=buf, width=width or 100_000, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, markup=False, emoji=False, highlight=False,
                      legacy_windows=False, soft_wrap=False)
    if title:
        console.print(Text(title, style="bold" if color else ""))
    console.print(table)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    lines += notes_lines + [f"note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return str(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


def _markdown(columns: Sequence[str], rows: list[list[str]], right: set[str], footnotes: list[str],
              notes: list[str], title: str | None) -> str:
    out = [f"**{_md_escape(title)}**", ""] if title else []
    out += ["| " + " | ".join(_md_escape(c) for c in columns) + " |",
            "|" + "|".join("--:" if c in right else "---" for c in columns) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    if footnotes or notes:
        out.append("")
        out += [f"{_md_escape(n)}  " for n in footnotes]
        out += [f"> {_md_escape(n)}" for n in notes]
    return "\n".join(out) + "\n"
