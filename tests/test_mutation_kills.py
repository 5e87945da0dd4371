"""Behaviours of the graph passes and parity that a deliberate bug left untested.

Each test here was written because a mutation of ``scripts/mutation_check.py``
(named in the test's comment) survived the tests that existed: it fails on
that mutant and passes on the real code. Expected values are written by hand
or computed with numpy, never read back from the code under test.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import run
from tiedonnx.runtime.graph.duplicates import find_duplicates
from tiedonnx.runtime.graph.fp16 import to_fp16
from tiedonnx.runtime.graph.quantize import to_precision

vi = helper.make_tensor_value_info


def _model(nodes, inputs, outputs, inits, *, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ------------------------------------------------------------------ duplicates


def test_small_integer_and_vector_tensors_are_never_copies():
    # mutation dups_small_tensors_count: every tensor a candidate, whatever its size.
    # Each pair is equal and under 16 bytes: a 1-byte zero point, an 8-byte scalar, a 12-byte vector.
    small = {"zp_a": np.zeros((1, 1), np.uint8), "zp_b": np.zeros((1, 1), np.uint8),
             "s_a": np.array([7], np.int64), "s_b": np.array([7], np.int64),
             "v_a": np.array([1.0, 2.0, 3.0], np.float32), "v_b": np.array([1.0, 2.0, 3.0], np.float32)}
    assert find_duplicates(small) == []
    # The control: 16 bytes (two int64) is a copy.
    equal16 = {"a": np.array([5, 6], np.int64), "b": np.array([5, 6], np.int64)}
    assert [(d.source, d.copy, d.relation) for d in find_duplicates(equal16)] == [("a", "b", "identity")]


def test_a_float16_copy_that_overflowed_is_not_a_cast_of_the_float32_tensor():
    # mutation dups_overflowing_cast_accepted: a cast that turned a finite value into inf folded.
    w = np.linspace(-1.0, 1.0, 128, dtype=np.float32).reshape(8, 16)
    cast = {"w": w, "h": w.T.astype(np.float16)}
    assert [(d.source, d.copy, d.relation, d.perm) for d in find_duplicates(cast)] == [("w", "h", "cast", (1, 0))]
    big = w.copy()
    big[0, 0] = 1e5  # over float16's largest finite value, 65504
    with np.errstate(over="ignore"):
        h = big.T.astype(np.float16)
    assert np.isinf(h[0, 0])  # what a Cast node would give back is inf, not 1e5
    assert find_duplicates({"w": big, "h": h}) == []


# ------------------------------------------------------------------ fp16


def test_fp16_reuses_an_equal_float16_constant_instead_of_storing_a_copy():
    # mutation fp16_existing_fp16_constant_copied: c32 stored again as a second float16 tensor.
    values = np.array([0.5, 0.25, -1.0, 2.0], np.float32)
    nodes = [helper.make_node("Cast", ["c16"], ["c16f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "c32"], ["a"]), helper.make_node("Add", ["a", "c16f"], ["y"])]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, [4])], [vi("y", TensorProto.FLOAT, [4])],
                   {"c16": values.astype(np.float16), "c32": values})
    out, converted = to_fp16(model)
    halves = [i.name for i in out.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert halves == ["c16"] and converted == {"c32": "c16"}
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    np.testing.assert_array_equal(run(out, x), x + 2 * values)  # exact: every value is a power of 2


# ------------------------------------------------------------------ int8


def test_int8_file_holds_no_two_equal_tensors_when_untied_weights_share_a_zero_point():
    # mutation int8_equal_parameters_not_merged: each weight's (equal) int8 zero point kept apart.
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, ["n", 8])], [vi("y", TensorProto.FLOAT, ["n", 4])],
                   {"W1": w1, "W2": w2})
    q = to_precision(model, "int8")
    seen = {}
    for init in q.graph.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        assert key not in seen, f"{init.name} equals {seen[key]}"
        seen[key] = init.name
    # Symmetric int8 (quantize_dynamic's QInt8) has zero point 0 for both weights: one tensor holds it.
    zero_points = [i for i in q.graph.initializer if i.data_type == TensorProto.INT8 and not list(i.dims)]
    assert len(zero_points) == 1 and numpy_helper.to_array(zero_points[0]) == 0
    x = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(run(q, x), x @ w1 @ w2, atol=0.5)  # int8 rounding, 2 layers: measured 0.09


# ------------------------------------------------------------------ layer norm


def test_the_fused_layer_norm_keeps_the_graphs_own_epsilon():
    # mutation layer_norm_epsilon_dropped: the fused node given LayerNormalization's default 1e-5.
    from tests.test_layer_norm import _norm_nodes
    from tiedonnx.runtime.graph.layer_norm import fuse_layer_norms

    rng = np.random.default_rng(0)
    gamma, beta = rng.standard_normal((1, 1, 4)).astype(np.float32), rng.standard_normal((1, 1, 4)).astype(np.float32)
    shape = ["batch", "seq", 4]
    model = _model(_norm_nodes("x", "y", "gamma", "beta", "eps", "ln"), [vi("x", TensorProto.FLOAT, shape)],
                   [vi("y", TensorProto.FLOAT, shape)],
                   {"gamma": gamma, "beta": beta, "eps": np.array(0.25, np.float32)})
    fused, count = fuse_layer_norms(model)
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["LayerNormalization"]
    assert helper.get_attribute_value(next(a for a in fused.graph.node[0].attribute if a.name == "epsilon")) == 0.25
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 0.25) * gamma + beta
    # Measured: 6e-8 from numpy's float32 result; the default epsilon 1e-5 would differ by 0.31.
    np.testing.assert_allclose(run(fused, x), expected, atol=1e-5)


# ------------------------------------------------------------------ ORT format


def test_save_ort_falls_back_to_unoptimized_when_the_optimizer_splits_a_tie(tmp_path, monkeypatch, caplog):
    # mutation ort_split_tie_not_reported: a tie stored twice (the tensor and its folded
    # transpose) passed as kept because the tensor itself was among the copies.
    from tiedonnx.runtime.graph import ort_format
    from tiedonnx.runtime.testing import tied_autoencoder

    tied = to_precision(tied_autoencoder(16, 4), "fp32")  # W [16, 4] read as W and Transpose(W)
    w = np.sort(numpy_helper.to_array(next(i for i in tied.graph.initializer if i.name == "W")).ravel())
    # An onnxruntime whose optimized save folds Transpose(W) into a second initializer.
    monkeypatch.setattr(ort_format, "_DISABLED", [])
    report = ort_format.save_ort(tied, tmp_path / "m.ort")
    holding_w = [i["name"] for i in ort_format.ort_initializers(tmp_path / "m.ort", with_data=True)
                 if i["raw"].size == w.nbytes and np.array_equal(np.sort(i["raw"].view(np.float32)), w)]
    assert holding_w == ["W"]
    assert report.optimized is False
    assert "split ties ['W']" in caplog.text


# ------------------------------------------------------------------ weight views


def test_a_transpose_without_perm_is_folded_as_the_reversed_axes():
    # mutation weight_views_default_perm_identity: a Transpose with no perm read as the identity.
    from tiedonnx.runtime.graph.weight_views import fold_weight_views

    w = np.arange(15, dtype=np.float32).reshape(3, 5)
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("MatMul", ["x", "Wt"], ["y"])]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, ["n", 5])], [vi("y", TensorProto.FLOAT, ["n", 3])], {"W": w})
    folded, count = fold_weight_views(model)
    assert count == 1 and [n.op_type for n in folded.graph.node] == ["MatMul"]
    (stored,) = folded.graph.initializer
    assert stored.name == "Wt"
    np.testing.assert_array_equal(numpy_helper.to_array(stored), w.T)  # ONNX: no perm reverses the axes
    x = np.ones((2, 5), np.float32)
    np.testing.assert_array_equal(run(folded, x), x @ w.T)


# ------------------------------------------------------------------ stack picks


def _stack_then_slice(starts, ends, axes, squeeze_axis, unsqueeze_axis=1) -> onnx.ModelProto:
    """y = Squeeze(Slice(Concat(Unsqueeze(a|b|c, unsqueeze_axis), axis=1), starts, ends, axes), squeeze_axis);
    a, b, c: [batch, 4]. With ``unsqueeze_axis=1`` the Concat is ``stack([a, b, c], axis=1)``."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Unsqueeze", [n, "unsqueeze_axes"], [f"{n}u"]) for n in "abc"]
    nodes += [helper.make_node("Concat", ["au", "bu", "cu"], ["stack"], axis=1),
              helper.make_node("Slice", ["stack", "starts", "ends", "axes"], ["sliced"]),
              helper.make_node("Squeeze", ["sliced", "squeeze_axes"], ["y"])]
    ints = {"unsqueeze_axes": [unsqueeze_axis], "starts": starts, "ends": ends, "axes": axes,
            "squeeze_axes": [squeeze_axis]}
    model = _model(nodes, [vi(n, f, ["batch", 4]) for n in "abc"], [vi("y", f, None)],
                   {k: np.array(v, np.int64) for k, v in ints.items()}, opset=15)
    model.ir_version = 8
    return model


