"""Serve an ONNX file with Netron on this machine (loopback unless told otherwise).

Netron's Python server serves its viewer at ``/`` and, left alone, every file of the model's folder
at ``/data/<name>``. Here each server gets its own request handler that serves only the model file
and the external-data files it names (checked by :func:`exporter.graph.load.load_onnx`), streamed,
and answers only requests whose ``Host`` header names this server (no DNS rebinding).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from exporter.errors import ConfigError, MissingDependency

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_START_LOCK = threading.Lock()


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


def _quiet_start(netron, path: str, address: tuple[str, int], handler: type) -> tuple[str, int]:
    """``netron.start`` with ``handler`` as the server's request handler, and without netron's side
    effects on logging (``logging.basicConfig`` when the root logger has no handler, INFO lines)."""
    from netron import server as netron_server

    root = logging.getLogger()
    guard = None
    if not root.hasHandlers():
        guard = logging.NullHandler()
        root.addHandler(guard)
    with _START_LOCK:  # the server is built with the module's handler class: swap it for this start
        original = netron_server._HTTPRequestHandler
        netron_server._HTTPRequestHandler = handler
        try:
            return tuple(netron.start(path, address=address, browse=False))  # type: ignore[return-value]
        finally:
            netron_server._HTTPRequestHandler = original
            if guard is not None:
                root.removeHandler(guard)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> Callable[[str], bool]:
    """Which ``Host`` header values a server bound to ``host`` answers: its own address, loopback
    names, and for a wildcard or network address also this machine's names and IP literals (a
    DNS-rebinding page always sends a name of its own, never one of these)."""
    names = {h.lower() for h in (host, *LOOPBACK_NAMES)}
    network = not is_loopback(host)
    if network:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def ok(value: str) -> bool:
        name = value.strip().lower()
        if name.startswith("["):
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        name = name.rstrip(".")
        if name in names:
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        return network or ip.is_loopback

    return ok


def _model_files(p: Path, model) -> dict[str, Path]:
    """URL name -> file for the model and the external-data files it names (checked, existing)."""
    from exporter.graph.load import check_tensor, iter_tensors, model_dir

    files = {p.name: p.resolve()}
    base = model_dir(p)
    for where, tensor in iter_tensors(model):
        ref = check_tensor(tensor, base, where=f"{p}: {where}")
        if ref is not None and ref.exists:
            files[ref.location] = ref.path
            files[Path(ref.location).as_posix()] = ref.path
    return files


# Netron's browser host asks for consent unless a 'consent' cookie exists (it then skips the banner and
# its ipinfo.io look-up); its usage reporting goes to Google Analytics by sendBeacon. The viewer page
# gets the cookie from this server (the choice made: nothing to accept) and a policy under which the
# browser connects to nothing but this server, so no report can leave even if the page tried.
PAGE_POLICY = "connect-src 'self'; img-src 'self' data: blob:; font-src 'self' data:; frame-src 'none'; form-action 'none'"


def consent_cookie() -> str:
    """The cookie Netron's own code reads as 'consent already given or refused' (browser.js)."""
    return f"consent={int(time.time() * 1000)}; Path=/; Max-Age={30 * 24 * 3600}; SameSite=Strict"


def _handler(files: dict[str, Path], host_ok: Callable[[str], bool]) -> type:
    """A Netron request handler class that serves only ``files`` under ``/data/``."""
    from netron import server as netron_server

    base = netron_server._HTTPRequestHandler

    class ModelOnlyHandler(base):  # type: ignore[misc, valid-type]
        def end_headers(self) -> None:
            # every response: the page may talk to this server only (no analytics, no ipinfo look-up)
            self.send_header("Content-Security-Policy", PAGE_POLICY)
            if urllib.parse.urlparse(self.path).path in ("/", "/index.html"):
                self.send_header("Set-Cookie", consent_cookie())
            super().end_headers()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if not host_ok(self.headers.get("Host") or ""):
                self._refuse(403, b"403: this server only answers requests for its own address")
                return
            path = urllib.parse.urlparse(self.path).path
            if not path.startswith("/data/"):
                super().do_GET()  # the viewer's own files, from netron's package folder
                return
            target = files.get(urllib.parse.unquote(path[len("/data/"):]))
            if target is None:
                self._refuse(404, b"404")
                return
            self._send_file(target)

        def _refuse(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_file(self, target: Path) -> None:
            import stat

            try:
                fh = open(target, "rb")
            except OSError:
                self._refuse(404, b"404")
                return
            with fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    self._refuse(404, b"404")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(st.st_size))
                self.end_headers()
                if self.command == "HEAD":
                    return
                while block := fh.read(1 << 20):
                    self.wfile.write(block)

    return ModelOnlyHandler


def _uses(address: tuple[str, int], handler: type) -> bool:
    """Whether every server thread at ``address`` answers with ``handler``."""
    from netron import server as netron_server

    threads = netron_server._threads(address)
    return bool(threads) and all(getattr(getattr(t, "server", None), "RequestHandlerClass", None) is handler
                                 for t in threads)


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
    model = load_onnx(p)  # one-line InputError for a missing, broken or hostile file
    files = _model_files(p, model)
    del model
    netron = _netron()
    try:
        handler = _handler(files, allowed_hosts(host))
    except (ImportError, AttributeError):
        raise MissingDependency("this netron version cannot be limited to the model's files: "
                                "pip install 'netron>=8'") from None
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port (0-65535)")
    attempts = 1 if port else 5
    address: tuple[str, int] | None = None
    for _ in range(attempts):
        wanted = port or 0
        try:
            if not port:
                wanted = _free_port(host)
            address = _quiet_start(netron, str(p), (host, wanted), handler)
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
    if not _uses(address, handler):
        server.stop()
        raise MissingDependency("this netron version cannot be limited to the model's files: "
                                "pip install 'netron>=8'")
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
    if not is_loopback(host):
        say(f"warning: listening on {host}: {server.path.name} and its weights are exposed to the network "
            "(anyone who can reach this machine can open and download them); use --host 127.0.0.1 and an "
            "SSH tunnel instead")
    say("press Ctrl-C to stop")
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        # our own handlers: a shell starts background jobs with SIGINT ignored
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _raise_interrupt)
    try:
        while server.alive():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)  # type: ignore[arg-type]
    say("stopped")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
