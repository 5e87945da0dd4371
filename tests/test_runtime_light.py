"""The deployable runtime stays light: no TensorFlow, Keras or tf2onnx, ever."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.graphs import save, tied_ae

HEAVY = ("tensorflow", "keras", "tf2onnx")

_PROBE = """
import json, sys
stages = {}
def loaded():
    return sorted(m for m in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime")
                  if m in sys.modules)
import tiedonnx.runtime
stages["import"] = loaded()
from tiedonnx.runtime.cli import build_parser, main
build_parser()
stages["parser"] = loaded()
from tiedonnx.runtime import load
stages["load attr"] = loaded()
code = main(["run", sys.argv[1], "-i", sys.argv[2], "-o", sys.argv[3]])
stages["run"] = loaded()
stages["code"] = code
print(json.dumps(stages))
"""


def test_runtime_parser_and_run_never_import_tensorflow(tmp_path):
    model = save(tied_ae(), tmp_path / "ae.onnx")
    np.save(tmp_path / "x.npy", np.zeros((3, 8), np.float32))
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, model, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, check=True, timeout=120)
    stages = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stages["code"] == 0 and (tmp_path / "y.npy").exists()
    for stage in ("import", "parser", "load attr", "run"):
        assert not set(HEAVY) & set(stages[stage]), (stage, stages[stage])
    # Importing the package (and building the parser) loads neither onnx nor
    # onnxruntime; running a model needs both.
    assert stages["import"] == [] and stages["parser"] == []
    assert stages["load attr"] == ["onnxruntime"]
    assert stages["run"] == ["onnx", "onnxruntime"]
