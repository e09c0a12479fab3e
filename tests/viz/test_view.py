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
        # consent already decided with Netron's own cookie (no banner, no ipinfo look-up), and a policy
        # under which the page can reach nothing but this server (no analytics)
        with urllib.request.urlopen(server.url, timeout=10) as r:
            assert r.headers["Set-Cookie"].startswith("consent=") and "Path=/" in r.headers["Set-Cookie"]
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
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


# -- only the model's files, only for this server's own names (issue 11)


def _model_with_external_data(folder: Path) -> Path:
    """A small ONNX file whose weight lives in ``weights/w.bin``, next to files it does not name."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    (folder / "weights").mkdir()
    p = folder / "m.onnx"
    onnx.save(m, str(p), save_as_external_data=True, location="weights/w.bin", size_threshold=0)
    (folder / "secret.txt").write_text("secret\n")
    (folder / "weights" / "other.bin").write_bytes(b"not named by the model")
    (folder.parent / "outside.txt").write_text("outside\n")
    return p


def status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serves_only_the_model_and_its_external_data(tmp_path):
    p = _model_with_external_data(tmp_path / "model")
    with nv.serve(p) as server:
        data = server.url + "data/"
        assert fetch(data + "m.onnx") == p.read_bytes()
        assert fetch(data + "weights/w.bin") == (p.parent / "weights" / "w.bin").read_bytes()
        for name in ("secret.txt", "weights/other.bin", "../outside.txt", "%2e%2e/outside.txt", "weights",
                     "..%2fsecret.txt", "/etc/passwd", "%2fetc%2fpasswd"):
            assert status(data + name) == 404, name
        assert status(server.url) == 200  # the viewer itself still works


def test_host_header_must_name_this_server(tmp_path):
    p = _model_with_external_data(tmp_path / "model")
    with nv.serve(p) as server:
        model = server.model_url
        assert status(model, f"localhost:{server.port}") == 200
        assert status(model, f"127.0.0.1:{server.port}") == 200
        for host in (f"evil.example:{server.port}", "evil.example", f"10.0.0.1:{server.port}"):
            assert status(model, host) == 403, host
            assert status(server.url, host) == 403, host


def test_allowed_hosts():
    loop = nv.allowed_hosts("127.0.0.1")
    assert loop("localhost:8080") and loop("127.0.0.1") and loop("[::1]:80") and loop("LOCALHOST.")
    assert not loop("attacker.example:8080") and not loop("192.168.1.2") and not loop("")
    wide = nv.allowed_hosts("0.0.0.0")
    assert wide("192.168.1.2:8080") and wide(socket.gethostname()) and not wide("attacker.example")


def test_network_host_warns_and_sigint_works_when_started_ignored(tmp_path):
    """``--host 0.0.0.0`` says the model is exposed; a background job (SIGINT ignored) still stops on it."""
    p = _model_with_external_data(tmp_path / "model")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli.main", "view", str(p), "--host", "0.0.0.0", "--no-browse"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        port = re.search(r":(\d+)/", lines[0])
        assert port, "".join(lines) + proc.stderr.read()
        assert "exposed to the network" in lines[1], lines
        url = f"http://127.0.0.1:{port.group(1)}/"
        assert status(url + "data/m.onnx") == 200
        assert status(url + "data/secret.txt") == 404
        assert status(url + "data/m.onnx", "rebound.example") == 403
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("stopped") and "Traceback" not in err


def test_hostile_external_data_is_refused_before_serving(tmp_path):
    import onnx

    p = _model_with_external_data(tmp_path / "model")
    m = onnx.load(str(p), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../outside.txt"
    onnx.save(m, str(p))
    result = CliRunner().invoke(cli, ["view", str(p), "--no-browse"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "leaves the model's folder" in result.output
