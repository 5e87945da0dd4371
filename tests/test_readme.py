"""Every example in README.md runs as pasted.

* Each fenced ``python`` block runs as its own script, in README order, in one
  folder (later blocks use the files earlier ones wrote). A block preceded by
  ``<!-- readme: skip REASON -->`` is skipped; the reason must be given.
* The CLI synopsis (the ``bash`` block marked ``<!-- readme: synopsis ... -->``)
  lists each command once; every one of them runs here with concrete
  arguments on those files, or names the test that runs it.
* Every other ``bash`` block is marked: ``run`` (run here, in that folder,
  after the Python blocks) or ``skip REASON``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("keras")

from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.testing import tied_autoencoder  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"(?:<!-- readme: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```", re.S)


def _blocks(lang: str) -> list[tuple[str | None, str]]:
    return [(m["mark"], m["body"]) for m in _FENCE.finditer(README.read_text())
            if m["lang"] == lang]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The folder the README's Python blocks ran in, in order (run once)."""
    root = tmp_path_factory.mktemp("readme")
    for i, (mark, code) in enumerate(_blocks("python")):
        if mark and mark.startswith("skip"):
            assert mark[len("skip"):].strip(), f"python block {i} is skipped without a reason"
            continue
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"README python block {i} failed:\n{code}\n{proc.stderr[-3000:]}"
    return root


def test_python_blocks_run_as_pasted(folder):
    assert (folder / "model.keras").exists() and (folder / "ae.onnx").exists()
    assert (folder / "ae.int8.onnx").exists()


# Concrete arguments for each synopsis line (by its command and first flag), or
# the test that runs that command instead.
CLI_EXAMPLES: dict[str, list[str] | str] = {
    "export": ["export", "model.keras", "-o", "cli.fp16.onnx", "--precision", "fp16", "--ort", "--json"],
    "inspect": ["inspect", "cli.fp16.onnx"],
    "verify": ["verify", "model.keras", "ae.int8.onnx"],  # the tolerance comes from the file
    "retie": ["retie", "other.onnx", "-o", "tied.onnx", "--json"],
    "quantize": ["quantize", "ae.onnx", "-o", "q.int8.onnx", "--precision", "int8", "--per-channel"],
    "ort": ["ort", "ae.onnx", "-o", "ae.ort"],
    "run": ["run", "ae.onnx", "-i", "X.npy", "-o", "Y.npy", "--batch-size", "3", "--memory", "lean"],
    "bench": ["bench", "ae.onnx", "--keras", "model.keras", "--batch-sizes", "1,8", "--min-time", "0.01"],
    "bench --sequence-length": "tests/test_bench_sequence.py (a model with an open token axis)",
    "bench --new-tokens": "README's 'Generate text' bash block; tests/test_bench_sequence.py",
    "triton": ["triton", "ae.onnx", "models/", "--max-batch-size", "16", "--instances", "2"],
    "run --ray": "tests/test_distributed.py (starts a local Ray cluster)",
    "export --task": "README's 'Generate text' bash block; tests/test_generate.py",
    "generate": "tests/test_generate.py (exports a generation folder first); README's 'Generate text' block",
    "demo": "tests/test_demo.py (trains for one epoch)",
    "web": "tests/test_web.py (needs chromium and onnxruntime-web)",
    "web --serve": "tests/test_web.py (serves on 127.0.0.1 for headless Chromium)",
    "--version": "tests/test_runtime_cli.py (argparse prints it and exits)",
}


def _synopsis() -> list[str]:
    (block,) = [body for mark, body in _blocks("bash") if mark and mark.startswith("synopsis")]
    keys = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "tiedonnx":
            flag = next((f for f in ("--ray", "--serve", "--task", "--sequence-length", "--new-tokens")
                         if f in words), None)
            keys.append(f"{words[1]} {flag}" if flag else words[1])
    return keys


def test_every_synopsis_command_has_an_example():
    keys = _synopsis()
    assert len(keys) == len(set(keys)), "a command is listed twice"
    assert set(keys) <= set(CLI_EXAMPLES), set(keys) - set(CLI_EXAMPLES)


def test_synopsis_commands_run(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    onnx.save(tied_autoencoder(4, 2, untied=True), "other.onnx")  # W^T stored twice, as exporters do
    np.save("X.npy", np.random.default_rng(0).random((7, 4), dtype=np.float32))
    for key in _synopsis():
        args = CLI_EXAMPLES[key]
        if isinstance(args, str):
            continue  # run by the test named there
        code = main(args)
        err = capsys.readouterr().err
        assert code == 0, f"tiedonnx {' '.join(args)} exited {code}: {err}"
    assert Path("Y.npy").exists() and Path("models/ae/config.pbtxt").exists()
    assert Path("cli.fp16.ort").exists()


def test_every_bash_block_is_marked():
    for mark, body in _blocks("bash"):
        assert mark and mark.startswith(("run", "skip", "synopsis")), f"unmarked block:\n{body}"
        if mark.startswith("skip"):
            assert mark[len("skip"):].strip(), f"skipped without a reason:\n{body}"


def test_bash_blocks_marked_run_run(folder):
    env = {**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    for mark, body in _blocks("bash"):
        if mark != "run":
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"README bash block failed:\n{body}\n{proc.stderr[-2000:]}"


def test_python_blocks_import_the_converter_before_keras():
    """Pasted alone, a block that imports Keras first prints TensorFlow's C++ start-up lines
    (8 on this machine for `import keras`, 13 for the LM block); tiedonnx.converter imports
    TensorFlow with them hidden, so it comes first."""
    heavy = ("keras", "keras_hub", "tensorflow")
    for i, (_, code) in enumerate(_blocks("python")):
        imported = [line.split()[1].split(".")[0] for line in code.splitlines()
                    if line.startswith(("import ", "from "))]
        first_heavy = next((k for k, name in enumerate(imported) if name in heavy), None)
        if first_heavy is not None:
            assert "tiedonnx" in imported[:first_heavy], f"python block {i} imports {imported}"