def _stack_feed():
    return {n: np.arange(20, dtype=np.float32).reshape(5, 4) + 100 * i for i, n in enumerate("abc")}


def test_a_pick_along_the_batch_axis_of_a_stack_is_not_a_member():
    # mutation stack_pick_concat_axis_unchecked: stack[1] (batch row 1: [3, 4]) read as member b ([5, 4]).
    from tiedonnx.runtime.graph.stack_pick import fold_stack_picks

    feed = _stack_feed()
    model, folded = fold_stack_picks(_stack_then_slice([1], [2], [0], 0))
    assert folded == 0
    expected = np.stack([feed["a"][1], feed["b"][1], feed["c"][1]])  # row 1 of each member
    np.testing.assert_array_equal(run_feed(model, feed), expected)


def test_a_pick_that_also_slices_another_axis_is_not_the_whole_member():
    # mutation stack_pick_other_axes_sliced: stack[0:2, 1] (two rows of b) read as all of b.
    from tiedonnx.runtime.graph.stack_pick import fold_stack_picks

    feed = _stack_feed()
    model, folded = fold_stack_picks(_stack_then_slice([0, 1], [2, 2], [0, 1], 1))
    assert folded == 0
    np.testing.assert_array_equal(run_feed(model, feed), feed["b"][0:2])


