"""Progress events: the library says what it is doing, a reporter (installed by the CLI) shows it.

Silent by default: with no reporter installed every call here is a no-op, so the library prints
nothing. ``yexport`` installs :class:`ConsoleReporter` (rich, on stderr) when stderr is a terminal
and ``--quiet`` is not given. A reporter is any callable taking an :class:`Event`.

The library emits:
- ``task(what)`` around work that takes seconds (building and calibrating a model, rendering):
  a ``start`` and an ``end`` event (with ``seconds``, ``ok`` and an optional ``detail``);
- ``run_pipeline`` emits a ``task`` per export (``kind="pipeline"``) and per stage (``kind="stage"``),
  the stage's end carrying what it changed;
- ``step(what, done, total)`` for loops (parity per provider and input, profile per layer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["ConsoleReporter", "Event", "emit", "installed", "step", "task"]


@dataclass(frozen=True)
class Event:
    """``phase``: 'start', 'end' or 'step'. ``kind`` groups events ('task', 'pipeline', 'stage',
    'parity', 'layer'); ``what`` is a short human name; ``info`` carries the rest (seconds, ok, detail,
    done, total)."""

    phase: str
    kind: str
    what: str
    info: dict[str, Any] = field(default_factory=dict)


Reporter = Callable[[Event], None]
_reporter: ContextVar[Reporter | None] = ContextVar("yexport_reporter", default=None)


def emit(phase: str, kind: str, what: str, **info: Any) -> None:
    """Send one event to the installed reporter (nothing happens without one). A reporter's own
    failure never breaks the work it reports on."""
    reporter = _reporter.get()
    if reporter is None:
        return
    try:
        reporter(Event(phase, kind, what, info))
    except Exception:  # noqa: BLE001 - progress is decoration: a broken terminal must not fail an export
        pass


@contextmanager
def task(what: str, kind: str = "task", **info: Any) -> Iterator[dict[str, Any]]:
    """Report ``what`` as started, then as ended with its duration. The yielded dict may receive a
    ``detail`` (shown on the end line) or ``ok=False``."""
    end: dict[str, Any] = {}
    emit("start", kind, what, **info)
    t0 = time.perf_counter()
    try:
        yield end
    except BaseException:
        emit("end", kind, what, **{**info, "seconds": time.perf_counter() - t0, "ok": False, **end})
        raise
    emit("end", kind, what, **{"ok": True, **info, "seconds": time.perf_counter() - t0, **end})


def step(what: str, done: int, total: int, kind: str = "step", **info: Any) -> None:
    """Report that ``done`` of ``total`` items of the current task are finished (``what`` names the item)."""
    emit("step", kind, what, done=done, total=total, **info)


@contextmanager
def installed(reporter: Reporter | None) -> Iterator[None]:
    """Install ``reporter`` for the code inside the block (``None``: silence)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        if hasattr(reporter, "close"):
            reporter.close()  # type: ignore[union-attr]
        _reporter.reset(token)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:.0f} s"


class ConsoleReporter:
    """Live status (a spinner line naming what runs, with elapsed time and steps) and one log line
    per finished stage or task, on a rich console (stderr by default), in the manner of YOLOv5's own
    ``export.py`` log. ``variants`` names the files the pipelines make, in order."""

    def __init__(self, file: IO[str] | None = None, variants: list[str] | None = None) -> None:
        import os

        from rich.console import Console

        # NO_COLOR: plain log lines only (no styles, no spinner redrawing the line)
        self.plain = "NO_COLOR" in os.environ
        self.console = Console(file=file, stderr=file is None, highlight=False,
                               color_system=None if self.plain else "auto")
        self.variants = list(variants or [])
        self._stack: list[Event] = []
        self._step = ""
        self._live: Any = None
        self._pipelines = 0
        self._t0: list[float] = []

    # -- rich plumbing ---------------------------------------------------------------------------
    def _status_text(self) -> Any:
        from rich.text import Text

        if not self._stack:
            return Text("")
        names = [e.what for e in self._stack if e.kind != "pipeline"] or [self._stack[-1].what]
        elapsed = time.perf_counter() - self._t0[-1]
        text = Text(" > ".join(names), style="bold")
        text.append(f"  {_seconds(elapsed)}", style="dim")
        if self._step:
            text.append(f"  {self._step}", style="cyan")
        return text

    def _refresh(self) -> None:
        if self.plain:
            return
        if not self._stack:
            if self._live is not None:
                self._live.stop()
                self._live = None
            return
        if self._live is None:
            from rich.live import Live
            from rich.spinner import Spinner

            spinner = Spinner("dots")

            def render() -> Any:
                spinner.text = self._status_text()
                return spinner

            self._live = Live(console=self.console, refresh_per_second=8, transient=True, get_renderable=render)
            self._live.start()
        else:
            self._live.refresh()

    def _log(self, markup: str) -> None:
        self.console.print(markup, highlight=False, soft_wrap=False, overflow="ellipsis", no_wrap=True)

    def close(self) -> None:
        self._stack.clear()
        self._refresh()

    # -- events ----------------------------------------------------------------------------------
    def __call__(self, e: Event) -> None:
        from rich.markup import escape

        indent = "  " * sum(1 for s in self._stack if s.kind == "pipeline")
        if e.phase == "start":
            if e.kind == "pipeline":
                name = self.variants[self._pipelines] if self._pipelines < len(self.variants) else e.what
                self._pipelines += 1
                total = f"[{self._pipelines}/{len(self.variants)}] " if len(self.variants) > 1 else ""
                self._log(f"[bold]{escape(total)}{escape(name)}[/bold]")
                e = Event(e.phase, e.kind, name, e.info)
            self._stack.append(e)
            self._t0.append(time.perf_counter())
            self._step = ""
        elif e.phase == "step":
            steps = e.info.get("total")
            self._step = f"{e.what} ({e.info.get('done')}/{steps})" if steps else e.what
        elif e.phase == "end":
            if not self._stack:
                return
            start = self._stack.pop()
            self._t0.pop()
            self._step = ""
            indent = "  " * sum(1 for s in self._stack if s.kind == "pipeline")
            seconds = float(e.info.get("seconds", 0.0))
            ok = e.info.get("ok", True)
            mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
            detail = str(e.info.get("detail") or "")
            if e.kind == "pipeline":
                self._log(f"{indent}  {mark} [bold]{escape(start.what)}[/bold] done in {_seconds(seconds)}"
                          + (f": {escape(detail)}" if detail else ""))
            else:
                what = f"{start.what:<13}" if e.kind == "stage" else start.what
                self._log(f"{indent}  {mark} {escape(what)} [dim]{seconds:6.1f} s[/dim]"
                          + (f"  {escape(detail)}" if detail else ""))
        self._refresh()


def reporter_for_cli(quiet: bool, stream: IO[str] | None = None) -> ConsoleReporter | None:
    """The CLI's reporter: a :class:`ConsoleReporter` on stderr when it is a terminal, else ``None``."""
    import sys

    s = stream or sys.stderr
    if quiet or not (hasattr(s, "isatty") and s.isatty()):
        return None
    try:
        import rich  # noqa: F401
    except ImportError:  # progress is optional: without rich the CLI simply stays quiet
        return None
    return ConsoleReporter(file=s)
