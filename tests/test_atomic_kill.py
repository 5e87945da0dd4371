"""SIGKILL during export: the target is always the old file or a complete, valid new one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("keras")

from tiedonnx.runtime.graph import find_duplicates  # noqa: E402
from tiedonnx.runtime.graph.duplicates import initializer_arrays  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The child exports the 784-256 AE in a loop, forever, onto the same target.
CHILD = textwrap.dedent("""
    import sys
    from tests import models
    from tiedonnx.converter.export import export
    model = models.dense_ae(features=784, hidden=256)
    print("ready", flush=True)
    while True:
        export(model, sys.argv[1], force=True, verify=False)
""")


def _complete_export(path: Path) -> bool:
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert find_duplicates(initializer_arrays(model.graph)) == []
    return True


@pytest.mark.parametrize("delay", [0.05, 0.35, 0.9])
def test_sigkill_leaves_old_or_complete_file(delay, tmp_path):
    target = tmp_path / "model.onnx"
    old = b"previous file, not ONNX: it must survive or be replaced whole"
    target.write_bytes(old)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)  # the loop exports every ~0.3 s: each delay hits another phase
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    data = target.read_bytes()
    assert data == old or _complete_export(target)
    # Leftover temporaries are hidden files next to the target, never the target itself.
    assert all(p.name.startswith(".model.onnx.") for p in tmp_path.iterdir() if p != target)


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
