"""scripts/bench_decode_ab.py: contenders stay loaded in worker processes and take turns; a contender
that cannot start is one line, never a traceback. Also profile_decode.py's loop split. (Run on
hand-built folders: no peer, no TensorFlow.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.graphs import tiny_decoder_folder

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_decode_ab.py"


def _run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, check=False, timeout=300)


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in stdout.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}  # rows[0]: the header


def test_two_workers_take_turns_and_the_reference_pairs_with_itself(tmp_path):
    tiny_decoder_folder(tmp_path / "a")
    tiny_decoder_folder(tmp_path / "b", seed=1)
    out = _run(f"first=tiedonnx:{tmp_path / 'a'}", f"tiedonnx:{tmp_path / 'b'}", f"same=tiedonnx:{tmp_path / 'a'}",
               "--rounds", 3, "--prompt", 3, "--new", 4)
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert list(rows) == ["first", "tiedonnx b", "same"]
    assert rows["first"][2:5] == ["1.000x", "1.000-1.000", "3/3"]  # the reference against itself, each round
    assert rows["same"][5] == "yes"  # the same folder in another worker: the same greedy tokens
    assert float(rows["tiedonnx b"][0]) > 0 and float(rows["tiedonnx b"][2].rstrip("x")) > 0


def test_a_contender_that_cannot_start_is_one_line(tmp_path):
    tiny_decoder_folder(tmp_path / "a")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "genai_config.json").write_text('{"model": {"vocab_size": 11}}')
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = _run(f"tiedonnx:{tmp_path / 'a'}", f"genai:{tmp_path / 'g'}", f"nope:{tmp_path / 'a'}", env=env)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert f"genai:{tmp_path / 'g'}: not run: no genai venv at {tmp_path / 'cache/tiedonnx/peers/genai'} " \
           "(bash scripts/setup_peers.sh genai)" in lines
    assert f"nope:{tmp_path / 'a'}: not run: contender 'nope:{tmp_path / 'a'}': expected [label=]KIND:DIR with " \
           "KIND one of tiedonnx, genai, optimum" in lines
    assert lines[-1] == "fewer than two contenders started: nothing to compare"


def test_a_worker_that_dies_is_its_last_error_line(tmp_path):
    tiny_decoder_folder(tmp_path / "a")
    tiny_decoder_folder(tmp_path / "b")
    (tmp_path / "b" / "onnx" / "model.onnx").write_bytes(b"not a model")
    out = _run(f"tiedonnx:{tmp_path / 'a'}", f"tiedonnx:{tmp_path / 'b'}", "--rounds", 1, "--prompt", 3, "--new", 2)
    assert out.returncode == 1 and "Traceback" not in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith(f"tiedonnx:{tmp_path / 'b'}: not run: "))
    assert line.startswith(f"tiedonnx:{tmp_path / 'b'}: not run: worker exited: ")


def test_profile_decode_loop_splits_the_step(tmp_path):
    """scripts/profile_decode.py loop: the decode step and its part outside onnxruntime, both positive."""
    import re

    tiny_decoder_folder(tmp_path / "a", max_length=300)
    script = SCRIPT.parent / "profile_decode.py"
    out = subprocess.run([sys.executable, str(script), "loop", str(tmp_path / "a"), "--rounds", "2"],
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    step, outside = map(float, re.search(r"decode step (\d+) us, of which outside run_with_iobinding ([\d.]+) us",
                                         out.stdout).groups())
    assert 0 < outside < step
