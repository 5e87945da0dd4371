"""Refusals that need no Keras are answered before TensorFlow is imported.

Each case runs twice in a fresh interpreter: once on this (full) install, where
TensorFlow is importable and must still not be imported, and once with
TensorFlow, Keras and tf2onnx made unimportable (a runtime-only install). Both
must give the same single stderr line and exit 2: the answer never waits for,
nor depends on, TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tiedonnx.runtime.testing import tied_autoencoder

HEAVY = ("tensorflow", "keras", "tf2onnx")

# Runs every case in one interpreter (one start-up, not one per case); after
# each case, records which heavy modules had been imported so far.
_RUN_CASES = """
import contextlib, io, json, sys
from tiedonnx.runtime.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    results.append({"code": code, "stderr": err.getvalue(),
                    "heavy": [m for m in %r if sys.modules.get(m) is not None]})
print(json.dumps(results))
""" % (HEAVY,)

_BLOCK_TENSORFLOW = "import sys\nfor m in %r: sys.modules[m] = None\n" % (HEAVY,)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    onnx.save(tied_autoencoder(16, 4), str(root / "ae.onnx"))
    np.save(root / "x.npy", np.random.default_rng(0).random((5, 16), dtype=np.float32))
    (root / "m.keras").write_bytes(b"never read: the refusal comes first")
    (root / "m.h5").write_bytes(b"never read")
    (root / "empty.keras").write_bytes(b"")
    (root / "done").mkdir()
    (root / "done" / "report.json").write_text("{}")
    return root


# command -> (arguments, words the one line must hold)
CASES = {
    "export: missing model": (["export", "{d}/nothere.keras", "-o", "{d}/o.onnx"],
                              ["Keras model file not found", "nothere.keras"]),
    "export: existing output": (["export", "{d}/m.keras", "-o", "{d}/ae.onnx"],
                                ["already exists", "--force"]),
    "export: an ONNX model": (["export", "{d}/ae.onnx", "-o", "{d}/o.onnx"],
                              ["ONNX file", "tiedonnx retie"]),
    "export: .h5 without --unsafe-load-code": (["export", "{d}/m.h5", "-o", "{d}/o.onnx"],
                                               ["legacy HDF5", "--unsafe-load-code"]),
    "export: empty model": (["export", "{d}/empty.keras", "-o", "{d}/o.onnx"], ["empty (0 bytes)"]),
    "export: a folder": (["export", "{d}/done", "-o", "{d}/o.onnx"], ["directory"]),
    "export: int8 flag with int4": (["export", "{d}/m.keras", "-o", "{d}/o.onnx", "--precision",
                                     "int4", "--per-channel"], ["applies to int8 only"]),
    "verify: missing onnx": (["verify", "{d}/m.keras", "{d}/nothere.onnx"], ["Model file not found"]),
    "verify: missing keras": (["verify", "{d}/nothere.keras", "{d}/ae.onnx"],
                              ["Keras model file not found"]),
    "verify: arguments swapped": (["verify", "{d}/ae.onnx", "{d}/m.keras"], ["ONNX file"]),
    "verify: missing inputs": (["verify", "{d}/m.keras", "{d}/ae.onnx", "--input", "{d}/no.npy"],
                               ["Input file not found"]),
    "demo: existing folder": (["demo", "--out", "{d}/done"], ["already holds demo output", "--force"]),
    "demo: a file as folder": (["demo", "--out", "{d}/x.npy"], ["must be a folder"]),
    "demo: zero epochs": (["demo", "--out", "{d}/new", "--epochs", "0"], ["epochs"]),
    "bench --keras: missing keras": (["bench", "{d}/ae.onnx", "--keras", "{d}/nothere.keras"],
                                     ["Keras model file not found"]),
    "bench --keras: missing onnx": (["bench", "{d}/nothere.onnx", "--keras", "{d}/m.keras"],
                                    ["Model file not found"]),
}


def _run_all(files, *, prelude: str = "") -> dict[str, dict]:
    argv = [[a.format(d=files) for a in args] for args, _ in CASES.values()]
    proc = subprocess.run([sys.executable, "-c", prelude + _RUN_CASES, json.dumps(argv)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(zip(CASES, json.loads(proc.stdout.strip().splitlines()[-1])))


@pytest.fixture(scope="module")
def answers(files):
    return {"full install": _run_all(files), "no TensorFlow": _run_all(files, prelude=_BLOCK_TENSORFLOW)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusal_comes_before_tensorflow_in_one_line(files, answers, case):
    full, blocked = answers["full install"][case], answers["no TensorFlow"][case]
    lines = full["stderr"].strip().splitlines()
    assert full["code"] == 2 and len(lines) == 1, full["stderr"]
    assert all(word in lines[0] for word in CASES[case][1]), lines[0]
    assert "pip install" not in lines[0]  # the user's mistake first, not the missing extra
    assert full["heavy"] == [], f"{case}: imported {full['heavy']} before refusing"
    assert (blocked["code"], blocked["stderr"]) == (full["code"], full["stderr"])
    assert not (files / "o.onnx").exists() and not (files / "new").exists()


@pytest.mark.parametrize("command", ["inspect", "run", "quantize", "bench"])
def test_onnx_commands_name_export_for_a_keras_file(files, capsys, command):
    from tiedonnx.runtime.cli import main

    extra = {"run": ["-i", str(files / "x.npy"), "-o", str(files / "y.npy")],
             "quantize": ["-o", str(files / "q.onnx"), "--precision", "int8"]}.get(command, [])
    assert main([command, str(files / "m.keras"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a Keras model file, not ONNX" in err[0], err
    assert f"tiedonnx export {files / 'm.keras'} -o {files / 'm.onnx'}" in err[0]


def test_demo_output_list_names_every_variant_file():
    pytest.importorskip("keras")
    from tiedonnx.converter.demo import ONNX_VARIANTS
    from tiedonnx.runtime.commands._preflight import DEMO_OUTPUT_FILES

    assert {v.file for v in ONNX_VARIANTS} <= set(DEMO_OUTPUT_FILES)
