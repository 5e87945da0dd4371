"""Packaging: the wheel installs tiedonnx.converter / tiedonnx.runtime and nothing at the top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_the_tiedonnx_namespace(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip wheel failed: {proc.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("tiedonnx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tiedonnx"}, f"unexpected top-level entries: {sorted(top)}"
    # Every source file and asset of the two packages is in the wheel (a
    # subpackage missing from pyproject's list would silently drop out).
    for folder, package in (("converter", "tiedonnx/converter"), ("runtime", "tiedonnx/runtime")):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                wanted = f"{package}/{path.relative_to(REPO / folder).as_posix()}"
                assert wanted in names, f"{wanted} is not in the wheel"
    entry = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tiedonnx = tiedonnx.runtime.cli:main" in entry
