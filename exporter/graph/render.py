"""Render the Netron view of an ONNX file to PNG or SVG with headless Chromium.

Netron has no image export on the command line, so this starts Netron on a private loopback
port, opens it in Debian's ``chromium`` through Playwright, accepts the consent notice, waits
until the graph is drawn and then takes Netron's own standalone SVG of the graph (styles
inlined, the same file as its "Export as SVG" menu). A PNG is a screenshot of that SVG at full
size, so tall graphs are complete. Nothing but the private server is reachable from the page.
"""

from __future__ import annotations

import math
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from exporter import progress
from exporter.errors import ConfigError, InputError, MissingDependency, YexportError

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
FORMATS = ("png", "svg")

# Netron's browser host replaces window.eval (which Playwright needs) with a function that throws;
# keep the real one and ignore the assignment.
_KEEP_EVAL = (
    "(() => { const e = window.eval;"
    " Object.defineProperty(window, 'eval', { configurable: false, get() { return e; }, set(v) {} }); })()"
)
_STATE_JS = """() => {
  const button = document.getElementById('message-button');
  const text = document.getElementById('message-text');
  return {
    body: document.body ? document.body.className : '',
    button: button && button.style.display !== 'none' ? button.innerText : '',
    message: text ? text.innerText : '',
    nodes: document.querySelectorAll('#canvas g.node').length,
  };
}"""
_EXPORT_SVG_JS = """async () => {
  const view = window.__view__;
  const host = view._host || view.host;
  let data = null;
  host.export = async (file, blob) => { data = await blob.text(); };
  await view.export('model.svg');
  return data;
}"""
_SIZE_SVG_JS = """([width, height, scale]) => {
  const svg = document.querySelector('svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', Math.round(width * scale));
  svg.setAttribute('height', Math.round(height * scale));
  svg.style.display = 'block';
  svg.style.margin = '0 auto';
  return [document.documentElement.scrollWidth, document.documentElement.scrollHeight];
}"""
_SVG_NS = "{http://www.w3.org/2000/svg}"


@dataclass(frozen=True)
class RenderResult:
    """What :func:`render` wrote: the file, its pixel (or SVG user-unit) size and the drawn nodes."""

    path: Path
    format: str
    width: int
    height: int
    op_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def nodes(self) -> int:
        """Number of operator nodes Netron drew (graph inputs and outputs not counted)."""
        return sum(self.op_counts.values())

    def summary(self) -> str:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.op_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        unit = "px" if self.format == "png" else "units"
        return f"{self.width}x{self.height} {unit}, {self.nodes} nodes drawn" + (f" ({ops})" if ops else "")


def find_chromium(executable: str | None = None) -> str:
    """Path of the headless Chromium to use; :class:`MissingDependency` names the Debian package."""
    found = shutil.which(executable or "chromium")
    if not found:
        name = executable or "chromium"
        raise MissingDependency(
            f"headless browser '{name}' not found: install Debian's 'chromium' package (make install-browser); "
            "Ubuntu has no chromium deb (its chromium-browser is a snap): put a Chromium build on PATH as 'chromium'"
        )
    return found


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MissingDependency(
            "the 'playwright' Python package is not installed: pip install playwright "
            "(the browser itself is Debian's 'chromium')"
        ) from None
    return sync_playwright


def count_drawn_ops(svg: str) -> dict[str, int]:
    """Count the operator nodes in an SVG drawn by Netron, by op type (the text of each node's header)."""
    root = ET.fromstring(svg)
    counts: Counter[str] = Counter()
    for g in root.iter(f"{_SVG_NS}g"):
        if "graph-node" not in (g.get("class") or "").split():
            continue
        op = None
        for item in g.iter(f"{_SVG_NS}g"):
            if "node-item-type" in (item.get("class") or "").split():
                text = item.find(f"{_SVG_NS}text")
                if text is not None and text.text:
                    op = text.text.strip()
                    break
        counts[op or "?"] += 1
    return dict(counts)


# Netron writes tensor shapes as W〈8×3×3×3〉 with CJK angle brackets (U+3008/U+3009) that machines
# without CJK fonts draw as boxes; the mathematical angle brackets look the same and are in DejaVu Sans.
GLYPHS = {"\u3008": "\u27e8", "\u3009": "\u27e9"}
# Debian's fonts-dejavu-core (pulled in by chromium and graphviz) has every glyph Netron draws; named first,
# it is used wherever installed (Chromium, rsvg, Inkscape), and other systems fall through Netron's own list.
FONT = "DejaVu Sans"


def portable_svg(svg: str) -> str:
    """Netron's SVG with glyphs every machine has: the CJK brackets mapped, and DejaVu Sans named first
    in each font-family (the same for the PNG, which is a screenshot of this SVG)."""
    for a, b in GLYPHS.items():
        svg = svg.replace(a, b)
    # unquoted (valid CSS): the declaration may sit in a style="..." attribute
    return re.sub(r"font-family:(?!\s*['\"]?DejaVu Sans)\s*", f"font-family: {FONT}, ", svg)


def _svg_size(svg: str) -> tuple[float, float]:
    head = svg[: svg.find(">") + 1]
    sizes = []
    for attr in ("width", "height"):
        m = re.search(rf'\s{attr}="([0-9.]+)"', head)
        if not m:
            raise YexportError("Netron's SVG export has no size (unexpected Netron version?)")
        sizes.append(float(m.group(1)))
    return sizes[0], sizes[1]


