"""The one-way architecture, checked by running it.

* Commands that only read and write ONNX never import TensorFlow, Keras or
  tf2onnx, even on the full dev install where all three are present.
* With Keras unimportable (a runtime-only install), each Keras command exits 2
  with one stderr line naming the extra to install.
* Nothing under ``runtime/`` imports ``tiedonnx.converter`` at module level;
  only the command modules of Keras commands do, inside ``run()``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tiedonnx.runtime.testing import tied_autoencoder

HEAVY = ("tensorflow", "keras", "tf2onnx")
RUNTIME = Path(__file__).resolve().parents[1] / "runtime"

_RUN_COMMAND = """
import json, sys
from tiedonnx.runtime.cli import main
code = main(json.loads(sys.argv[1]))
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)

_BLOCK_KERAS = "import sys\nfor m in %r: sys.modules[m] = None\n" % (HEAVY,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("structure")
    onnx.save(tied_autoencoder(16, 4), str(root / "ae.onnx"))
    np.save(root / "x.npy", np.random.default_rng(0).random((5, 16), dtype=np.float32))
    (root / "m.keras").write_bytes(b"not read: the command must stop before")
    from tests.graphs import tiny_decoder_folder

    tiny_decoder_folder(root / "gen")
    return root


def _cli(args: list[str], *, prelude: str = "") -> tuple[dict, subprocess.CompletedProcess]:
    proc = subprocess.run([sys.executable, "-c", prelude + _RUN_COMMAND, json.dumps(args)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


ONNX_ONLY = {
    "inspect": ["inspect", "{d}/ae.onnx"],
    "retie": ["retie", "{d}/ae.onnx", "-o", "{d}/out/r.onnx"],
    "quantize": ["quantize", "{d}/ae.onnx", "-o", "{d}/out/q.onnx", "--precision", "int8"],
    "ort": ["ort", "{d}/ae.onnx", "-o", "{d}/out/a.ort"],
    "run": ["run", "{d}/ae.onnx", "-i", "{d}/x.npy", "-o", "{d}/out/y.npy"],
    "generate": ["generate", "{d}/gen", "--ids", "1,2,3", "--max-new-tokens", "4"],
    "bench": ["bench", "{d}/ae.onnx", "--batch-sizes", "1", "--min-time", "0.01"],
    "triton": ["triton", "{d}/ae.onnx", "{d}/out/repo"],
}


@pytest.mark.parametrize("command", sorted(ONNX_ONLY))
def test_onnx_only_commands_never_import_tensorflow(files, tmp_path, command):
    (files / "out").mkdir(exist_ok=True)
    args = [a.format(d=files) for a in ONNX_ONLY[command]]
    args = [a.replace(f"{files}/out", str(tmp_path)) for a in args]
    result, proc = _cli(args)
    assert result["code"] == 0, proc.stderr
    assert result["heavy"] == [], f"tiedonnx {command} imported {result['heavy']}"


KERAS_COMMANDS = {
    "export": ["export", "{d}/m.keras", "-o", "{d}/never.onnx"],
    "verify": ["verify", "{d}/m.keras", "{d}/ae.onnx"],
    "demo": ["demo", "--out", "{d}/never-demo"],
    "bench --keras": ["bench", "{d}/ae.onnx", "--keras", "{d}/m.keras"],
}


@pytest.mark.parametrize("command", sorted(KERAS_COMMANDS))
def test_keras_commands_without_keras_exit_2_with_one_line(files, command):
    args = [a.format(d=files) for a in KERAS_COMMANDS[command]]
    result, proc = _cli(args, prelude=_BLOCK_KERAS)
    lines = proc.stderr.strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, proc.stderr
    extras = "convert,demo" if command == "demo" else "convert"  # one command installs all it needs
    assert f'pip install -e ".[{extras}]"' in lines[0]
    assert not (files / "never.onnx").exists() and not (files / "never-demo").exists()


def test_importing_the_converter_without_keras_names_the_extra():
    code = _BLOCK_KERAS + "import tiedonnx.converter\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "MissingExtraError" in proc.stderr and 'pip install -e ".[convert]"' in proc.stderr


def _converter_imports(tree: ast.AST) -> list[tuple[ast.AST, int]]:
    """(import node, nesting depth in functions) for each import of tiedonnx.converter."""
    found = []

    def visit(node, depth):
        for child in ast.iter_child_nodes(node):
            d = depth + isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module or ""]
            if any(n.startswith("tiedonnx.converter") for n in names):
                found.append((child, d))
            visit(child, d)

    visit(tree, 0)
    return found


def test_runtime_imports_the_converter_only_inside_keras_commands():
    offenders = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for node, depth in _converter_imports(ast.parse(path.read_text())):
            in_command = path.parent.name == "commands"
            if depth == 0 or not in_command:
                offenders.append(f"{path.relative_to(RUNTIME)}:{node.lineno}")
    assert offenders == []
    # The scan itself finds what it is looking for (it would miss nothing silently).
    sample = ast.parse("def run():\n    from tiedonnx.converter.export import export\n")
    assert [d for _, d in _converter_imports(sample)] == [1]
