"""tiedonnx.runtime.bench: FLOP counting, timing harness, and the Keras comparison."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime import UsageError
from tiedonnx.runtime.bench import bench_model, matmul_shapes, median_seconds, synthetic_inputs
from tiedonnx.runtime.inputs import TensorSpec
from tiedonnx.runtime.lean import lean_rewrite
from tests.graphs import save, tied_ae, tied_weights


def test_matmul_shapes_follow_transposes_and_trans_b():
    assert matmul_shapes(tied_ae(8, 3)) == [(8, 3), (3, 8)]
    lean, _ = lean_rewrite(tied_ae(8, 3))  # Gemm(h, W, transB=1) reads W as (3, 8)
    assert matmul_shapes(lean) == [(8, 3), (3, 8)]


def test_matmul_shapes_is_none_for_other_heavy_ops():
    w = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "k")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    assert matmul_shapes(helper.make_model(graph)) is None


def test_median_seconds_calls_warm_up_plus_at_least_min_calls():
    calls = []
    assert median_seconds(lambda: calls.append(1), min_time=0.0, min_calls=7) >= 0
    assert len(calls) == 8


def test_synthetic_inputs_need_fixed_feature_axes(rng):
    spec = TensorSpec("x", ("batch", 4), np.dtype(np.float32))
    assert synthetic_inputs([spec], 3, rng)["x"].shape == (3, 4)
    with pytest.raises(UsageError, match=r"Input 'x' has shape \(batch, \?\): an axis besides the batch is dynamic"):
        synthetic_inputs([TensorSpec("x", ("batch", "?"), np.dtype(np.float32))], 3, rng)


def test_bench_rejects_bad_batch_sizes(tmp_path):
    with pytest.raises(UsageError, match=r"batch_sizes\[i\] must be a positive integer. Received: batch_sizes\[i\]=0"):
        bench_model(save(tied_ae(), tmp_path / "ae.onnx"), batch_sizes=[0])


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs Keras")
def test_bench_against_keras_measures_the_same_model(tmp_path):
    import keras

    from tiedonnx.converter import DenseTied

    w = tied_weights(8, 3)
    inputs = keras.Input((8,), name="x")
    enc = keras.layers.Dense(3, activation="sigmoid", name="enc")
    dec = DenseTied(activation="sigmoid", tied_to=enc, name="dec")
    model = keras.Model(inputs, dec(enc(inputs)))
    enc.set_weights([w["W"], w["b1"]])
    dec.set_weights([w["b2"]])
    model.save(tmp_path / "ae.keras")
    from tiedonnx.converter.keras_bench import KerasTimer

    report = bench_model(save(tied_ae(), tmp_path / "ae.onnx"), batch_sizes=[1, 5],
                         keras=KerasTimer(tmp_path / "ae.keras"), min_time=0.01, providers="cpu")
    # Measured: Keras (TF float32 kernels) vs onnxruntime differ by <= 6e-8 here.
    assert report.keras_max_abs_diff < 1e-6
    for row in report.rows:
        assert row.keras_call_s > 0 and row.keras_predict_s > 0


def test_bench_interleaves_contenders_and_keeps_each_rounds_spread(tmp_path):
    report = bench_model(save(tied_ae(), tmp_path / "ae.onnx"), batch_sizes=[2], min_time=0.02,
                         rounds=3, providers="cpu")
    (row,) = report.rows
    assert report.rounds == 3 and set(row.spread) == {"tiedonnx", "numpy"}
    assert all(s >= 1.0 for s in row.spread.values())


def test_bench_figures_are_medians_over_rounds_and_disagreeing_rounds_are_flagged(tmp_path, monkeypatch):
    import tiedonnx.runtime.bench as bench
    from tiedonnx.runtime.timing import Rounds

    # One burst in round 2 made both contenders 8x slower: the medians ignore it, the note says it.
    scripted = Rounds({"tiedonnx": (1e-3, 8e-3, 1e-3), "numpy": (2e-3, 16e-3, 2e-3)})
    monkeypatch.setattr(bench, "interleave", lambda timers, rounds: scripted)
    report = bench_model(save(tied_ae(), tmp_path / "ae.onnx"), batch_sizes=[4], providers="cpu")
    (row,) = report.rows
    assert row.tiedonnx_s == 1e-3 and row.pct_of_numpy == 200.0
    assert row.spread == {"tiedonnx": 8.0, "numpy": 8.0}
    assert report.timing_note.startswith("batch 4: noisy machine:")


def test_bench_rounds_must_be_positive(tmp_path):
    with pytest.raises(UsageError, match=r"Received: rounds=0"):
        bench_model(save(tied_ae(), tmp_path / "ae.onnx"), rounds=0)
