"""SIGKILL in the middle of a write: the target keeps its old bytes, and the kill provably landed mid-write.

Proof that a kill landed while the temporary file existed: the writer removes
its temporary file (or renames it onto the target) before it can exit in
every other way, so a temporary file named with the killed process's pid that
is still there after the kill was being written when the kill landed. Every
test below asserts that leftover, not only the target's bytes.

The leftover is then removed by the next write to the same target once it is
older than :data:`tiedonnx.runtime.atomic.LEFTOVER_AGE_S` and its pid is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tiedonnx.runtime.atomic import LEFTOVER_AGE_S, remove_leftovers, write_bytes_atomic
from tiedonnx.runtime.testing import tied_autoencoder

REPO = Path(__file__).resolve().parents[1]
OLD = b"previous file: it must survive a killed write unchanged"
ROWS, FEATURES = 200_000, 16  # `run --batch-size 1` takes ~3 s over these rows: a wide window


def _temporaries(folder: Path, target: str, pid: int) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target)}\.tiedonnx-{pid}-[a-z0-9_]+\.tmp\.\w+\Z")
    return [p for p in folder.iterdir() if pattern.match(p.name)]


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the child to start writing")


@pytest.fixture(scope="module")
def model_and_input(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kill")
    (folder / "m.onnx").write_bytes(tied_autoencoder(FEATURES, 4).SerializeToString())
    np.save(folder / "x.npy", np.random.default_rng(0).random((ROWS, FEATURES), dtype=np.float32))
    return folder / "m.onnx", folder / "x.npy"


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.8])
def test_sigkill_during_run_output(delay, model_and_input, tmp_path):
    """``tiedonnx run -o`` killed while it streams rows into the memory-mapped temporary file."""
    model, x = model_and_input
    target = tmp_path / "y.npy"
    target.write_bytes(OLD)
    child = subprocess.Popen([sys.executable, "-m", "tiedonnx.runtime.cli", "run", str(model),
                              "-i", str(x), "-o", str(target), "--force", "--batch-size", "1"],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        (tmp,) = _wait_for(lambda: _temporaries(tmp_path, "y.npy", child.pid))
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert tmp.exists(), "the kill landed after the write had finished: nothing was proven"
    assert target.read_bytes() == OLD
    # The next write to the target removes the leftover once it is old enough.
    assert remove_leftovers(target) == []  # too young: a slow writer may still own it
    aged = time.time() - LEFTOVER_AGE_S - 1
    os.utime(tmp, (aged, aged))
    from tiedonnx.runtime.cli import main

    assert main(["run", str(model), "-i", str(x), "-o", str(target), "--force"]) == 0
    assert not tmp.exists() and sorted(tmp_path.iterdir()) == [target]
    assert np.load(target, mmap_mode="r").shape == (ROWS, FEATURES)


# The child exports the 784-256 AE with fsync slowed down: it announces that the
# complete temporary file is about to be synced, then waits, so the parent's kill
# lands between the data write and the publish (the rename onto the target).
EXPORT_CHILD = textwrap.dedent("""
    import os, sys, time
    from tests import models
    from tiedonnx.converter.export import export
    model = models.dense_ae(features=784, hidden=256)
    real_fsync = os.fsync
    def announced_fsync(fd):
        print("syncing", flush=True)
        time.sleep(2.0)
        real_fsync(fd)
    os.fsync = announced_fsync
    export(model, sys.argv[1], force=True, verify=False)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_sigkill_during_export_publish(delay, tmp_path):
    pytest.importorskip("keras")
    target = tmp_path / "model.onnx"
    target.write_bytes(OLD)
    child = subprocess.Popen([sys.executable, "-c", EXPORT_CHILD, str(target)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "syncing"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    (tmp,) = _temporaries(tmp_path, "model.onnx", child.pid)  # proof: killed mid-write
    assert tmp.stat().st_size > 800_000  # the complete file, written but not yet published
    assert target.read_bytes() == OLD


def _dead_pid() -> int:
    """The pid of a process that has exited (a finished child)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(gone.stdout)


def test_leftover_removal_rules(tmp_path):
    """Only this target's temporaries, old enough, of processes that are gone, are removed."""
    target = tmp_path / "out.bin"
    dead, alive = _dead_pid(), os.getpid()
    aged = time.time() - LEFTOVER_AGE_S - 60
    names = {
        f".out.bin.tiedonnx-{dead}-abc123.tmp.bin": True,       # old, process gone: removed
        f".out.bin.tiedonnx-{alive}-abc123.tmp.bin": False,     # the writer is alive
        f".other.bin.tiedonnx-{dead}-abc123.tmp.bin": False,    # another target's
        f".out.bin.{dead}-abc123.tmp.bin": False,               # not our naming
        "out.bin.tiedonnx-1-abc.tmp.bin": False,                # not hidden: not ours
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (aged, aged))
    young = tmp_path / f".out.bin.tiedonnx-{dead}-young1.tmp.bin"
    young.write_bytes(b"partial")
    write_bytes_atomic(target, b"new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"out.bin", young.name} | {n for n, removed in names.items() if not removed}
    assert target.read_bytes() == b"new"


def test_interrupted_write_keeps_old_file(tmp_path):
    """An exception in the middle of an atomic write leaves the target untouched."""
    from tiedonnx.runtime.atomic import atomic_path

    target = tmp_path / "out.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, force=True) as tmp:
            np.save(tmp, np.zeros(10))
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_leftover_staging_folders_of_a_site_are_removed_by_the_next_write(tmp_path):
    """A killed `web`/`export --task generate` leaves `.OUT.tiedonnx-<pid>-<random>.tmp/`; the next publish of the
    same OUT removes it when it is old and its process is gone, and nothing else (a previous version set aside
    as `.OUT.old-*` never)."""
    from tiedonnx.runtime.web.publish import check_targets, publish

    out = tmp_path / "site"
    dead, alive = _dead_pid(), os.getpid()
    aged = time.time() - LEFTOVER_AGE_S - 60
    names = {
        f".site.tiedonnx-{dead}-k2j4x_9a.tmp": True,      # old, process gone: removed with its files
        f".site.tiedonnx-{alive}-k2j4x_9a.tmp": False,    # the writer is alive
        f".other.tiedonnx-{dead}-k2j4x_9a.tmp": False,    # another target's
        ".site.old-k2j4x_9a": False,                      # a previous version set aside: never
        f".site.tiedonnx-{dead}-k2j4x_9a": False,         # not our naming (no .tmp)
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"partial")
        os.utime(tmp_path / name, (aged, aged))
    young = tmp_path / f".site.tiedonnx-{dead}-young123.tmp"
    young.mkdir()
    link = tmp_path / f".site.tiedonnx-{dead}-linked12.tmp"  # a link named like ours: not followed, kept
    link.symlink_to(tmp_path / ".site.old-k2j4x_9a")
    os.utime(link, (aged, aged), follow_symlinks=False)
    check_targets(out, ["index.html"], force=False)
    publish(out, {"index.html": b"<html></html>"}, force=False)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"site", young.name, link.name} | {n for n, removed in names.items() if not removed}
    assert (tmp_path / ".site.old-k2j4x_9a" / "model.onnx").read_bytes() == b"partial"
    assert (out / "index.html").read_bytes() == b"<html></html>"


def test_generation_folder_staging_removes_leftovers_and_uses_the_same_naming(tmp_path):
    from tiedonnx.converter.generation_write import _staging_folder

    stale = tmp_path / f".lm-gen.tiedonnx-{_dead_pid()}-k2j4x_9a.tmp"
    stale.mkdir()
    aged = time.time() - LEFTOVER_AGE_S - 60
    os.utime(stale, (aged, aged))
    with _staging_folder(tmp_path / "lm-gen", force=False) as staging:
        assert re.fullmatch(rf"\.lm-gen\.tiedonnx-{os.getpid()}-[a-z0-9_]+\.tmp", staging.name)
        (staging / "tiedonnx.json").write_text("{}")
    assert {p.name for p in tmp_path.iterdir()} == {"lm-gen"}
    assert (tmp_path / "lm-gen" / "tiedonnx.json").read_text() == "{}"
