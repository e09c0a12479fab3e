"""Netron rendered in headless Chromium: PNG and SVG of the whole graph; missing-browser errors."""

from __future__ import annotations

import builtins
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from click.testing import CliRunner

from exporter.cli.main import cli
from exporter.errors import ConfigError, MissingDependency
from exporter.graph import render as rd
from exporter.graph.load import load_onnx


def onnx_op_counts(path) -> Counter:
    return Counter(n.op_type for n in load_onnx(path).graph.node if n.op_type != "Constant")


@pytest.mark.browser
def test_render_png_whole_graph(toy_onnx, tmp_path):
    from PIL import Image

    out = tmp_path / "toy.png"
    result = rd.render(toy_onnx, out, width=480)
    ops = onnx_op_counts(toy_onnx)
    assert result.op_counts["BatchNormalization"] == ops["BatchNormalization"] == 5
    assert result.op_counts == dict(ops)  # every node drawn (Netron folds Constant nodes into their users)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (result.width, result.height)
        assert image.width == 480 and image.height > 2 * image.width  # a tall graph, complete
        bottom = image.crop((0, image.height - image.height // 10, image.width, image.height)).convert("L")
        assert bottom.getextrema()[0] < 128  # something dark drawn near the bottom: not cut off
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.png"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.browser
def test_render_svg_command(toy_fused_onnx, tmp_path):
    out = tmp_path / "fused.svg"
    result = CliRunner().invoke(cli, ["render", str(toy_fused_onnx), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (") and "nodes drawn" in result.output
    svg = out.read_text(encoding="utf-8")
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and float(root.get("width")) > 100
    counts = rd.count_drawn_ops(svg)
    assert "BatchNormalization" not in counts and counts["Conv"] == 7
    assert "fill:" in svg and "font-family" in svg  # styles inlined: viewable on its own
    # no CJK brackets (tofu without CJK fonts): the same glyph mapping as the PNG, DejaVu Sans named first
    assert "\u3008" not in svg and "\u3009" not in svg and "\u27e8" in svg
    assert "font-family: DejaVu Sans," in svg


def test_portable_svg():
    svg = '<text style="font-family: -apple-system, sans-serif">W\u30083\u00d73\u3009</text>'
    out = rd.portable_svg(svg)
    assert out == '<text style="font-family: DejaVu Sans, -apple-system, sans-serif">W\u27e83\u00d73\u27e9</text>'
    assert rd.portable_svg(out) == out


def test_count_drawn_ops():
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><g id="origin">'
        '<g class="node graph-input"><g class="node-item"><text>x</text></g></g>'
        + '<g class="node graph-node"><g class="node-item node-item-type node-item-type-layer"><text>Conv</text></g></g>' * 2
        + '<g class="node graph-node"><g class="node-item node-item-type"><text>BatchNormalization</text></g></g>'
        + "</g></svg>"
    )
    assert rd.count_drawn_ops(svg) == {"Conv": 2, "BatchNormalization": 1}


def test_missing_chromium_names_the_package(toy_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(rd.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependency, match=r"'chromium' package \(make install-browser\)"):
        rd.render(toy_onnx, tmp_path / "x.png")
    result = CliRunner().invoke(cli, ["render", str(toy_onnx), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "chromium" in result.output


def test_missing_playwright_names_it(toy_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(rd.shutil, "which", lambda name: "/usr/bin/chromium")
    real_import = builtins.__import__

    def no_playwright(name, *args, **kwargs):
        if name.startswith("playwright"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_playwright)
    with pytest.raises(MissingDependency, match="'playwright' Python package"):
        rd.render(toy_onnx, tmp_path / "x.png")


def test_bad_output_type(toy_onnx, tmp_path):
    with pytest.raises(ConfigError, match="use .png or .svg"):
        rd.render(toy_onnx, tmp_path / "x.jpg")
    result = CliRunner().invoke(cli, ["render", str(toy_onnx), "-o", str(tmp_path / "x.gif")])
    assert result.exit_code == 2
