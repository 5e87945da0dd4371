"""onnxslim on a tiedonnx file: default settings undo the tie, retie restores it, one setting keeps it.

Measured with onnxslim 0.1.98 (scripts/bench_untie_tools.py): the default
constant folding turns ``Transpose(W)`` into a second initializer ``W__T``
(807,438 -> 1,610,543 bytes on the 784-256 autoencoder); ``inspect`` reports
the tie broken and the copy as an untied duplicate; ``retie`` folds it back.
``--skip-optimizations constant_folding`` leaves the Transpose node in place.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tiedonnx.runtime.graph.inspect import inspect_file
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.graph.retie import retie_file
from tiedonnx.runtime.testing import tied_autoencoder

onnxslim = pytest.importorskip("onnxslim", reason="onnxslim is not installed (pip install onnxslim)")

FEATURES, HIDDEN = 784, 256
W_BYTES = FEATURES * HIDDEN * 4


@pytest.fixture(scope="module")
def tied_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("untie") / "tied.onnx"
    onnx.save(to_precision(tied_autoencoder(FEATURES, HIDDEN), "fp32"), path)
    return path


def _slim(src, dst, **kw):
    with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
        onnx.save(onnxslim.slim(str(src), **kw), dst)


def _run(path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((16, FEATURES), dtype=np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _weight_sized(report) -> list[str]:
    return [i["name"] for i in report.initializers if i["bytes"] >= W_BYTES]


def test_tied_file_starts_with_one_initializer_per_tie(tied_file):
    rep = inspect_file(tied_file)
    assert rep.ties_ok and _weight_sized(rep) == ["W"]


def test_onnxslim_default_undoes_the_tie_and_retie_restores_it(tied_file, tmp_path):
    slimmed, retied = tmp_path / "slim.onnx", tmp_path / "retied.onnx"
    _slim(tied_file, slimmed)

    rep = inspect_file(slimmed)
    assert not rep.ties_ok
    assert sorted(_weight_sized(rep)) == ["W", "W__T"]  # the Transpose folded into a second copy
    assert rep.untied_duplicates == [{"source": "W", "copy": "W__T", "relation": "transpose"}]
    [tie] = rep.ties  # the tie record survived, and inspect says the graph no longer has the tie
    assert tie["initializer"] == "W" and "does not read 'W'" in tie["status"]
    assert slimmed.stat().st_size >= tied_file.stat().st_size + W_BYTES

    report = retie_file(slimmed, retied)
    assert [(d.source, d.copy, d.relation) for d in report.folded] == [("W", "W__T", "transpose")]
    back = inspect_file(retied)
    assert back.ties_ok and _weight_sized(back) == ["W"]
    assert [t["status"] for t in back.ties] == ["ok"]
    assert retied.stat().st_size < tied_file.stat().st_size + W_BYTES // 100
    assert np.array_equal(_run(retied), _run(tied_file))


def test_onnxslim_without_constant_folding_keeps_the_tie(tied_file, tmp_path):
    slimmed = tmp_path / "slim.onnx"
    _slim(tied_file, slimmed, skip_optimizations=["constant_folding"])
    rep = inspect_file(slimmed)
    assert rep.ties_ok and _weight_sized(rep) == ["W"]
    assert [t["status"] for t in rep.ties] == ["ok"] and not rep.untied_duplicates
    assert "Transpose" in {n.op_type for n in onnx.load(slimmed).graph.node}
    assert np.array_equal(_run(slimmed), _run(tied_file))
