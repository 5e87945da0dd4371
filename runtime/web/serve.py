"""Serve a site folder on 127.0.0.1 with the headers onnxruntime-web needs.

* MIME types: ``.mjs`` as ``text/javascript`` (browsers refuse to run a module
  served as ``application/octet-stream``) and ``.wasm`` as ``application/wasm``
  (required by ``WebAssembly.instantiateStreaming``).
* Cross-origin isolation: ``Cross-Origin-Opener-Policy: same-origin`` and
  ``Cross-Origin-Embedder-Policy: require-corp``, without which the page has
  no ``SharedArrayBuffer`` and multi-threaded wasm falls back to one thread
  (``crossOriginIsolated`` is then false). Isolation also gives
  ``performance.now()`` its fine (5 us) resolution.
* ``Cache-Control: no-cache``: a rebuilt site is never mixed with a cached one.

Only for local use: it binds the loopback address and serves one folder:
regular files inside it, with symlinks resolved and required to stay inside
(``/`` is ``index.html``; no directory is ever listed); a NUL byte in the path
is 400, anything else not served is 404. A connection idle for
:data:`IDLE_TIMEOUT_S` is closed. Each request is one access-log line (control
characters escaped), and a client that leaves mid-response is one line, not a
traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import UsageError
from ..options import DEFAULT_PORT  # noqa: F401  (one home, shared with the CLI)

logger = logging.getLogger(__name__)
# One line per request and per connection that ends early; serve() shows them.
access_logger = logging.getLogger(__name__ + ".access")

HOST = "127.0.0.1"

MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".onnx": "application/octet-stream", ".json": "application/json",
              ".css": "text/css", ".html": "text/html; charset=utf-8"}

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


# A connection that sends or accepts nothing for this long is closed (a stalled
# client must not hold a thread forever); a 14 MB wasm download on loopback takes
# well under a second, and the timeout applies to each socket operation, not to
# the whole response.
IDLE_TIMEOUT_S = 30
# Request lines are attacker-controlled text: control characters (terminal
# escape sequences) are written as \xNN in the log.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class _SiteHandler(SimpleHTTPRequestHandler):
    """Regular files inside the site only: symlinks resolved and contained, no listings."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    timeout = IDLE_TIMEOUT_S

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def send_head(self):
        """The base class's, for a checked regular file only (directories are never listed)."""
        target = self._target()
        if target is None:
            return None
        try:
            f = open(target, "rb")  # noqa: SIM115 (the base class closes it after copying)
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):  # swapped for something else since _target looked
            f.close()
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-type", self.guess_type(str(target)))
        self.send_header("Content-Length", str(info.st_size))
        self.send_header("Last-Modified", self.date_time_string(info.st_mtime))
        self.end_headers()
        return f

    def _target(self) -> Path | None:
        """The regular file inside the site that the request names, or None (error sent)."""
        raw = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0], errors="surrogateescape")
        if "\0" in raw:
            self.send_error(HTTPStatus.BAD_REQUEST, "NUL byte in the path")
            return None
        relative = raw.lstrip("/") or "index.html"
        root = Path(self.directory).resolve()
        try:
            target = (root / relative).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, an unencodable name
            target = None
        if (target is None or raw.endswith("/") and raw != "/" or not target.is_relative_to(root)
                or not target.is_file()):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return target

    def list_directory(self, path):  # noqa: ARG002 (never reached: send_head lists nothing)
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")
        return None

    def log_request(self, code="-", size="-") -> None:
        """One line per request: client, request line (control characters escaped), status."""
        code = getattr(code, "value", code)
        line = (self.requestline or "").translate(_CONTROL)[:300]
        access_logger.info("%s \"%s\" %s %s", self.address_string(), line, code, size)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        # send_error() logs here and then through log_request: keep the one access line.
        logger.debug("%s %s", self.address_string(), (format % args).translate(_CONTROL)[:300])

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        logger.debug("%s %s", self.address_string(), (format % args).translate(_CONTROL)[:300])


class _SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that leaves mid-response (or times out) is one log line, never a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            access_logger.info("%s:%s connection ended early (%s)", *client_address[:2], type(exc).__name__)
        else:
            logger.warning("%s:%s request failed: %s: %s", *client_address[:2], type(exc).__name__,
                           str(exc).translate(_CONTROL)[:200])


def _check_site(site_dir: str | os.PathLike) -> Path:
    site = Path(site_dir)
    if not (site / "index.html").is_file():
        raise UsageError(f"Not a tiedonnx site: {str(site)!r} has no index.html. Build one with "
                         "'tiedonnx web MODEL.onnx OUT_DIR' and serve OUT_DIR.")
    return site


def _server(site: Path, port: int) -> ThreadingHTTPServer:
    if not 0 <= port <= 65535:
        raise UsageError(f"Port must be 0..65535 (0 picks a free one). Received: port={port}.")
    handler = functools.partial(_SiteHandler, directory=str(site))
    try:
        return _SiteServer((HOST, port), handler)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {HOST}:{port} ({exc.strerror or exc}). "
                         "Pass another port (--port N, or 0 for any free one).") from exc


@contextlib.contextmanager
def serving(site_dir: str | os.PathLike, *, port: int = 0) -> Iterator[str]:
    """Serve ``site_dir`` in a background thread; yield its base URL (ends with ``/``).

    Example:
        >>> with serving("site") as url:  # doctest: +SKIP
        ...     page.goto(url)
    """
    server = _server(_check_site(site_dir), port)
    thread = threading.Thread(target=server.serve_forever, name="tiedonnx-web", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve(site_dir: str | os.PathLike, *, port: int = DEFAULT_PORT,
          on_ready=None) -> None:
    """Serve ``site_dir`` until interrupted (Ctrl+C).

    Args:
        site_dir: a folder written by ``write_site`` / ``write_demo_site``.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        on_ready: called with the base URL once the socket listens.

    Each request is logged as one INFO line on ``tiedonnx.runtime.web.serve.access``,
    which this function enables unless its level was set.

    Raises:
        UsageError: the folder has no index.html, or the port cannot be bound.
    """
    server = _server(_check_site(site_dir), port)
    if access_logger.level == logging.NOTSET:  # the access log is what a foreground server shows
        access_logger.setLevel(logging.INFO)
    try:
        if on_ready is not None:
            on_ready(f"http://{HOST}:{server.server_address[1]}/")
        server.serve_forever()
    finally:
        server.server_close()
