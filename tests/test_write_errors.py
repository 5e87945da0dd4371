"""Output paths that cannot be written: exit 2, one line, target and folder as they were.

Issue 13, cases 4 and 15: a read-only folder, a file-size limit, a full disk,
and a dangling symbolic link where the output goes. Each command's write goes
through :mod:`tiedonnx.runtime.atomic`, which turns an ``OSError`` into
:class:`~tiedonnx.runtime.atomic.OutputWriteError` (exit 2).

* read-only folder: ``chmod 0o555`` (skipped as root, whom permissions do not stop);
* file-size limit: ``RLIMIT_FSIZE`` in a subprocess (works as root too);
* full disk and read-only file system: a tiny ``tmpfs`` (needs root and mount; skipped otherwise).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tiedonnx.runtime.atomic import OutputWriteError, atomic_path, write_bytes_atomic
from tiedonnx.runtime.errors import OutputExistsError
from tiedonnx.runtime.testing import tied_autoencoder

from .hostile import SENTINEL, assert_clean_failure, call, listing

REPO = Path(__file__).resolve().parents[1]
ROWS = 4096  # y.npy: 4096 x 64 float32 = 1 MiB, over every limit below


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """model.onnx (64-16 tied AE, 4 KiB) and x.npy in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(tied_autoencoder(64, 16).SerializeToString())
    np.save(folder / "x.npy", np.random.default_rng(0).random((ROWS, 64), dtype=np.float32))
    return {"model": folder / "model.onnx", "x": folder / "x.npy"}


