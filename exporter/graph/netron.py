"""Serve an ONNX file with Netron on this machine (loopback unless told otherwise).

Netron's Python server serves its viewer at ``/`` and the model file itself at ``/data/<file name>``
(files next to it, such as external weights, at ``/data/<their name>``).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from exporter.errors import ConfigError, MissingDependency

DEFAULT_HOST = "127.0.0.1"


def has_display() -> bool:
    """Whether a browser window could be shown: on Linux only when DISPLAY or WAYLAND_DISPLAY is set."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _netron():
    try:
        import netron
    except ImportError:
        raise MissingDependency("the 'netron' package is not installed: pip install netron") from None
    return netron


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _quiet_start(netron, path: str, address: tuple[str, int]) -> tuple[str, int]:
    """``netron.start`` without its side effects on logging: it calls ``logging.basicConfig`` when
    the root logger has no handler and logs every start and stop at INFO."""
    root = logging.getLogger()
    guard = None
    if not root.hasHandlers():
        guard = logging.NullHandler()
        root.addHandler(guard)
    try:
        return tuple(netron.start(path, address=address, browse=False))  # type: ignore[return-value]
    finally:
        if guard is not None:
            root.removeHandler(guard)


def _silence_disconnects(address: tuple[str, int]) -> None:
    """A browser that closes a connection mid-transfer makes the server print a traceback; drop those."""
    try:
        from netron import server as netron_server

        threads = netron_server._threads(address)
    except (ImportError, AttributeError):
        return
    for thread in threads:
        srv = getattr(thread, "server", None)
        if srv is None:
            continue
        original = srv.handle_error

        def handle_error(request, client_address, _original=original):
            if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                return
            _original(request, client_address)

        srv.handle_error = handle_error


class NetronServer:
    """A running Netron server for one file. ``stop()`` ends it (also on leaving a ``with`` block)."""

    def __init__(self, path: Path, address: tuple[str, int]) -> None:
        self.path = path
        self.address = address

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def model_url(self) -> str:
        """Where Netron serves the model file itself."""
        from urllib.parse import quote

        return f"{self.url}data/{quote(self.path.name)}"

    def alive(self) -> bool:
        return bool(_netron().status(self.address))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and wait (up to ``timeout`` seconds) until the server thread has ended."""
        netron = _netron()
        netron.stop(self.address)
        deadline = time.monotonic() + timeout
        while netron.status(self.address) and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> NetronServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NetronServer({str(self.path)!r}, url={self.url!r})"


def serve(path: str | Path, host: str = DEFAULT_HOST, port: int | None = None, browse: bool = False) -> NetronServer:
    """Start serving ``path`` with Netron and return the running :class:`NetronServer`.

    ``port=None`` picks a free port; a given port that is taken raises :class:`ConfigError`.
    ``browse=True`` opens the default browser, but only where a display exists.
    """
    from exporter.graph.load import load_onnx

    p = Path(path)
    load_onnx(p)  # one-line InputError for a missing or broken file, before anything is served
    netron = _netron()
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port (0-65535)")
    attempts = 1 if port else 5
    address: tuple[str, int] | None = None
    for _ in range(attempts):
        wanted = port or 0
        try:
            if not port:
                wanted = _free_port(host)
            address = _quiet_start(netron, str(p), (host, wanted))
            break
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and port:
                raise ConfigError(
                    f"port {port} on {host} is already in use: pick another --port, or leave it out to get a free one"
                ) from None
            if exc.errno == errno.EADDRINUSE:
                continue  # lost a race for a free port: try another
            if exc.errno == errno.EACCES:
                raise ConfigError(f"not allowed to listen on {host}:{wanted} (ports below 1024 need root)") from None
            raise ConfigError(f"cannot listen on {host}:{wanted}: {exc.strerror or exc}") from None
    if address is None:
        raise ConfigError(f"could not find a free port on {host}")
    _silence_disconnects(address)
    server = NetronServer(p, address)
    if browse and has_display():
        import webbrowser

        webbrowser.open(server.url)
    return server


def view(
    path: str | Path,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    browse: bool = True,
    echo: Callable[[str], object] | None = None,
) -> None:
    """Serve ``path`` with Netron, print its URL and block until Ctrl-C (or SIGTERM), then stop cleanly.

    Without a display (no DISPLAY/WAYLAND_DISPLAY on Linux) no browser is launched, even with
    ``browse=True``: open the printed URL yourself (e.g. through an SSH tunnel).
    """
    say = echo or (lambda line: print(line, flush=True))
    server = serve(path, host=host, port=port, browse=browse)
    say(f"Netron is serving {server.path.name} at {server.url}")
    if browse and not has_display():
        say("no display found: open the URL above in a browser")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"listening on {host}: anyone who can reach this machine can download the model")
    say("press Ctrl-C to stop")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while server.alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    say("stopped")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
