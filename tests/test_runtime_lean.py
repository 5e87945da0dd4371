"""memory="lean": the graph rewrite (structure and numbers) and its memory effect."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tiedonnx.runtime import load
from tiedonnx.runtime.bench import session_memory_mb
from tiedonnx.runtime.lean import lean_rewrite
from tests.graphs import REFERENCE_ATOL, save, tied_ae, tied_reference

# Measured: lean (Gemm transB over W) and fast (folded transpose + MatMul)
# outputs differ by at most 6e-8 on these graphs (summation order); the bound
# leaves room for other CPUs' kernels.
LEAN_VS_FAST_ATOL = 1e-6


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_rewrite_reads_the_tied_initializer_directly():
    model, report = lean_rewrite(tied_ae())
    assert "Transpose" not in _ops(model)
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert [(list(g.input), helper.get_attribute_value(g.attribute[0])) for g in gemm] == [(["h", "W"], 1)]
    assert _ops(model).count("MatMul") == 1  # the encoder's MatMul is untouched
    assert [i.name for i in model.graph.initializer] == ["W", "b1", "b2"]
    assert report.rewritten == ["dec"] and report.removed_transposes == ["tie"]
    assert report.kept_transposes == [] and report.disabled_optimizers == []
    onnx.checker.check_model(model, full_check=True)


def test_rewrite_is_idempotent():
    once, _ = lean_rewrite(tied_ae())
    before = once.SerializeToString()
    twice, report = lean_rewrite(once)
    assert twice.SerializeToString() == before
    assert report.rewritten == [] and report.removed_transposes == []


def test_gemm_over_a_transpose_flips_trans_b():
    model = tied_ae()
    model.graph.node[4].op_type = "Gemm"  # Gemm(h, W__T), transB=0: same maths as the MatMul
    rewritten, report = lean_rewrite(model)
    gemm = [n for n in rewritten.graph.node if n.op_type == "Gemm"]
    assert [list(g.input) for g in gemm] == [["h", "W"]]
    assert [helper.get_attribute_value(a) for a in gemm[0].attribute if a.name == "transB"] == [1]
    assert report.rewritten == ["dec"]


def test_lean_and_fast_give_the_same_outputs(tmp_path, rng):
    path = save(tied_ae(32, 8), tmp_path / "ae.onnx")
    x = rng.random((7, 32), dtype=np.float32)
    fast = load(path, providers="cpu", memory="fast").run(x)["y"]
    lean = load(path, providers="cpu", memory="lean")
    assert lean.memory == "lean"
    np.testing.assert_allclose(lean.run(x)["y"], fast, atol=LEAN_VS_FAST_ATOL)
    np.testing.assert_allclose(fast, tied_reference(x, 32, 8), atol=REFERENCE_ATOL)


def _opset12(model):
    """Opset 12: before Reshape/Slice/Concat took every form the rank-3 rewrite writes (it needs 13)."""
    model.opset_import[0].version = 12
    return model


def test_a_transpose_it_cannot_rewrite_is_kept_and_not_folded(tmp_path, rng, caplog):
    model, report = lean_rewrite(_opset12(tied_ae(rank=3)))  # rank-3 h below opset 13: no Gemm
    assert _ops(model).count("Transpose") == 1
    assert report.kept_transposes == ["tie"] and report.rewritten == []
    assert report.disabled_optimizers == ["ConstantFolding"]
    path = save(_opset12(tied_ae(rank=3)), tmp_path / "ae3.onnx")
    x = rng.random((2, 2, 8), dtype=np.float32)
    fast = load(path, providers="cpu").run(x)["y"]
    with caplog.at_level("WARNING", logger="tiedonnx.runtime.lean"):
        lean = load(path, providers="cpu", memory="lean").run(x)["y"]
    assert "transpose tie kept; it runs on every call" in caplog.text
    np.testing.assert_allclose(lean, fast, atol=LEAN_VS_FAST_ATOL)


def test_rank3_projection_becomes_a_flat_gemm_over_the_stored_table(tmp_path, rng):
    # A language model's logits: MatMul(h[batch, sequence, hidden], Transpose(E)).
    model, report = lean_rewrite(tied_ae(rank=3))
    assert "Transpose" not in _ops(model) and report.rewritten == ["dec"] and not report.kept_transposes
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].input[1] == "W"
    assert [helper.get_attribute_value(a) for a in gemm[0].attribute if a.name == "transB"] == [1]
    assert _ops(model).count("Reshape") == 2 and report.disabled_optimizers == []
    onnx.checker.check_model(model, full_check=True)
    path = save(tied_ae(rank=3), tmp_path / "ae3.onnx")
    fast, lean = load(path, providers="cpu"), load(path, providers="cpu", memory="lean")
    for shape in [(2, 2, 8), (5, 2, 8), (1, 2, 8)]:
        x = rng.random(shape, dtype=np.float32)
        got = lean.run(x)["y"]
        assert got.shape == shape
        np.testing.assert_allclose(got, fast.run(x)["y"], atol=LEAN_VS_FAST_ATOL)
        np.testing.assert_allclose(got, tied_reference(x), atol=REFERENCE_ATOL)
    again, second = lean_rewrite(model)  # idempotent
    assert second.rewritten == [] and _ops(again) == _ops(model)


def test_transpose_that_is_also_a_graph_output_stays():
    model = tied_ae()
    model.graph.output.append(helper.make_tensor_value_info("W__T", onnx.TensorProto.FLOAT, [3, 8]))
    rewritten, report = lean_rewrite(model)
    assert "Transpose" in _ops(rewritten) and report.kept_transposes == ["tie"]
    assert report.rewritten == ["dec"]


def test_lean_keeps_one_copy_of_the_tie_in_memory(tmp_path):
    # 2048x1024 float32 tie = 8 MiB. Fresh processes, RSS growth over load + one run.
    path = save(tied_ae(2048, 1024), tmp_path / "big.onnx")
    fast = session_memory_mb(path, memory="fast")
    lean = session_memory_mb(path, memory="lean")
    # Fast holds W and its folded transpose; lean holds W once. Measured here
    # (onnxruntime 1.32, CPU): 16.05 vs 8.04 MiB, i.e. 2 ties vs 1.
    assert fast > 14, fast
    assert lean < 0.6 * fast, (lean, fast)


def test_lean_keeps_one_copy_of_a_rank3_projection_in_memory(tmp_path):
    # The LM case: the decoder reads [batch, 2, hidden] through Reshape -> Gemm(transB=1).
    path = save(tied_ae(2048, 1024, rank=3), tmp_path / "big3.onnx")
    fast = session_memory_mb(path, memory="fast")
    lean = session_memory_mb(path, memory="lean")
    # Measured (onnxruntime 1.32, CPU): fast 16.04, lean 8.03 MiB (8.1 before, with the transpose run per call).
    assert fast > 14, fast
    assert lean < 0.6 * fast, (lean, fast)


def _int8(model):
    from tiedonnx.runtime.graph.quantize import to_precision

    return to_precision(model, "int8")


def test_int8_transpose_is_folded_and_pre_packed(tmp_path, rng, caplog):
    import onnxruntime as ort

    with caplog.at_level("INFO", logger="tiedonnx.runtime.lean"):
        model, report = lean_rewrite(_int8(tied_ae(32, 8)))
    assert report.rewritten == [] and report.kept_transposes == report.kept_integer != []
    assert report.shared == [] and report.prepacking
    assert report.session_config == {} and report.disabled_optimizers == []
    assert "are folded and pre-packed" in caplog.text
    # What the session runs: no Transpose left on the per-call path.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert "Transpose" not in _ops(onnx.load(tmp_path / "optimized.onnx"))
    path = save(_int8(tied_ae(32, 8)), tmp_path / "ae_int8.onnx")
    x = rng.random((5, 32), dtype=np.float32)
    fast = load(path, providers="cpu", memory="fast").run(x)["y"]
    np.testing.assert_array_equal(load(path, providers="cpu", memory="lean").run(x)["y"], fast)


def test_a_float_tie_read_directly_is_listed_and_other_weights_stay_pre_packed():
    model, rewritten = lean_rewrite(tied_ae())
    # W is read by the encoder's MatMul and the decoder's Gemm(transB=1): listed as a graph input,
    # which onnxruntime neither folds nor pre-packs, so pre-packing stays on for everything else.
    assert rewritten.listed == ["W"] and rewritten.shared == [] and rewritten.prepacking
    assert rewritten.session_config == {}
    assert "W" in {i.name for i in model.graph.input}
    _, kept = lean_rewrite(_opset12(tied_ae(rank=3)))  # a float transpose runs per call: one copy at rest
    assert kept.kept_integer == [] and not kept.prepacking
    assert kept.session_config == {"session.disable_prepacking": "1"}


def test_lean_int8_holds_no_more_than_fast(tmp_path):
    # 2048x1024 int8 tie = 2 MiB. Measured (onnxruntime 1.32, CPU): fast 4.0 MiB
    # (two packed copies), lean 4.0 MiB; the former lean graph (Transpose per
    # call, no pre-packing) also ended at two copies after one run.
    path = save(_int8(tied_ae(2048, 1024)), tmp_path / "big_int8.onnx")
    fast = session_memory_mb(path, memory="fast")
    lean = session_memory_mb(path, memory="lean")
    assert fast > 3, fast
    assert lean <= fast + 0.5, (lean, fast)


def test_fp16_tie_is_read_through_its_cast(tmp_path, rng):
    from tiedonnx.runtime.graph.quantize import to_precision

    model, report = lean_rewrite(to_precision(tied_ae(32, 8), "fp16"))
    assert report.rewritten == ["dec"] and report.removed_transposes and report.kept_transposes == []
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    cast_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    assert [cast_of[g.input[1]] for g in gemm] == ["W__fp16"]  # the stored float16 tie
    assert "Transpose" not in _ops(model) and report.session_config == {"session.disable_prepacking": "1"}
    path = save(to_precision(tied_ae(32, 8), "fp16"), tmp_path / "ae16.onnx")
    x = rng.random((7, 32), dtype=np.float32)
    fast = load(path, providers="cpu", memory="fast").run(x)["y"]
    np.testing.assert_allclose(load(path, providers="cpu", memory="lean").run(x)["y"], fast,
                               atol=LEAN_VS_FAST_ATOL)


def test_lean_keeps_one_float32_copy_of_an_fp16_tie(tmp_path):
    from tiedonnx.runtime.graph.quantize import to_precision

    # 2048x1024 tie: 4 MiB in the file, 8 MiB once cast. Measured on the 4096x2048
    # tie (onnxruntime 1.32, CPU): fast 64.0, lean 32.1 MiB (64.1 before lean read
    # the tie through its Cast).
    path = save(to_precision(tied_ae(2048, 1024), "fp16"), tmp_path / "big16.onnx")
    fast = session_memory_mb(path, memory="fast")
    lean = session_memory_mb(path, memory="lean")
    assert fast > 14, fast
    assert lean < 0.6 * fast, (lean, fast)
