"""scripts/bench_generate_peers.py: a peer that is not installed or that fails is one row with one
error line, never a traceback; the stop id it hands the peers is one no greedy run picked.
(The peers themselves run only in their own venvs, by hand: no peer runs here.)"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_generate_peers.py"


@pytest.fixture
def peers(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_generate_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PEERS", tmp_path / "peers")
    return module


def test_missing_venv_is_one_row_with_one_line(peers, tmp_path):
    row = peers.peer_row("optimum", "Optimum", ["--onnx", str(tmp_path / "out")], "fp32")
    assert set(row) == {"name", "error"}
    assert row["error"] == (f"not run: no venv at {tmp_path / 'peers' / 'optimum'} "
                            "(bash scripts/setup_peers.sh optimum)")


def test_failing_driver_is_its_last_error_line(peers, tmp_path):
    python = tmp_path / "peers" / "genai" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                      "echo '  File \"x.py\", line 1' >&2\necho 'ValueError: no such architecture' >&2\nexit 1\n")
    os.chmod(python, 0o755)
    row = peers.peer_row("genai", "genai int4", ["--onnx", str(tmp_path / "out")], "int4")
    assert row == {"name": "genai int4", "error": "export failed: ValueError: no such architecture"}


def test_driver_without_json_is_an_error(peers, tmp_path):
    python = tmp_path / "peers" / "optimum" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'loaded'\n")
    os.chmod(python, 0o755)
    assert peers.run_driver("optimum", "bench", []) == {"error": "bench printed no JSON: loaded"}


def test_stop_id_is_the_highest_id_never_picked(peers):
    assert peers.unused_token(10, [[9, 1, 9], [8, 2]]) == 7
    assert peers.unused_token(10, [[1, 2], [3]]) == 9
