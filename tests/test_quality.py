"""The scoreboard's figures (runtime.quality), searched int4 rounding and int8 ties with an int4 body.

Expected values are worked out by hand here (KL of two fixed distributions) or
come from onnxruntime's own kernels (MatMulNBits reading a searched tensor), not
from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.graph.inspect import inspect_model
from tiedonnx.runtime.graph.int4_blocks import quantize_blocks
from tiedonnx.runtime.graph.int4_search import SEARCH_STEPS, search_blocks
from tiedonnx.runtime.graph.metadata import read_ties
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.quality import TokenScores
from tiedonnx.runtime.testing import tied_autoencoder

# Measured: onnxruntime's MatMulNBits vs float64 numpy on the same dequantized weights, |y| ~ 1: 4e-7.
SAME_WEIGHTS_ATOL = 1e-5


def test_scores_of_two_fixed_distributions():
    # Reference p = (1/4, 3/4), model q = (0.9, 0.1): KL(p||q) = 0.25 ln(0.25/0.9) + 0.75 ln(0.75/0.1)
    # = 1.190944; the reference's perplexity on targets (0, 1) is exp(-(ln 0.25 + ln 0.75) / 2) = 2.309401.
    ref = np.log(np.array([[[0.25, 0.75], [0.25, 0.75]]]))
    got = np.log(np.array([[[0.9, 0.1], [0.9, 0.1]]]))
    scores = TokenScores()
    scores.add(ref, got, np.array([[0, 1]]))
    s = scores.summary()
    assert s.tokens == 2
    assert s.mean_kl == pytest.approx(1.190944, abs=1e-6) and s.kl_p99 == pytest.approx(1.190944, abs=1e-6)
    assert s.reference_perplexity == pytest.approx(2.309401, abs=1e-6)
    assert s.perplexity == pytest.approx(math.exp(-(math.log(0.9) + math.log(0.1)) / 2))
    assert s.ratio == pytest.approx(s.perplexity / 2.309401)
    assert s.same_top == 0.0  # the reference's top token is 1, the model's 0
    scores.add(np.log(np.array([[[0.2, 0.8]]])), np.log(np.array([[[0.3, 0.7]]])), np.array([[1]]))
    assert scores.summary().same_top == pytest.approx(1 / 3)


def test_identical_logits_score_as_the_reference_and_shapes_are_checked():
    logits = np.random.default_rng(0).normal(size=(2, 5, 11)) * 3
    scores = TokenScores()
    scores.add(logits, logits + 7.0, np.zeros((2, 5), np.int64))  # a constant shift is the same distribution
    s = scores.summary()
    assert s.ratio == pytest.approx(1.0) and s.mean_kl == pytest.approx(0.0, abs=1e-12) and s.same_top == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        scores.add(logits, logits[:, :4], np.zeros((2, 5), np.int64))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_searched_blocks_are_closer_than_rtn_and_read_the_same_by_matmulnbits(block_size, symmetric):
    rng = np.random.default_rng(block_size)
    w = (rng.standard_t(4, size=(48, 200)) * 0.05).astype(np.float32)  # heavy tails, as trained weights
    rtn = quantize_blocks(w, block_size=block_size, symmetric=symmetric)
    found = search_blocks(w, block_size=block_size, symmetric=symmetric)
    assert found.packed.shape == rtn.packed.shape and found.scales.shape == rtn.scales.shape
    assert (found.zero_points is None) == symmetric
    # What a layer sees: the error of x @ W^T. Measured (seeds above), searched over RTN mean square:
    # non-negative inputs (sigmoid codes, pixels) 0.38-0.68, centred inputs 0.93-0.98.
    positive, centred = rng.random((256, w.shape[1])), rng.normal(size=(256, w.shape[1]))
    for x, bound in ((positive, 0.8), (centred, 1.0)):
        ratio = ((x @ (found.dequantize() - w).T) ** 2).mean() / ((x @ (rtn.dequantize() - w).T) ** 2).mean()
        assert ratio < bound
    found.check_faithful(w, what="W", steps=SEARCH_STEPS)
    # onnxruntime's kernel reads the searched tensor as Blocks.dequantize says.
    n, k = w.shape
    inputs = [numpy_helper.from_array(found.packed, "q"), numpy_helper.from_array(found.scales, "s")]
    if found.zero_points is not None:
        inputs.append(numpy_helper.from_array(found.zero_points, "z"))
    node = helper.make_node("MatMulNBits", ["x", *(i.name for i in inputs)], ["y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block_size)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])], inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    x = rng.normal(size=(3, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(y - x.astype(np.float64) @ found.dequantize().T.astype(np.float64)).max() <= SAME_WEIGHTS_ATOL


def test_searched_rounding_keeps_one_tie_and_is_refused_off_int4():
    model = tied_autoencoder(64, 32, weight_scale=0.2)
    out = to_precision(model, "int4", rounding="search")
    report = inspect_model(out)
    assert len(report.ties) == 1 and report.ties_ok
    assert [n.op_type for n in out.graph.node].count("MatMulNBits") == 1
    with pytest.raises(UsageError, match="rounding applies to int4 only"):
        to_precision(model, "int8", rounding="search")
    with pytest.raises(UsageError, match="Unknown int4 rounding. Received: rounding='gptq'"):
        to_precision(model, "int4", rounding="gptq")


@pytest.mark.slow
def test_int8_ties_with_an_int4_body_on_a_keras_hub_lm(tmp_path):
    """GPT-2's tied embedding stays one int8 tensor; its other matrices become MatMulNBits."""
    from tests.models import causal_lm
    from tiedonnx.converter.export import export

    lm = causal_lm("gpt2", vocabulary=97, hidden=32)
    export(lm, tmp_path / "lm.onnx", verify=False)
    out = to_precision(onnx.load(tmp_path / "lm.onnx"), "int4", int8_ties=True)
    (tie,) = read_ties(out)
    inits = {i.name: i for i in out.graph.initializer}
    assert inits[tie.initializer].data_type == TensorProto.INT8 and list(inits[tie.initializer].dims) in (
        [97, 32], [32, 97])
    report = inspect_model(out)
    assert report.ties_ok and not report.untied_duplicates
    ops = [n.op_type for n in out.graph.node]
    # 2 layers x (q/k/v/out + 2 MLP) matrices: tf2onnx keeps 4 MatMuls per attention, 2 per MLP.
    assert ops.count("MatMulNBits") >= 8 and "GatherBlockQuantized" not in ops
    floats = [i.name for i in out.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2
              and min(i.dims) > 1]
    assert floats == []  # every matrix is 4-bit or the int8 tie
    ids = np.random.default_rng(0).integers(0, 97, (2, 9)).astype(np.int32)
    sess = ort.InferenceSession(out.SerializeToString())
    got = sess.run(None, {i.name: ids if "token" in i.name else np.ones_like(ids) for i in sess.get_inputs()})[0]
    want = np.asarray(lm.predict_on_batch({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    # Measured 0.031 (random weights, block 32); int4 alone measures 0.031 as well.
    assert np.abs(got - want).max() <= 0.1


def test_cli_quantize_measures_the_loss_on_given_inputs_and_says_when_it_did_not(tmp_path, capsys):
    from tiedonnx.runtime.cli import main as cli_main

    src = tmp_path / "ae.onnx"
    onnx.save(tied_autoencoder(64, 32, weight_scale=0.2), src)
    x = np.random.default_rng(1).random((40, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli_main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--precision", "int4"]) == 0
    assert "error not measured: pass --input" in capsys.readouterr().out
    assert cli_main(["quantize", str(src), "-o", str(tmp_path / "q8.onnx"), "--precision", "int8",
                     "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    (loss,) = __import__("json").loads(capsys.readouterr().out)["loss_on_inputs"]
    # Independent figure: onnxruntime on both files, compared here.
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "q8.onnx")).run(None, {"x": x})[0]
    assert loss["name"] == "y" and loss["max_abs"] == pytest.approx(float(np.abs(got - want).max()), rel=1e-5)
    assert 0 < loss["relative_rmse"] < 0.05 and loss["same_argmax"] == pytest.approx(
        float(np.mean(want.argmax(-1) == got.argmax(-1))))
    # A missing inputs file is refused before anything is written.
    assert cli_main(["quantize", str(src), "-o", str(tmp_path / "no.onnx"), "--precision", "int8",
                     "--input", str(tmp_path / "missing.npy")]) == 2
    assert "Input file not found" in capsys.readouterr().err and not (tmp_path / "no.onnx").exists()
