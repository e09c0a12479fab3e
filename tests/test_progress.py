"""Progress events and tables: the library is silent unless a reporter is installed; the pipeline
reports each stage; the console reporter logs stage lines; tables for pipes carry no control
characters and long reasons go to footnotes."""

from __future__ import annotations

import io
import re

from exporter import progress
from exporter.options import ExportOptions
from exporter.pipeline import Context, Stage, run_pipeline
from exporter.tables import Footnotes, render, size_text, stream_style


class _Source:
    name = "toy"


def _stages() -> list[Stage]:
    return [Stage("one", lambda c: c.replace(change="did one")),
            Stage("skipped", lambda c: c, when=lambda o: False),
            Stage("two", lambda c: c.replace(change="did two"))]


def test_library_is_silent_without_reporter(capsys) -> None:
    run_pipeline(Context(options=ExportOptions(), source=_Source()), _stages())  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_pipeline_reports_each_stage() -> None:
    events: list[progress.Event] = []
    with progress.installed(events.append):
        run_pipeline(Context(options=ExportOptions(), source=_Source()), _stages())  # type: ignore[arg-type]
    seen = [(e.phase, e.kind, e.what) for e in events]
    assert seen == [("start", "pipeline", "toy"), ("start", "stage", "one"), ("end", "stage", "one"),
                    ("start", "stage", "two"), ("end", "stage", "two"), ("end", "pipeline", "toy")]
    assert events[2].info["detail"] == "did one" and events[2].info["ok"] is True
    assert events[2].info["seconds"] >= 0


def test_a_broken_reporter_never_breaks_the_work() -> None:
    def broken(e: progress.Event) -> None:
        raise RuntimeError("terminal gone")

    with progress.installed(broken):
        ctx = run_pipeline(Context(options=ExportOptions(), source=_Source()), _stages())  # type: ignore[arg-type]
    assert [r.name for r in ctx.records] == ["one", "two"]


def test_console_reporter_logs_stage_lines() -> None:
    buf = io.StringIO()
    reporter = progress.ConsoleReporter(file=buf, variants=["toy-a.onnx", "toy-b.onnx"])
    with progress.installed(reporter):
        for _ in range(2):
            run_pipeline(Context(options=ExportOptions(), source=_Source()), _stages())  # type: ignore[arg-type]
    text = buf.getvalue()
    assert "[1/2] toy-a.onnx" in text and "[2/2] toy-b.onnx" in text
    assert re.search(r"✓ one +\d+\.\d s  did one", text) and "skipped" not in text
    assert "\x1b" not in text  # a StringIO is no terminal: no colour codes


def test_reporter_for_cli_is_quiet_off_a_terminal() -> None:
    assert progress.reporter_for_cli(quiet=False, stream=io.StringIO()) is None

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress.reporter_for_cli(quiet=True, stream=Tty()) is None
    assert isinstance(progress.reporter_for_cli(quiet=False, stream=Tty()), progress.ConsoleReporter)


def test_tables_for_pipes_and_terminals(monkeypatch) -> None:
    notes = Footnotes()
    reason = "CUDAExecutionProvider was requested but onnxruntime ran on CPU: libcublasLt.so.12: cannot open"
    rows = [("a.onnx", 230, "cpu: pass (1.1x fp32 noise); cuda: not available " + notes.ref(reason)),
            ("b.onnx", 7, "cpu: FAIL")]
    text = render(("file", "nodes", "parity"), rows, right=("nodes",), footnotes=notes)
    lines = text.splitlines()
    assert lines[0].split() == ["file", "nodes", "parity"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:2] == ["a.onnx", "230"] and lines[2].endswith("[1]")
    assert lines[-1] == f"[1] {reason}" and "\x1b" not in text
    coloured = render(("file", "nodes", "parity"), rows, color=True, width=80)
    assert "\x1b[" in coloured and "FAIL" in coloured
    md = render(("file", "nodes", "parity"), rows, fmt="markdown", right=("nodes",), footnotes=notes)
    assert md.splitlines()[1] == "|---|--:|---|" and md.splitlines()[-1].startswith("[1] ")
    monkeypatch.setenv("NO_COLOR", "1")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert stream_style(Tty())["color"] is False and stream_style(io.StringIO()) == {"color": False, "width": None}


def test_sizes_are_decimal_everywhere() -> None:
    assert size_text(29_000_000) == "29.0 MB" and size_text(850_000) == "850 kB" and size_text(12) == "12 B"
    assert size_text(1_200_000_000) == "1.2 GB"