def run_feed(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_a_concat_of_members_unsqueezed_on_another_axis_is_not_a_stack():
    # mutation stack_pick_unsqueeze_axis_unchecked: Concat([a, b, c] each [batch, 4, 1], axis=1) is
    # [batch, 12, 1]; its column 0 is a[:, 0:1], not member a.
    from tiedonnx.runtime.graph.stack_pick import fold_stack_picks

    feed = _stack_feed()
    model, folded = fold_stack_picks(_stack_then_slice([0], [1], [1], 1, unsqueeze_axis=2))
    assert folded == 0
    np.testing.assert_array_equal(run_feed(model, feed), feed["a"][:, 0:1])


# ------------------------------------------------------------------ graph index


def test_match_parent_path_requires_each_parent_to_be_the_named_op():
    # mutation index_parent_op_type_unchecked: any producer accepted as the expected op.
    from tiedonnx.runtime.graph.index import GraphIndex, match_parent_path

    nodes = [helper.make_node("Identity", ["W"], ["Wi"]), helper.make_node("Transpose", ["W"], ["Wt"]),
             helper.make_node("MatMul", ["x", "Wi"], ["y1"]), helper.make_node("MatMul", ["x", "Wt"], ["y2"])]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, [2, 2])],
                   [vi("y1", TensorProto.FLOAT, [2, 2]), vi("y2", TensorProto.FLOAT, [2, 2])],
                   {"W": np.eye(2, dtype=np.float32)})
    index = GraphIndex(model.graph)
    by_identity, by_transpose = model.graph.node[2], model.graph.node[3]
    assert match_parent_path(index, by_identity, [("Transpose", 1)]) is None
    assert match_parent_path(index, by_transpose, [("Transpose", 1)]) == [model.graph.node[1]]
    assert match_parent_path(index, by_transpose, [("Transpose", 1), ("Identity", 0)]) is None  # W: no producer


# ------------------------------------------------------------------ lean