def _route_for(base: str):
    def handle(route) -> None:
        url = route.request.url
        if not url.startswith(base):
            route.abort()  # no telemetry, no update checks: only the private server is reachable
            return
        if url.rstrip("/") == base.rstrip("/") or url.endswith("/index.html"):
            # Netron nags forever ("Please update") when its build date is half a year old.
            response = route.fetch()
            body = re.sub(r'<meta name="date" content="[^"]*">', "", response.text())
            route.fulfill(response=response, body=body)
            return
        route.continue_()

    return handle


def _wait_drawn(page, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while True:
        state = page.evaluate(_STATE_JS)
        classes = state["body"].split()
        if "alert" in classes:
            raise InputError(f"{path}: Netron could not open it: {state['message'] or 'unknown error'}")
        if "notification" in classes and state["button"] == "Accept":
            page.click("#message-button")  # the cookie consent notice
        elif "default" in classes and state["nodes"] > 0:
            stable = stable + 1 if state["nodes"] == last else 0
            last = state["nodes"]
            if stable >= 2:
                return
        if time.monotonic() > deadline:
            raise YexportError(f"Netron did not finish drawing {path} within {timeout:.0f} s")
        time.sleep(0.1)


def _screenshot(browser, svg: str, width: int | None, scale: float) -> tuple[bytes, int, int]:
    natural_w, natural_h = _svg_size(svg)
    fit = min(1.0, width / natural_w) if width else 1.0
    view_w = width or math.ceil(natural_w)
    svg = portable_svg(svg)
    page = browser.new_page(viewport={"width": view_w, "height": 800}, device_scale_factor=scale)
    try:
        page.set_content(f'<!DOCTYPE html><html><body style="margin:0;background:#fff">{svg}</body></html>')
        _, doc_h = page.evaluate(_SIZE_SVG_JS, [natural_w, natural_h, fit])
        page.set_viewport_size({"width": view_w, "height": max(1, min(int(doc_h), 8000))})
        png = page.screenshot(full_page=True, type="png", animations="disabled")
    finally:
        page.close()
    return png, math.ceil(view_w * scale), math.ceil(doc_h * scale)


def _render(path: Path, out: Path, fmt: str, width: int | None, scale: float, timeout: float, exe: str) -> RenderResult:
    from exporter.graph.netron import serve
    from exporter.io import atomic_write

    sync_playwright = _playwright()
    start = time.monotonic()
    server = serve(path, host="127.0.0.1", port=None, browse=False)
    try:
        with sync_playwright() as pw:
            try:
                with progress.task("starting headless Chromium"):
                    browser = pw.chromium.launch(executable_path=exe, args=list(CHROMIUM_ARGS))
            except Exception as exc:  # playwright raises its own Error type
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise YexportError(f"could not start Chromium ({exe}): {first}") from None
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(_KEEP_EVAL)
                context.route("**/*", _route_for(server.url))
                page = context.new_page()
                with progress.task(f"Netron drawing {path.name}") as end:
                    page.goto(server.url)
                    _wait_drawn(page, path, timeout)
                    svg = page.evaluate(_EXPORT_SVG_JS)
                    end["detail"] = "graph drawn" if svg else "no SVG"
                if not svg:
                    raise YexportError(f"Netron drew {path} but exported no SVG (unexpected Netron version?)")
                svg = portable_svg(svg)
                counts = count_drawn_ops(svg)
                if fmt == "svg":
                    w, h = (math.ceil(v) for v in _svg_size(svg))
                    data: bytes = ('<?xml version="1.0" encoding="UTF-8"?>\n' + svg + "\n").encode("utf-8")
                else:
                    with progress.task(f"screenshot {out.name}"):
                        data, w, h = _screenshot(browser, svg, width, scale)
            finally:
                browser.close()
    finally:
        server.stop()
    atomic_write(out, data)
    return RenderResult(out, fmt, w, h, counts, round(time.monotonic() - start, 3))


def render(
    path: str | Path,
    out: str | Path,
    width: int | None = None,
    *,
    scale: float = 1.0,
    timeout: float = 120.0,
    executable: str | None = None,
) -> RenderResult:
    """Render the Netron view of ``path`` to ``out`` (.png or .svg) and return a :class:`RenderResult`.

    PNG: the whole graph; ``width`` is the image width in CSS pixels (a wider graph is scaled down
    to fit, a narrower one centred; default: the graph's own width); ``scale`` is the device pixel
    ratio (2 for sharper text). SVG: the standalone SVG Netron drew (``width`` is ignored).
    """
    from exporter.graph.load import load_onnx

    src, dst = Path(path), Path(out)
    fmt = dst.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"{dst}: unknown image type '{dst.suffix}': use .png or .svg")
    if width is not None and width < 16:
        raise ConfigError(f"--width {width}: too small (at least 16 pixels)")
    if scale <= 0:
        raise ConfigError(f"scale {scale}: must be positive")
    load_onnx(src)
    exe = find_chromium(executable)
    _playwright()
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _render(src, dst, fmt, width, scale, timeout, exe)
    # Playwright's sync API refuses to run inside an event loop (e.g. Jupyter): use a worker thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_render, src, dst, fmt, width, scale, timeout, exe).result()