def _commands(files: dict[str, Path], out: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """The runtime commands that write, with the files each would write into ``out``."""
    model = str(files["model"])
    return {
        "run": (["run", model, "-i", str(files["x"]), "-o", str(out / "y.npy")], [out / "y.npy"]),
        "run_npz": (["run", model, "-i", str(files["x"]), "-o", str(out / "y.npz")], [out / "y.npz"]),
        "retie": (["retie", model, "-o", str(out / "r.onnx")], [out / "r.onnx"]),
        "quantize": (["quantize", model, "-o", str(out / "q.onnx"), "--precision", "fp16"],
                     [out / "q.onnx"]),
        "ort": (["ort", model, "-o", str(out / "m.ort")],
                [out / "m.ort", out / "m.required_operators.config"]),
    }


COMMANDS = ["run", "run_npz", "retie", "quantize", "ort"]


def _says_why(cmd: str, line: str, reason: str) -> bool:
    """The error names the OS's reason; onnxruntime writes .ort files itself and
    reports only that it could not (still exit 2, one line, nothing left)."""
    if cmd == "ort":
        return "onnxruntime could not write" in line
    return "Could not write" in line and reason in line


# ------------------------------------------------------------ read-only folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("cmd", COMMANDS)
def test_read_only_folder(cmd, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    argv, outputs = _commands(files, out)[cmd]
    out.chmod(0o555)
    try:
        line = assert_clean_failure(argv, [], out, capsys)
    finally:
        out.chmod(0o755)
    assert "is not writable" in line


def test_os_errors_while_writing_are_typed(tmp_path, monkeypatch):
    """Every OSError of the write path (create, write, sync, publish) is an OutputWriteError."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    for name in ("mkstemp", "replace", "fsync"):
        with monkeypatch.context() as patch:
            patch.setattr(tempfile if name == "mkstemp" else os, name, fail)
            with pytest.raises(OutputWriteError, match=r"Could not write .*t\.bin.*Read-only file system"):
                write_bytes_atomic(target, b"new", force=True)
    with pytest.raises(OutputWriteError, match=r"No space left on device") as caught:
        with atomic_path(target, force=True):
            raise OSError(errno.ENOSPC, "No space left on device")  # the caller's own write
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    # Without hard links a failed rename must not leave the O_EXCL placeholder as the output.
    with monkeypatch.context() as patch:
        patch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
        patch.setattr(os, "replace", fail)
        with pytest.raises(OutputWriteError, match="Read-only file system"):
            write_bytes_atomic(tmp_path / "new.bin", b"new")
    assert sorted(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------ file-size limit

# The child sets RLIMIT_FSIZE, then runs the CLI; Python ignores SIGXFSZ, so
# writing past the limit is OSError(EFBIG) rather than a signal.
LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from tiedonnx.runtime.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("cmd", COMMANDS)
def test_file_size_limit(cmd, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    argv, outputs = _commands(files, out)[cmd]
    for force in (False, True):
        if force:
            for path in outputs:
                path.write_bytes(SENTINEL)
        before = listing(out)
        proc = subprocess.run([sys.executable, "-c", LIMITED, "1024", *argv, *(["--force"] * force)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tiedonnx {argv[0]}: error: "), lines
        assert _says_why(cmd, lines[0], "File too large"), lines[0]
        assert listing(out) == before, "a failed write changed the folder"


# ------------------------------------------------------ full or read-only disk


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/fs; skipped where mounting is not allowed."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tiedonnx-test", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:100]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Write until the file system is full."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.parametrize("cmd", COMMANDS)
def test_full_disk(cmd, files, small_fs, capsys):
    argv, outputs = _commands(files, small_fs)[cmd]
    _fill(small_fs)
    assert _says_why(cmd, assert_clean_failure(argv, [], small_fs, capsys), "No space left on device")
    # Existing outputs (written before the disk filled up) survive a failed --force.
    (small_fs / "filler").unlink()
    for path in outputs:
        path.write_bytes(SENTINEL)
    _fill(small_fs)
    line = assert_clean_failure([*argv, "--force"], [], small_fs, capsys)
    assert _says_why(cmd, line, "No space left on device")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_read_only_file_system(cmd, files, small_fs, capsys):
    argv, outputs = _commands(files, small_fs)[cmd]
    outputs[0].write_bytes(SENTINEL)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    line = assert_clean_failure([*argv, "--force"], [], small_fs, capsys)
    assert "is not writable (read-only file system or no permission)" in line


# ------------------------------------------------------------- dangling links


@pytest.mark.parametrize("cmd", COMMANDS)
def test_dangling_symlink_is_an_existing_output(cmd, files, tmp_path, capsys):
    """Case 15: Path.exists() is False for a dangling link; it is still not ours to replace."""
    out = tmp_path / "out"
    out.mkdir()
    argv, outputs = _commands(files, out)[cmd]
    outputs[0].symlink_to(tmp_path / "nowhere")
    line = assert_clean_failure(argv, [], out, capsys)
    assert "already exists (a dangling symbolic link)" in line
    assert not (tmp_path / "nowhere").exists()
    # With --force the link itself is replaced; nothing is written where it pointed.
    code, _, stderr = call([*argv, "--force"], capsys)
    assert code == 0, stderr
    assert not outputs[0].is_symlink() and outputs[0].is_file()
    assert not (tmp_path / "nowhere").exists()


def test_dangling_symlink_in_the_library(tmp_path):
    link = tmp_path / "t.bin"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="dangling symbolic link"):
        write_bytes_atomic(link, b"x")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_export_under_file_size_limit(tmp_path):
    """``export`` writes through the same atomic path: EFBIG is one line, nothing left."""
    pytest.importorskip("keras")
    from . import models

    # 256-128: a 130 KB file over a 64 KiB limit that TensorFlow's own temporary files
    # (AutoGraph writes some while tracing) stay under.
    models.dense_ae(features=256, hidden=128).save(tmp_path / "m.keras")
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.onnx").write_bytes(SENTINEL)
    proc = subprocess.run([sys.executable, "-c", LIMITED, "65536", "export", str(tmp_path / "m.keras"),
                           "-o", str(out / "o.onnx"), "--no-verify", "--force"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and _says_why("export", lines[0], "File too large"), lines
    assert listing(out) == {"o.onnx": SENTINEL}


# --- the folder is synced after the publish, so the new name survives a power loss ----------

def _record_fsyncs(monkeypatch, *, refuse_folders: bool = False) -> list[str]:
    """Patch os.fsync in atomic to log 'file' or 'folder' (told apart by fstat, not by atomic)."""
    import stat

    from tiedonnx.runtime import atomic

    real = os.fsync
    synced: list[str] = []

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append(kind)
        if kind == "folder" and refuse_folders:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return synced


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot open a folder to sync it")
@pytest.mark.parametrize("force, hard_links", [(False, True), (True, True), (False, False)],
                         ids=["link", "replace", "no_hard_links"])
def test_the_folder_is_synced_after_the_file_is_published(tmp_path, monkeypatch, force, hard_links):
    from tiedonnx.runtime import atomic

    synced = _record_fsyncs(monkeypatch)
    if not hard_links:
        monkeypatch.setattr(atomic.os, "link",
                            lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"x" * 100, force=force)
    assert synced == ["file", "folder"]  # the data first, then the name that points at it
    assert target.read_bytes() == b"x" * 100


def test_a_folder_that_cannot_be_synced_still_gets_the_file(tmp_path, monkeypatch):
    # Some filesystems refuse fsync on a folder (EINVAL): the file is already
    # published, so the write succeeds without that extra guarantee.
    synced = _record_fsyncs(monkeypatch, refuse_folders=True)
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"data")
    assert target.read_bytes() == b"data"
    assert "folder" in synced or os.name == "nt"


def test_no_folder_sync_where_the_os_cannot_open_a_folder(tmp_path, monkeypatch):
    from tiedonnx.runtime import atomic

    synced = _record_fsyncs(monkeypatch)
    monkeypatch.setattr(atomic, "_CAN_SYNC_FOLDERS", False)  # as on Windows
    write_bytes_atomic(tmp_path / "out.bin", b"data")
    assert synced == ["file"]