def test_lean_gemm_with_trans_b_over_a_transpose_reads_the_weight_untransposed():
    # mutation lean_trans_b_not_flipped: Gemm(A, Transpose(W), transB=1) = A @ W became A @ W^T.
    from tiedonnx.runtime.lean import lean_rewrite

    w = np.arange(9, dtype=np.float32).reshape(3, 3)  # square: the wrong product still runs
    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
             helper.make_node("Gemm", ["x", "Wt"], ["y"], transB=1)]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, [2, 3])], [vi("y", TensorProto.FLOAT, [2, 3])], {"W": w})
    rewritten, report = lean_rewrite(model)
    (gemm,) = [n for n in rewritten.graph.node if n.op_type == "Gemm"]
    assert list(gemm.input) == ["x", "W"]
    assert [helper.get_attribute_value(a) for a in gemm.attribute if a.name == "transB"] == [0]
    x = np.array([[1, 0, 0], [0, 1, 2]], np.float32)
    np.testing.assert_array_equal(run(rewritten, x), x @ w)


def test_lean_keeps_pre_packing_off_for_a_kept_float_transpose_of_an_unshared_weight():
    # mutation lean_float_tie_pre_packed: pre-packing allowed wherever no weight is shared, float included.
    # A rank-3 MatMul at opset 12 cannot become a Gemm: Transpose(W) is kept and runs per call, the one
    # float copy at rest; nothing else reads W, so only the float rule keeps pre-packing off.
    from tiedonnx.runtime.lean import lean_rewrite

    nodes = [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "Wt"], ["y"])]
    model = _model(nodes, [vi("x", TensorProto.FLOAT, ["b", "s", 4])], [vi("y", TensorProto.FLOAT, ["b", "s", 3])],
                   {"W": np.ones((3, 4), np.float32)}, opset=12)
    _, report = lean_rewrite(model)
    assert report.kept_transposes == ["Wt"] and report.kept_integer == [] and report.shared == []
    assert report.prepacking is False
    assert report.session_config == {"session.disable_prepacking": "1"}


# ------------------------------------------------------------------ parity


def test_the_absolute_tolerance_scales_with_the_outputs_peak():
    # mutation parity_tolerance_not_scaled_by_peak: |a - e| <= atol instead of atol * max(1, peak).
    from tiedonnx.converter.parity_compare import compare

    expected = np.array([1000.0, 2.0], np.float32)
    within = np.array([1000.5, 2.0], np.float32)  # 0.5 <= 1e-3 x 1000 = 1.0
    beyond = np.array([1000.0, 3.5], np.float32)  # 1.5 > 1.0
    assert compare({"y": expected}, {"y": within}, atol=1e-3, rtol=0.0)[1] == []
    assert [m.kind for m in compare({"y": expected}, {"y": beyond}, atol=1e-3, rtol=0.0)[1]] == ["values"]


def test_nan_where_keras_has_nan_is_a_match():
    # mutation parity_nan_never_matches: NaN in both outputs reported as a difference.
    from tiedonnx.converter.parity_compare import compare

    expected = np.array([np.nan, 1.0], np.float32)
    assert compare({"y": expected}, {"y": expected.copy()}, atol=1e-5, rtol=0.0)[1] == []
    assert [m.kind for m in compare({"y": expected}, {"y": np.array([0.0, 1.0], np.float32)},
                                    atol=1e-5, rtol=0.0)[1]] == ["values"]


def test_a_failed_case_followed_by_a_larger_passing_difference_stays_failed():
    # mutation parity_earlier_failure_forgotten: the later, larger (passing) case overwrote the failure.
    from tiedonnx.converter.parity_compare import OutputParity, keep_worst

    worst: dict = {}
    keep_worst(worst, [OutputParity("y", (2,), 0.1, 0.9, False)])  # rtol: small value, small diff, failed
    keep_worst(worst, [OutputParity("y", (2,), 0.5, 0.01, True)])
    assert worst["y"].max_abs == 0.5 and worst["y"].ok is False


def test_an_output_of_the_wrong_shape_is_one_shape_mismatch_and_no_figure():
    # mutation parity_shape_mismatch_also_compared: values compared after the shape mismatch
    # (broadcast [1, 3] against [2, 3]), adding a values mismatch and a figure.
    from tiedonnx.converter.parity_compare import compare

    expected = np.ones((2, 3), np.float32)
    figures, problems = compare({"y": expected}, {"y": np.zeros((1, 3), np.float32)}, atol=1e-5, rtol=0.0)
    assert [(m.kind, m.output) for m in problems] == [("shape", "y")] and figures == []
