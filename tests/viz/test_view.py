"""Netron server: a real server on loopback, fetched over HTTP, and the `yexport view` command."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli.main import cli
from exporter.errors import ConfigError, InputError
from exporter.graph import netron as nv

ROOT = Path(__file__).resolve().parents[2]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


def test_serve_fetch_page_and_model(toy_onnx):
    server = nv.serve(toy_onnx)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        page = fetch(server.url).decode()
        assert "netron" in page.lower() and f'content="/data/{toy_onnx.name}"' in page
        assert fetch(server.model_url) == toy_onnx.read_bytes()
        assert server.alive()
    finally:
        server.stop()
    assert not server.alive()
    with pytest.raises(urllib.error.URLError):
        fetch(server.url)


def test_two_servers_get_different_free_ports(toy_onnx):
    with nv.serve(toy_onnx) as a, nv.serve(toy_onnx) as b:
        assert a.port != b.port
        assert fetch(b.model_url) == toy_onnx.read_bytes()


def test_taken_port_is_a_one_line_error(toy_onnx):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .* already in use"):
            nv.serve(toy_onnx, port=port)
        result = CliRunner().invoke(cli, ["view", str(toy_onnx), "--port", str(port), "--no-browse"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "already in use" in result.output


def test_missing_file(tmp_path):
    with pytest.raises(InputError):
        nv.serve(tmp_path / "nope.onnx")
    result = CliRunner().invoke(cli, ["view", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_display_detection(monkeypatch):
    monkeypatch.setattr(nv.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not nv.has_display()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert nv.has_display()


def test_no_browser_without_display(toy_onnx, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    monkeypatch.setattr(nv, "has_display", lambda: False)
    with nv.serve(toy_onnx, browse=True):
        pass
    assert opened == []
    monkeypatch.setattr(nv, "has_display", lambda: True)
    with nv.serve(toy_onnx, browse=True) as server:
        assert opened == [server.url]


def test_view_command_serves_until_interrupted(toy_onnx):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli.main", "view", str(toy_onnx), "--browse"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", first)
        assert match, first + proc.stderr.read()
        url = match.group(1)
        assert proc.stdout.readline().startswith("no display found")
        assert fetch(url + "data/" + toy_onnx.name) == toy_onnx.read_bytes()
        assert b"<html" in fetch(url).lower()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("stopped")
    assert "Traceback" not in err
    with pytest.raises(urllib.error.URLError):
        fetch(url)
