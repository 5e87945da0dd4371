"""A real Triton server on this machine, from PyPI, for tests and benchmarks.

PyPI's ``nvidia-pytriton`` wheel bundles ``tritonserver`` (2.51, Triton
24.10) with its Python backend and Python backend stubs for Python 3.8-3.13,
but no ONNX Runtime backend. :func:`fetch_server` downloads that wheel with
pip (pinned by version and SHA-256; nothing is installed: the wheel pins
numpy < 2) into a cache folder and unpacks the server; :class:`LocalServer`
runs it on 127.0.0.1 with free ports, waits until it answers, and stops it
(and its Python backend stubs) when done.

The stub for the running Python's version is put in the backend folder, and
the server gets this interpreter's ``libpython`` first on
``LD_LIBRARY_PATH``, so a repository written with ``python_env`` = this
environment runs on the very interpreter build that wrote it.

Linux x86-64 with glibc >= 2.35 only (the wheel's platform).

Example:
    >>> install = fetch_server()  # doctest: +SKIP
    >>> with LocalServer(install, "models") as server:  # doctest: +SKIP
    ...     server.wait_ready()
    ...     print(server.http_url, server.grpc_url)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TiedOnnxError

#: The wheel: its tritonserver is 2.51 (Triton 24.10).
PYTRITON_VERSION = "0.7.0"
PYTRITON_SHA256 = "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
_MEMBERS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
_STUB = "triton_python_backend_stub"


class ServerUnavailable(TiedOnnxError, RuntimeError):
    """The local Triton server cannot be fetched, started or reached."""


@dataclass(frozen=True)
class ServerInstall:
    """An unpacked server: ``root/pytriton/tritonserver/{bin,backends}``."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "pytriton" / "tritonserver" / "backends"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tiedonnx" / "triton"


def fetch_server(cache_dir: str | os.PathLike | None = None) -> ServerInstall:
    """Download (once) and unpack the ``nvidia-pytriton`` wheel's server into ``cache_dir``.

    Raises:
        ServerUnavailable: not Linux x86-64, no stub for this Python, or pip
            could not download the wheel (no network, hash mismatch).
    """
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise ServerUnavailable(f"The PyPI Triton server runs on Linux x86-64 only; this is "
                                f"{sys.platform} {os.uname().machine}.")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = cache / f"nvidia-pytriton-{PYTRITON_VERSION}-py{version}"
    install = ServerInstall(root)
    if (root / ".complete").is_file():
        return install
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _download(cache)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(work, [n for n in archive.namelist() if n.startswith(_MEMBERS)])
        unpacked = ServerInstall(work)
        stub = work / "pytriton" / "tritonserver" / "python_backend_stubs" / version / _STUB
        if not stub.is_file():
            raise ServerUnavailable(f"nvidia-pytriton {PYTRITON_VERSION} has no Python backend "
                                    f"stub for Python {version} (it has 3.8-3.13).")
        shutil.copy2(stub, unpacked.backends / "python" / _STUB)
        for path in (unpacked.binary, unpacked.backends / "python" / _STUB):
            path.chmod(0o755)
        (work / ".complete").write_text(PYTRITON_VERSION)
        with contextlib.suppress(OSError):  # another process finished first: keep its copy
            work.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return install


def _download(cache: Path) -> Path:
    for wheel in cache.glob(f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"):
        if _sha256(wheel) == PYTRITON_SHA256:
            return wheel
        wheel.unlink()  # not the pinned file: fetch it again
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"nvidia-pytriton=={PYTRITON_VERSION} "
                                f"--hash=sha256:{PYTRITON_SHA256}\n")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "-r", str(requirements), "-d", tmp, "-q"],
            capture_output=True, text=True, timeout=600)
        found = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not found:
            tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
            raise ServerUnavailable(f"pip could not download nvidia-pytriton=={PYTRITON_VERSION} "
                                    f"(exit {proc.returncode}): {tail}")
        target = cache / found[0].name
        shutil.move(str(found[0]), target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """``tritonserver`` on 127.0.0.1 with free HTTP and gRPC ports, metrics off.

    Strict model config (``--disable-auto-complete-config``). With
    ``exit_on_error=False`` the server keeps serving when some models fail
    to load; :meth:`repository_index` says which and why.
    """

    def __init__(self, install: ServerInstall, repository: str | os.PathLike, *,
                 log_path: str | os.PathLike | None = None, exit_on_error: bool = False,
                 start_timeout: float = 120.0):
        self.install = install
        self.repository = Path(repository).absolute()
        self.exit_on_error = exit_on_error
        self.start_timeout = start_timeout
        self._log_path = Path(log_path) if log_path else None
        self._tmp = None
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it is live (models may still be loading)."""
        if self._log_path is None:
            self._tmp = tempfile.mkdtemp(prefix="tritonserver-")
            self._log_path = Path(self._tmp) / "server.log"
        for _ in range(3):  # a free port can be taken between picking and binding
            self.http_port, self.grpc_port = free_port(), free_port()
            self._spawn()
            if self._wait("/v2/health/live", self.start_timeout):
                return
            if self.process.poll() is None or "already in use" not in self.log_text():
                break
        log = self.log_text()
        self.stop()
        raise ServerUnavailable(f"tritonserver did not come up: {_tail(log)}")

    def _spawn(self) -> None:
        cmd = [str(self.install.binary), f"--model-repository={self.repository}",
               f"--backend-directory={self.install.backends}",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", "--disable-auto-complete-config",
               f"--exit-on-error={str(self.exit_on_error).lower()}", "--exit-timeout-secs=5"]
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and sysconfig.get_config_var("LDLIBRARY") and \
                Path(libdir, sysconfig.get_config_var("LDLIBRARY")).exists():
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        with open(self._log_path, "ab") as log:
            # Own process group: stop() ends the server and its stubs, nothing else.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)

    def _wait(self, path: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.get(path)[0] == 200:
                return True
            time.sleep(0.2)
        return False

    def wait_ready(self, model: str | None = None, timeout: float = 120.0) -> None:
        """Wait until the server (or one model) is ready.

        Raises:
            ServerUnavailable: the server exited or was not ready in time.
        """
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        if not self._wait(path, timeout):
            index = self.repository_index() if self.process.poll() is None else []
            raise ServerUnavailable(f"Triton {'model ' + repr(model) if model else 'server'} "
                                    f"not ready after {timeout:.0f} s; models: {index}; "
                                    f"log: {_tail(self.log_text())}")

    def get(self, path: str, body: dict | None = None) -> tuple[int, str]:
        """``(HTTP status, body)`` of a GET (or a POST of ``body``); status 0: no answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (OSError, ValueError):
            return 0, ""

    def repository_index(self) -> list[dict]:
        """Every model in the repository with its ``state`` and ``reason``."""
        status, text = self.get("/v2/repository/index", {})
        return json.loads(text) if status == 200 else []

    def log_text(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def memory_kb(self) -> dict[int, int]:
        """Resident memory (VmRSS, KiB) of the server and each of its descendants, by pid."""
        pids = _descendants(self.process.pid) if self.process else []
        return {pid: rss for pid in pids if (rss := _rss_kb(pid)) is not None}

    def stop(self) -> None:
        """SIGTERM (Triton unloads models, stubs exit), then SIGKILL for the group."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._log_path = None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_kb(pid: int) -> int | None:
    from ..rss import rss_bytes

    rss = rss_bytes(pid)
    return None if rss is None else rss // 1024


def _tail(log: str, lines: int = 15) -> str:
    return " | ".join(line.strip() for line in log.strip().splitlines()[-lines:])
