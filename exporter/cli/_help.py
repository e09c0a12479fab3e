"""How ``--help`` reads: options in named groups, defaults and ``YEXPORT_*`` variables shown, examples
at the end, and full one-line command summaries in ``yexport --help``.

Plain click (no help library): ``Command`` is a ``click.Command`` that takes ``examples`` (lines shown
under "Examples") and ``sections`` (group title -> parameter names, in the order shown). Parameters not
named in a section fall into the group their field declares in the options model (exporter/options.py),
the shared model group below, or "Options".
"""

from __future__ import annotations

from typing import Any

import click

MODEL_OPTIONS = ("cfg", "nc", "seed", "trust_checkpoint")
# the parity options name their group in the options model; the title here fixes its place
SHARED_SECTIONS: dict[str, tuple[str, ...]] = {"Model": MODEL_OPTIONS, "Parity": ()}
CONTEXT = {"show_default": True, "max_content_width": 120, "help_option_names": ["-h", "--help"]}


class Command(click.Command):
    """A click command with option groups, env vars shown and an "Examples" epilog."""

    def __init__(self, *args: Any, examples: tuple[str, ...] | list[str] = (),
                 sections: dict[str, tuple[str, ...]] | None = None, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**CONTEXT, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)
        self.examples = tuple(examples)
        self.sections = dict(sections or {})
        for p in self.params:
            # click names the variable from the prefix (YEXPORT_EXPORT_KEEP_BN); --trust-checkpoint is
            # allow_from_autoenv=False and so is never shown as settable from the environment
            if isinstance(p, click.Option) and p.allow_from_autoenv and p.name not in ("help", "config"):
                p.show_envvar = True

    def _grouped(self, ctx: click.Context) -> list[tuple[str, list[tuple[str, str]]]]:
        placed: dict[str, str] = {}
        order: list[str] = []
        for title, names in [*self.sections.items(), *SHARED_SECTIONS.items()]:
            if title not in order:
                order.append(title)
            for n in names:
                placed.setdefault(n, title)
        groups: dict[str, list[tuple[str, str]]] = {t: [] for t in order}
        other: list[tuple[str, str]] = []
        for p in self.get_params(ctx):
            if not isinstance(p, click.Option):
                continue
            rec = p.get_help_record(ctx)
            if rec is None:
                continue
            group = placed.get(p.name or "") or getattr(p, "group", "")
            (groups.setdefault(group, []) if group else other).append(rec)
        out = [(t, rows) for t, rows in groups.items() if rows]
        if other:
            out.append(("Options", other))
        return out

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, rows in self._grouped(ctx):
            with formatter.section(title):
                write_dl(formatter, rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:
                    formatter.write(" " * formatter.current_indent + line + "\n")


def write_dl(formatter: click.HelpFormatter, rows: list[tuple[str, str]], col_max: int = 30) -> None:
    """click's two-column list, wrapped at spaces only: never inside ``--int-shapes`` or
    ``fused,keep-bn`` (click's own wrapping breaks at hyphens)."""
    import textwrap

    first = min(max((len(a) for a, _ in rows), default=0), col_max) + 2
    indent = formatter.current_indent
    width = max((formatter.width or 80) - indent - first, 20)
    for term, text in rows:
        formatter.write(" " * indent + term)
        lines = textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False) or [""]
        if len(term) + 2 > first:
            formatter.write("\n")
            formatter.write("".join(" " * (indent + first) + ln + "\n" for ln in lines))
        else:
            formatter.write(" " * (first - len(term)) + lines[0] + "\n")
            formatter.write("".join(" " * (indent + first) + ln + "\n" for ln in lines[1:]))


def summary(cmd: click.Command) -> str:
    """The first sentence of a command's help, whole (click would cut it at about 45 characters)."""
    if cmd.short_help:
        return cmd.short_help
    first = (cmd.help or "").strip().split("\n\n")[0]
    text = " ".join(first.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]
