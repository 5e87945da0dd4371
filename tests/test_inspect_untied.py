"""Untied size of mixed-precision files: a cast use is a copy at the cast's dtype.

A ``mixed_float16`` Keras model computes in float16 with float32 variables, so
a plain export of a tied pair holds the float32 ``W`` for one use and a
constant-folded float16 ``W^T`` for the other. ``retie`` stores ``W`` once and
records the second use as a cast (and transpose); the untied size must count
that float16 copy at float16 size, and must not count the Cast through which
an fp16 file reads its one stored tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph import read_ties, retie
from tiedonnx.runtime.graph.inspect import inspect_model, untied_bytes
from tiedonnx.runtime.graph.quantize import to_precision

N_IN, N_H = 16, 8  # 128 elements: above the size where retie folds float16 copies


def _mixed_tied_graph(seed: int = 0) -> onnx.ModelProto:
    """x[?, 16] -> (x16 @ W16) @ W16T -> float32, as a mixed_float16 tied AE exports (no biases)."""
    w = np.random.default_rng(seed).normal(size=(N_IN, N_H)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["W"], ["W16"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "W16"], ["h16"]),
        helper.make_node("MatMul", ["h16", "W16T"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N_IN])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.astype(np.float16), "W16T")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _copy_bytes(model: onnx.ModelProto, name: str) -> int:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name)).nbytes


def test_retied_mixed_file_counts_the_float16_copy_at_float16_size():
    untied = _mixed_tied_graph()
    tied, _ = retie(untied)
    (tie,) = read_ties(tied)
    assert [u.relation for u in tie.uses] == ["cast"]  # the setup this test is about
    assert "W16T" not in {i.name for i in tied.graph.initializer}
    # The untied file had exactly one more tensor: the float16 W^T (256 bytes, not W's 512).
    assert untied_bytes(tied, 0) == _copy_bytes(untied, "W16T") == N_IN * N_H * 2
    assert inspect_model(tied).untied_bytes - inspect_model(tied).bytes == N_IN * N_H * 2
    # Same outputs: the Cast + Transpose recompute the copy bit for bit.
    x = np.random.default_rng(1).normal(size=(3, N_IN)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(tied), run(untied))


def test_fp16_file_does_not_count_the_cast_that_reads_its_stored_tensor():
    """fp16 storage: W is stored once in float16 and read through a Cast to float32.

    A plain fp16 export of the mixed model stores float16 W and float16 W^T:
    one extra copy of 256 bytes, whatever Casts read the stored one.
    """
    half = to_precision(retie(_mixed_tied_graph())[0], "fp16")
    (tie,) = read_ties(half)
    assert sorted(u.relation for u in tie.uses) == ["cast", "cast"]
    assert untied_bytes(half, 0) == N_IN * N_H * 2


def test_fp16_tied_ae_counts_its_transposed_use_once():
    """No mixed precision: the fp16 storage Cast is not a copy; the transposed use is one."""
    from tiedonnx.runtime.testing import tied_autoencoder

    half = to_precision(tied_autoencoder(N_IN, N_H), "fp16")
    (tie,) = read_ties(half)
    assert {u.relation for u in tie.uses} == {"cast", "transpose"}
    assert untied_bytes(half, 0) == N_IN * N_H * 2


def test_ort_file_counts_the_float16_copy_like_the_onnx_file(tmp_path):
    """inspect of the .ort file of the retied mixed graph: the same extra bytes as the .onnx."""
    from tiedonnx.runtime.graph.inspect import inspect_file
    from tiedonnx.runtime.graph.ort_format import save_ort

    tied, _ = retie(_mixed_tied_graph())
    save_ort(tied, tmp_path / "mixed.ort")
    report = inspect_file(tmp_path / "mixed.ort")
    (tie,) = report.ties
    assert tie["status"] == "ok", tie
    assert report.untied_bytes - report.bytes == N_IN * N_H * 2  # float16 W^T, not float32 W's 512


def test_tie_records_of_the_wrong_shape_are_skipped_not_crashed_on(tmp_path, capsys):
    """A hand-edited record whose ``keras`` is a string: quantize and inspect skip it (logged)."""
    import json

    from tiedonnx.runtime.cli import main
    from tiedonnx.runtime.graph import TIES_KEY, write_metadata
    from tiedonnx.runtime.testing import tied_autoencoder

    model = tied_autoencoder(N_IN, N_H)
    bad = [{"initializer": "W", "uses": [{"relation": "transpose", "perm": [1, 0], "output": "W__T"}],
            "keras": "enc/kernel"},
           {"initializer": "W", "uses": [{"relation": "transpose", "output": 7}]}]
    write_metadata(model, {TIES_KEY: json.dumps(bad)})
    assert read_ties(model) == []
    onnx.save(model, tmp_path / "m.onnx")
    for args in (["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--precision", "int4"],
                 ["inspect", str(tmp_path / "q.onnx")]):
        assert main(args) == 0, args
    out = capsys.readouterr().out
    assert "internal error" not in out and "ties stored once: t" in out  # the tie, found in the graph
