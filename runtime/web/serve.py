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

Only for local use: it binds the loopback address and serves one folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import UsageError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 8000

MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".onnx": "application/octet-stream", ".json": "application/json",
              ".css": "text/css", ".html": "text/html; charset=utf-8"}

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


class _SiteHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        logger.info("%s %s", self.address_string(), format % args)


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
        return ThreadingHTTPServer((HOST, port), handler)
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

    Raises:
        UsageError: the folder has no index.html, or the port cannot be bound.
    """
    server = _server(_check_site(site_dir), port)
    try:
        if on_ready is not None:
            on_ready(f"http://{HOST}:{server.server_address[1]}/")
        server.serve_forever()
    finally:
        server.server_close()
