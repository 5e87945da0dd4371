"""``tiedonnx web``: a failed site write leaves OUT as it was; the page server on a real socket.

Issue 26, cases 2, 6, 7 and the "also seen" folder-symlink and empty-OUT items.
Sites are written from a hand-built tied autoencoder (no TensorFlow); the server
is :func:`tiedonnx.runtime.web.serving` on 127.0.0.1, talked to with raw sockets
so that hostile request lines reach it unchanged.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.web import ort_web, serve, serving, write_site

from .hostile import assert_clean_failure, call, listing

try:
    ort_web.dist_dir()
    NO_PACKAGE = ""
except UsageError as exc:
    NO_PACKAGE = str(exc)
pytestmark = pytest.mark.skipif(bool(NO_PACKAGE), reason=f"onnxruntime-web missing: {NO_PACKAGE}")


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "models" / "ae.onnx"
    path.parent.mkdir()
    onnx.save(tied_autoencoder(8, 4), path)
    return path


# ---- the site writer: every check first, then one publish ---------------------------


def test_model_named_like_the_runtime_folder_creates_nothing(model, tmp_path, capsys):
    named_ort = model.with_name("ort")
    named_ort.write_bytes(model.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    line = assert_clean_failure(["web", str(named_ort), str(out / "site")], [], out, capsys)
    assert "not page file or folder names" in line and "['ort']" in line


def test_dangling_symlink_at_a_target_is_refused_before_any_byte(model, tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "style.css").symlink_to(tmp_path / "nowhere")
    line = assert_clean_failure(["web", str(model), str(site)], [], site, capsys)
    assert "1 site file(s) already exist" in line and "style.css" in line


def test_a_folder_at_a_file_target_with_force_leaves_the_old_site_byte_for_byte(model, tmp_path, capsys):
    site = tmp_path / "site"
    assert call(["web", str(model), str(site)], capsys)[0] == 0
    (site / "ae.onnx").unlink()
    (site / "ae.onnx").mkdir()  # what the run found: a folder where the model goes
    before = listing(site)
    code, _, err = call(["web", str(model), str(site), "--force"], capsys)
    assert code == 2 and "are folders" in err and "ae.onnx" in err, err
    assert listing(site) == before
    assert not [p for p in tmp_path.iterdir() if ".tiedonnx-" in p.name]  # no staging folder left


def test_runtime_folder_that_is_a_symlink_is_never_written_through(model, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "ort").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = call(["web", str(model), str(site), "--force"], capsys)
    assert code == 2 and "must be a real folder of the site; it is a symbolic link" in err, err
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in site.iterdir()) == ["ort"]


def test_empty_site_folder_is_refused_not_the_current_folder(model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    code, _, err = call(["web", str(model), ""], capsys)
    assert code == 2 and "The site folder is empty ('')" in err, err
    assert listing(tmp_path) == before


def test_new_site_appears_at_once_and_force_rewrites_every_file(model, tmp_path, capsys):
    site = tmp_path / "site"
    assert call(["web", str(model), str(site)], capsys)[0] == 0
    first = listing(site)
    assert {"index.html", "site.json", "ae.onnx", "ort"} <= set(first)
    assert oct(site.stat().st_mode & 0o777) != oct(0o700)  # not the staging folder's private mode
    (site / "site.json").write_text("old")
    (site / "notes.txt").write_text("the user's own file")
    assert call(["web", str(model), str(site), "--force"], capsys)[0] == 0
    assert listing(site) == {**first, "notes.txt": b"the user's own file"}


# ---- the server: regular files inside the site only ------------------------------------


@pytest.fixture
def site(model, tmp_path) -> Path:
    site = tmp_path / "site"
    write_site(model, site)
    (site / "passwd").symlink_to("/etc/passwd")
    (site / "etc").symlink_to("/etc", target_is_directory=True)
    (site / "inside.css").symlink_to(site / "style.css")  # a link that stays inside is served
    return site


def _request(url: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.parametrize("target, status", [
    ("/", 200), ("/index.html", 200), ("/inside.css", 200), ("/ort/", 404), ("/ort", 404),
    ("/passwd", 404), ("/etc/", 404), ("/etc/passwd", 404), ("/etc", 404),
    ("/../../../../etc/passwd", 404), ("/%2e%2e/%2e%2e/etc/passwd", 404),
    ("/index.html%00.txt", 400), ("/missing.js", 404)])
def test_server_serves_only_regular_files_inside_the_site(site, target, status, capfd, caplog):
    caplog.set_level(logging.INFO, logger="tiedonnx.runtime.web.serve")
    with serving(site) as url:
        got, data = _request(url, target)
    assert got == status, data[:200]
    assert b"root:" not in data and b"Directory listing" not in data
    lines = [r for r in caplog.records if r.name.endswith(".access")]
    assert len(lines) == 1 and f" {status} " in lines[0].getMessage() + " ", [r.getMessage() for r in lines]
    assert "Traceback" not in capfd.readouterr().err


def test_control_characters_in_a_request_are_escaped_in_the_log(site, caplog):
    caplog.set_level(logging.INFO, logger="tiedonnx.runtime.web.serve")
    with serving(site) as url:
        _request(url, "/\x1b[31mred")
    (line,) = [r.getMessage() for r in caplog.records if r.name.endswith(".access")]
    assert "\x1b" not in line and "\\x1b[31mred" in line


def test_idle_connection_is_closed(site, monkeypatch):
    serve_module = importlib.import_module("tiedonnx.runtime.web.serve")

    monkeypatch.setattr(serve_module._SiteHandler, "timeout", 0.5)
    with serving(site) as url:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            start = time.monotonic()
            assert sock.recv(1024) == b""  # the server hung up on a client that said nothing
            assert time.monotonic() - start < 5


def test_client_leaving_mid_download_is_one_line_not_a_traceback(site, capfd, caplog):
    caplog.set_level(logging.INFO, logger="tiedonnx.runtime.web.serve")
    (site / "big.bin").write_bytes(os.urandom(32 * 2**20))
    with serving(site) as url:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.0 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset, mid-body: the server's next write fails
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("ended early" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
    ended = [r.getMessage() for r in caplog.records if "ended early" in r.getMessage()]
    assert len(ended) == 1 and ("ConnectionResetError" in ended[0] or "BrokenPipeError" in ended[0]), ended
    assert "Traceback" not in capfd.readouterr().err


def test_cli_server_logs_one_line_per_request_in_a_real_process(site, tmp_path):
    """The CLI's logging setup shows the access log: one stderr line per request, nothing else."""
    proc = subprocess.Popen([sys.executable, "-m", "tiedonnx.runtime.cli", "web", "--serve", str(site),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" at ")[1].split(" ")[0]
        statuses = [_request(url, t)[0] for t in ("/", "/index.html%00.txt", "/passwd")]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert statuses == [200, 400, 404]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err, lines
    assert [line.rsplit('" ', 1)[1].split()[0] for line in lines] == ["200", "400", "404"]


def test_serve_enables_its_access_log(site, monkeypatch):
    serve_module = importlib.import_module("tiedonnx.runtime.web.serve")

    monkeypatch.setattr(serve_module.access_logger, "level", logging.NOTSET)
    stop = []
    monkeypatch.setattr(serve_module._SiteServer, "serve_forever", lambda self: stop.append(self))
    serve(site, port=0)
    assert stop and serve_module.access_logger.level == logging.INFO
