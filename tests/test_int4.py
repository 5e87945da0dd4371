"""int4: one 4-bit tensor per tie, read by every use (MatMulNBits, GatherBlockQuantized, DequantizeNBits).

Graphs are built by hand (``tiedonnx.runtime.testing`` and ``onnx.helper``);
two tests at the end export a Keras model. Values are checked against
``reference_weight``, an unpacking written here from onnxruntime's
MatMulNBits specification, not from the code under test.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.graph.inspect import inspect_model
from tiedonnx.runtime.graph.int4_blocks import find_4bit_copies, quantize_blocks
from tiedonnx.runtime.graph.metadata import read_ties
from tiedonnx.runtime.graph.quantize import read_precision, to_precision
from tiedonnx.runtime.testing import tied_autoencoder, tied_autoencoder_reference, tied_autoencoder_weights

F, H = 64, 32  # the AE kernel: features x hidden
SCALE = 0.2  # weights N(0, 0.2^2): pre-activations of a trained-AE size, not saturated sigmoids
# Measured: onnxruntime vs the float64 numpy model on the same dequantized
# weights differ by at most 6e-8 (sigmoid AE) and 1.2e-6 (logits of |y| ~ 20).
SAME_WEIGHTS_ATOL = 1e-5
# Measured: the 64-32 AE (SCALE) at block 32 differs from its fp32 model by at
# most 0.042 asymmetric, 0.049 symmetric over 5 input draws (sigmoid outputs).
TINY_INT4_ATOL = 0.1
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def reference_weight(graph: onnx.GraphProto, packed_name: str, k: int) -> np.ndarray:
    """Float [N, K] of a MatMulNBits weight, from its spec: low nibble first, zero point 8 if absent."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == packed_name)
    packed = inits[packed_name]
    scales = inits.get(node.input[2])
    if scales is None:  # float16 scales behind a Cast
        cast = next(n for n in graph.node if n.output[0] == node.input[2])
        scales = inits[cast.input[0]]
    n, blocks, half = packed.shape
    codes = np.zeros((n, blocks, 2 * half))
    codes[..., 0::2], codes[..., 1::2] = packed & 15, packed >> 4
    zero = np.full((n, blocks), 8.0)
    if len(node.input) > 3 and node.input[3]:
        zp = inits[node.input[3]]
        both = np.zeros((n, 2 * zp.shape[1]))
        both[:, 0::2], both[:, 1::2] = zp & 15, zp >> 4
        zero = both[:, :blocks]
    values = (codes - zero[..., None]) * scales.astype(np.float64)[..., None]
    return values.reshape(n, -1)[:, :k]


def session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, prepack: bool = True):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def by_op(graph: onnx.GraphProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type == op]


def packed_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [i for i in graph.initializer if i.data_type == TensorProto.UINT8 and len(i.dims) == 3]


def float_copies(graph: onnx.GraphProto, shape: tuple[int, int]) -> list[str]:
    """Float initializers of the kernel's shape or its transpose."""
    return [i.name for i in graph.initializer if sorted(i.dims) == sorted(shape)
            and i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)]


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("untied", [False, True], ids=["tied_input", "exporter_copy_input"])
def test_ae_tie_is_one_4bit_tensor_read_by_both_uses(tmp_path, rng, untied, symmetric):
    path = tmp_path / "ae.int4.onnx"
    model = tied_autoencoder(F, H, untied=untied, weight_scale=SCALE)
    onnx.save(to_precision(model, "int4", symmetric=symmetric), path)
    saved = onnx.load(path)
    onnx.checker.check_model(saved, full_check=True)
    graph = saved.graph

    (packed,) = packed_initializers(graph)
    assert list(packed.dims) == [F, 1, 16]  # W's rows, one block of 32 along the hidden axis
    assert float_copies(graph, (F, H)) == []  # no fp32 (or fp16) copy of W left
    names = {i.name for i in graph.initializer}
    assert not any(n.op_type in ("Transpose", "MatMul") and set(n.input) & names for n in graph.node)
    (nbits,) = by_op(graph, "MatMulNBits")
    assert nbits.input[1] == packed.name
    assert {a.name: helper.get_attribute_value(a) for a in nbits.attribute} == {
        "K": H, "N": F, "bits": 4, "block_size": 32}
    assert (len(nbits.input) == 4) == (not symmetric)  # zero points only when asymmetric
    (read,) = by_op(graph, "DequantizeNBits")
    assert (read.domain, read.input[0]) == ("tiedonnx", packed.name)
    (tie,) = read_ties(saved)
    assert (tie.initializer, tie.source) == (packed.name, "W")
    assert [t["status"] for t in inspect_model(saved).ties] == ["ok"]
    assert read_precision(saved) == "int4"

    x = rng.random((7, F), dtype=np.float32)
    y = session(saved).run(None, {"x": x})[0]
    w = reference_weight(graph, packed.name, H)  # the stored rows are W's rows: [F, H]
    weights = tied_autoencoder_weights(F, H, weight_scale=SCALE)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = sig(sig(x @ w + weights["b1"]) @ w.T + weights["b2"])
    assert np.abs(y - expected).max() <= SAME_WEIGHTS_ATOL
    assert np.abs(y - tied_autoencoder_reference(x, F, H, weight_scale=SCALE)).max() <= TINY_INT4_ATOL


def two_uses(features: int = F, hidden: int = H) -> onnx.ModelProto:
    """``enc = x @ W`` and ``dec = h @ Transpose(W)``: the AE's two uses without biases or activations."""
    w = tied_autoencoder_weights(features, hidden, weight_scale=SCALE)["W"]
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Transpose", ["W"], ["W__T"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "W"], ["enc"]), helper.make_node("MatMul", ["h", "W__T"], ["dec"])]
    graph = helper.make_graph(
        nodes, "two_uses",
        [vi("x", TensorProto.FLOAT, ["n", features]), vi("h", TensorProto.FLOAT, ["m", hidden])],
        [vi("enc", TensorProto.FLOAT, ["n", hidden]), vi("dec", TensorProto.FLOAT, ["m", features])],
        [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("level", LEVELS, ids=["disable_all", "basic", "extended", "all"])
def test_both_uses_read_bit_identical_weights(level):
    """Identity inputs make each use output its own weight: MatMulNBits and the float read agree bitwise."""
    model = to_precision(two_uses(), "int4")
    enc, dec = session(model, level).run(None, {"x": np.eye(F, dtype=np.float32),
                                                "h": np.eye(H, dtype=np.float32)})
    (packed,) = packed_initializers(model.graph)
    assert np.array_equal(enc, dec.T)
    assert np.array_equal(enc, reference_weight(model.graph, packed.name, H).astype(np.float32))


def tied_lm(vocab: int, dim: int) -> onnx.ModelProto:
    """``emb = Gather(E, ids)`` and ``logits = h @ Transpose(E)``: an LM's tied embedding, by hand."""
    e = np.random.default_rng(1).standard_normal((vocab, dim)).astype(np.float32)
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], axis=0),
             helper.make_node("Transpose", ["E"], ["E__T"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "E__T"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tied_lm",
        [vi("ids", TensorProto.INT64, ["b", "t"]), vi("h", TensorProto.FLOAT, ["b", dim])],
        [vi("emb", TensorProto.FLOAT, ["b", "t", dim]), vi("logits", TensorProto.FLOAT, ["b", vocab])],
        [numpy_helper.from_array(e, "E")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# Measured (V=256, random E and h, 4 draws of h): fp32 and int4 logits agree on
# the argmax for 84%-87% of 256 rows at D=64, 84%-93% at D=48; random logits
# have many near-ties (chance level is 0.4%). A wrong layout scores near chance.
LM_ARGMAX_AGREEMENT = 0.75
# Measured file size int4 / fp32: 0.159 at D=64, 0.216 at D=48 (padded blocks).
LM_SIZE_RATIO = 0.25


@pytest.mark.parametrize("dim", [64, 48], ids=["whole_blocks", "padded_block"])
def test_lm_gather_and_output_projection_share_one_tensor(tmp_path, rng, dim):
    vocab = 256
    fp32 = tied_lm(vocab, dim)
    path = tmp_path / "lm.int4.onnx"
    onnx.save(to_precision(fp32, "int4"), path)
    saved = onnx.load(path)
    onnx.checker.check_model(saved, full_check=True)
    graph = saved.graph

    (packed,) = packed_initializers(graph)
    assert float_copies(graph, (vocab, dim)) == []
    (nbits,) = by_op(graph, "MatMulNBits")
    (gather,) = by_op(graph, "GatherBlockQuantized")
    (reshape,) = by_op(graph, "Reshape")
    assert nbits.input[1] == packed.name == reshape.input[0] and gather.input[0] == reshape.output[0]
    assert gather.input[2:] == nbits.input[2:]  # scales and zero points stored once too
    assert by_op(graph, "DequantizeNBits") == [] and by_op(graph, "Gather") == []
    assert len(by_op(graph, "Slice")) == (dim % 32 != 0)  # padded rows are trimmed after the lookup
    assert [t["status"] for t in inspect_model(saved).ties] == ["ok"]

    ids = np.array([[0, 5, 255], [7, 7, 1]])
    h = rng.standard_normal((vocab, dim)).astype(np.float32)
    emb, logits = session(saved).run(None, {"ids": ids, "h": h})
    e = reference_weight(graph, packed.name, dim)
    assert np.array_equal(emb, e[ids].astype(np.float32))
    assert np.abs(logits - h @ e.T).max() <= SAME_WEIGHTS_ATOL * np.abs(logits).max()
    exact = session(fp32).run(None, {"ids": ids, "h": h})[1]
    assert np.mean(exact.argmax(1) == logits.argmax(1)) >= LM_ARGMAX_AGREEMENT
    assert path.stat().st_size <= LM_SIZE_RATIO * len(fp32.SerializeToString())


def test_untied_matmul_weights_become_matmul_nbits():
    w = tied_autoencoder_weights(F, H, weight_scale=SCALE)["W"]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])], "mlp",
        [vi("x", TensorProto.FLOAT, ["n", F])], [vi("y", TensorProto.FLOAT, ["n", F])],
        [numpy_helper.from_array(w, "W1"), numpy_helper.from_array(np.ascontiguousarray(w[::-1].T), "W2")])
    model = to_precision(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                         "int4")
    out = model.graph
    assert [n.op_type for n in out.node if n.op_type != "Cast"] == ["MatMulNBits", "Relu", "MatMulNBits"]
    assert len(packed_initializers(out)) == 2 and float_copies(out, (F, H)) == []
    assert read_ties(model) == [] and list(model.functions) == []
    assert find_4bit_copies(out) == []  # two weights of one shape are not copies of each other


def test_int4_runs_alike_at_every_level_and_memory_mode(tmp_path, rng):
    from tiedonnx.runtime import load

    path = tmp_path / "ae.int4.onnx"
    onnx.save(to_precision(tied_autoencoder(F, H, weight_scale=SCALE), "int4"), path)
    model = onnx.load(path)
    x = rng.random((5, F), dtype=np.float32)
    outputs = [session(model, level, prepack).run(None, {"x": x})[0] for level in LEVELS for prepack in (True, False)]
    outputs += [load(str(path), providers="cpu", memory=memory).run(x)["y"] for memory in ("fast", "lean")]
    for y in outputs[1:]:  # float16 scales reach MatMulNBits through a Cast, folded or not
        assert np.abs(y - outputs[0]).max() <= SAME_WEIGHTS_ATOL


def test_find_4bit_copies_reads_through_4bit_tensors():
    """Two 4-bit copies in different layouts (onnxruntime's untied file), and an fp32 original left over."""
    w = tied_autoencoder_weights(F, H, weight_scale=SCALE)["W"]
    enc = quantize_blocks(np.ascontiguousarray(w.T), block_size=32, symmetric=False)  # blocks along F
    dec = quantize_blocks(w, block_size=32, symmetric=False)  # blocks along H
    vi = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(a, n) for n, a in [("P_enc", enc.packed), ("S_enc", enc.scales),
                                                        ("Z_enc", enc.zero_points), ("P_dec", dec.packed),
                                                        ("S_dec", dec.scales), ("Z_dec", dec.zero_points)]]
    nodes = [helper.make_node("MatMulNBits", ["x", "P_enc", "S_enc", "Z_enc"], ["h"], domain="com.microsoft",
                              K=F, N=H, bits=4, block_size=32),
             helper.make_node("MatMulNBits", ["h", "P_dec", "S_dec", "Z_dec"], ["y"], domain="com.microsoft",
                              K=H, N=F, bits=4, block_size=32)]
    graph = helper.make_graph(nodes, "untied", [vi("x", TensorProto.FLOAT, ["n", F])],
                              [vi("y", TensorProto.FLOAT, ["n", F])], inits)
    (dup,) = find_4bit_copies(graph)
    assert {dup.source, dup.copy} == {"P_enc", "P_dec"} and dup.relation == "transpose"

    tied = to_precision(tied_autoencoder(F, H, weight_scale=SCALE), "int4")
    assert find_4bit_copies(tied.graph) == []
    tied.graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), "W_left_over"))
    (dup,) = find_4bit_copies(tied.graph)
    assert (dup.copy, dup.relation) == ("W_left_over", "identity")


def test_options_are_checked_together():
    model = tied_autoencoder(F, H)
    with pytest.raises(UsageError, match=r"Unsupported int4 block size. Received: block_size=24. "
                                         r"Use one of 16, 32, 64, 128"):
        to_precision(model, "int4", block_size=24)
    with pytest.raises(UsageError, match=r"block_size applies to int4 only.*symmetric applies to int4 "
                                         r"only. Received: symmetric=True with precision='int8'"):
        to_precision(model, "int8", block_size=32, symmetric=True)
    with pytest.raises(UsageError, match="per_channel applies to int8 only"):
        to_precision(model, "int4", per_channel=True)


def test_int4_again_is_a_no_op_and_int8_of_it_is_refused():
    q = to_precision(tied_autoencoder(F, H), "int4")
    again = to_precision(q, "int4")
    assert [i.name for i in again.graph.initializer] == [i.name for i in q.graph.initializer]
    with pytest.raises(UsageError, match="already stored as int4"):
        to_precision(q, "int8")


def test_accuracy_level_4_is_set_on_every_matmul_nbits_and_computes_the_same_function(rng):
    fp32 = tied_lm(256, 64)  # a lookup and a tied projection
    plain, fast = to_precision(fp32, "int4"), to_precision(fp32, "int4", accuracy_level=4)
    levels = [{a.name: helper.get_attribute_value(a) for a in n.attribute}.get("accuracy_level")
              for n in by_op(fast.graph, "MatMulNBits")]
    assert levels == [4] and all("accuracy_level" not in {a.name for a in n.attribute}
                                 for n in by_op(plain.graph, "MatMulNBits"))
    ids, h = np.array([[0, 5, 255]]), rng.standard_normal((256, 64)).astype(np.float32)
    emb0, logits0 = session(plain).run(None, {"ids": ids, "h": h})
    emb4, logits4 = session(fast).run(None, {"ids": ids, "h": h})
    assert np.array_equal(emb0, emb4)  # the lookup does not depend on the level
    # Level 4 quantizes each block of h to int8. Measured over 5 draws: 0.20-0.24 max abs (0.2-0.7% of the
    # largest logit), against 3.0-3.4 between level 0 and the fp32 model: a small part of the int4 error.
    assert np.abs(logits4 - logits0).max() <= 0.02 * np.abs(logits0).max()
    with pytest.raises(UsageError, match="Use 0 .float activations, the default. or 4"):
        to_precision(fp32, "int4", accuracy_level=2)
    with pytest.raises(UsageError, match="accuracy_level applies to int4 only"):
        to_precision(fp32, "int8", accuracy_level=4)


def test_export_refuses_accuracy_level_4_in_an_ort_file(tmp_path):
    from tiedonnx.converter.export import export
    from tests.models import dense_ae

    with pytest.raises(UsageError, match="cannot go into an ORT-format file"):
        export(dense_ae(), tmp_path / "ae.onnx", precision="int4", accuracy_level=4, ort=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_quantize_int4_flags(tmp_path, capsys):
    from tiedonnx.runtime.cli import main

    source, target = tmp_path / "ae.onnx", tmp_path / "ae.int4.onnx"
    onnx.save(tied_autoencoder(F, H), source)
    assert main(["quantize", str(source), "-o", str(target), "--precision", "int4",
                 "--block-size", "16", "--symmetric"]) == 0
    assert "int4" in capsys.readouterr().out
    (nbits,) = by_op(onnx.load(target).graph, "MatMulNBits")
    assert {a.name: helper.get_attribute_value(a) for a in nbits.attribute}["block_size"] == 16
    assert len(nbits.input) == 3  # symmetric: no zero points
    assert main(["quantize", str(source), "-o", str(tmp_path / "b.onnx"), "--precision", "int8",
                 "--block-size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block_size applies to int4 only" in err[0]
    assert not (tmp_path / "b.onnx").exists()


def test_cli_export_passes_the_int4_flags(tmp_path, monkeypatch):
    import tiedonnx.converter.export as export_module
    from tiedonnx.runtime.cli import main

    seen = {}

    def fake_export(model, path, **kwargs):
        seen.update(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(export_module, "export", fake_export)
    (tmp_path / "m.keras").write_bytes(b"never read: the fake export stops first")
    assert main(["export", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.onnx"), "--precision", "int4",
                 "--block-size", "64", "--no-symmetric", "--rounding", "search", "--int8-ties",
                 "--accuracy-level", "4"]) == 2
    assert (seen["precision"], seen["block_size"], seen["symmetric"]) == ("int4", 64, False)
    assert (seen["rounding"], seen["int8_ties"], seen["accuracy_level"]) == ("search", True, 4)


def test_cli_export_refuses_int4_options_at_another_precision(tmp_path, capsys):
    from tiedonnx.runtime.cli import main

    (tmp_path / "m.keras").write_bytes(b"never read: the option check comes first")
    assert main(["export", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.onnx"), "--precision", "int8",
                 "--rounding", "search"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rounding" in err[0] and "int4" in err[0], err
    assert not (tmp_path / "m.onnx").exists()


def test_export_takes_the_int4_rounding_and_int8_ties_options(tmp_path, rng):
    from tests.models import dense_ae
    from tiedonnx.converter.export import export

    model = dense_ae(F, H)
    x = rng.random((64, F), dtype=np.float32)
    files = {}
    for label, options in (("rtn", {}), ("search", {"rounding": "search"}), ("int8_ties", {"int8_ties": True})):
        files[label] = onnx.load(export(model, tmp_path / f"{label}.onnx", precision="int4", block_size=16,
                                        **options).path)  # verify=True: each passes Keras parity
    stored = {k: [numpy_helper.to_array(i) for i in m.graph.initializer if i.name == read_ties(m)[0].initializer][0]
              for k, m in files.items()}
    # Searched scales round some weights to other codes than round-to-nearest (same packed shape).
    assert stored["search"].shape == stored["rtn"].shape and not np.array_equal(stored["search"], stored["rtn"])
    # --int8-ties: the tie is one int8 tensor (F x H values), not 4-bit packed bytes.
    assert stored["int8_ties"].dtype == np.int8 and stored["int8_ties"].size == F * H
    for m in files.values():
        y = session(m).run(None, {m.graph.input[0].name: x})[0]
        assert np.abs(y - np.asarray(model(x))).max() <= KERAS_INT4_ATOL


# Measured: the 64-32 Keras AE (random init, sigmoid) exported at int4 block 16
# differs from Keras by 0.015 to 0.018 (max abs, 64 uniform rows, 4 seeds).
KERAS_INT4_ATOL = 0.05


def test_export_int4_stores_the_keras_tie_once_and_the_proof_reads_4bit(tmp_path, rng):
    from tests.models import dense_ae
    from tiedonnx.converter.errors import ConversionError
    from tiedonnx.converter.export import _prove_invariants, export

    model = dense_ae(F, H)
    path = tmp_path / "ae.int4.onnx"
    report = export(model, path, precision="int4", block_size=16, verify=False)
    saved = onnx.load(path)
    (packed,) = packed_initializers(saved.graph)
    assert float_copies(saved.graph, (F, H)) == []
    assert [t.initializer for t in report.ties] == [packed.name] and report.precision == "int4"
    assert read_ties(saved)[0].keras["tied_to"] == "enc"
    x = rng.random((64, F), dtype=np.float32)
    y = session(saved).run(None, {saved.graph.input[0].name: x})[0]
    assert np.abs(y - np.asarray(model(x))).max() <= KERAS_INT4_ATOL

    kernel = model.get_layer("enc").kernel.numpy()
    saved.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(kernel.T), "kernel_copy"))
    with pytest.raises(ConversionError, match="a 4-bit weight is stored again.*kernel_copy"):
        _prove_invariants(saved)


def test_scales_below_float16_precision_stay_float32(rng):
    """Scales of 1e-6 (weights N(0, 1e-5)) would be float16 subnormals: they are stored as float32."""
    small = to_precision(tied_autoencoder(F, H, weight_scale=1e-5), "int4")
    normal = to_precision(tied_autoencoder(F, H, weight_scale=SCALE), "int4")
    scale_types = [next(i.data_type for i in m.graph.initializer if i.name == read_ties(m)[0].scale)
                   for m in (small, normal)]
    assert scale_types == [TensorProto.FLOAT, TensorProto.FLOAT16]
    assert by_op(small.graph, "Cast") == [] and len(by_op(normal.graph, "Cast")) == 1
    (packed,) = packed_initializers(small.graph)
    x = rng.random((3, F), dtype=np.float32)
    w = reference_weight(small.graph, packed.name, H)
    b = tied_autoencoder_weights(F, H, weight_scale=1e-5)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    y = session(small).run(None, {"x": x})[0]
    assert np.abs(y - sig(sig(x @ w + b["b1"]) @ w.T + b["b2"])).max() <= SAME_WEIGHTS_ATOL


def test_a_4bit_tensor_in_the_wrong_layout_is_caught():
    """A square weight has the same shape transposed: only the values tell the layouts apart."""
    from tiedonnx.runtime.errors import ConversionError

    w = tied_autoencoder_weights(32, 32, weight_scale=SCALE)["W"]
    blocks = quantize_blocks(w, block_size=16, symmetric=False)
    blocks.check_faithful(w, what="W")
    with pytest.raises(ConversionError, match="W: the 4-bit tensor is not a rounding of its source"):
        blocks.check_faithful(np.ascontiguousarray(w.T), what="W")


def attention_like(w5: np.ndarray, w2: np.ndarray, copy: bool) -> onnx.ModelProto:
    """What tf2onnx leaves for EinsumDense kernels: ``Gemm(x, Reshape(W5, [-1, prod(W5.shape[3:])]))``
    with the shape computed over constants, and ``Gemm(h, W2, transB=1)`` with no bias. With ``copy``
    ``W2`` equals the 2-D view of ``W5`` transposed (seeded clone initializers do that)."""
    mk, vi = helper.make_node, helper.make_tensor_value_info
    k, n = w5.shape[2], w5.shape[3] * w5.shape[4]
    inits = [numpy_helper.from_array(w5, "W5"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.array(w5.shape, np.int64), "w5_shape"),
             numpy_helper.from_array(np.array([3, 4], np.int64), "tail"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [mk("Gather", ["w5_shape", "tail"], ["dims"]), mk("ReduceProd", ["dims"], ["cols"], keepdims=1),
             mk("Concat", ["minus_one", "cols"], ["view_shape"], axis=0),
             mk("Reshape", ["W5", "view_shape"], ["view"]),
             mk("Gemm", ["x", "view"], ["h"], alpha=1.0, beta=0.0, transA=0, transB=0),
             mk("Tanh", ["h"], ["t"]),
             mk("Gemm", ["t", "W2"], ["y"], alpha=1.0, beta=0.0, transA=0, transB=1)]
    graph = helper.make_graph(nodes, "attn", [vi("x", TensorProto.FLOAT, ["b", k])],
                              [vi("y", TensorProto.FLOAT, ["b", w2.shape[0]])], inits)
    assert n == w2.shape[1] and (not copy or w2.shape == (n, k))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("copy", [False, True], ids=["distinct", "equal_view"])
def test_reshaped_einsum_and_gemm_weights_become_matmul_nbits(rng, copy):
    """A rank-5 kernel read through a computed 2-D Reshape, and a bias-free Gemm weight, are 4-bit;
    a weight equal to another's view is stored once."""
    w5 = (rng.standard_normal((1, 1, 64, 2, 32)) * SCALE).astype(np.float32)
    view = w5.reshape(64, 64)
    w2 = np.ascontiguousarray(view.T) if copy else (rng.standard_normal((48, 64)) * SCALE).astype(np.float32)
    fp32 = attention_like(w5, w2, copy)
    model = to_precision(fp32, "int4")
    out = model.graph
    assert [n.op_type for n in out.node if n.op_type != "Cast"] == ["MatMulNBits", "Tanh", "MatMulNBits"]
    assert len(packed_initializers(out)) == (1 if copy else 2)
    assert [i.name for i in out.initializer if i.data_type == TensorProto.FLOAT and i.dims and
            np.prod(i.dims) >= 64] == []  # no fp32 copy of a quantized weight, no rank-5 leftover
    assert find_4bit_copies(out) == []
    first, second = (reference_weight(out, n.input[1], 64) for n in by_op(out, "MatMulNBits"))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    got = session(model).run(None, {"x": x})[0]
    assert np.abs(got - np.tanh(x @ first.T) @ second.T).max() <= SAME_WEIGHTS_ATOL  # reads its 4-bit weights
    assert np.abs(first.T - view).max() <= 0.6 * np.abs(view).max() / 7 and np.abs(second - w2).max() <= (
        0.6 * np.abs(w2).max() / 7)  # each a rounding of its own source, in its own layout
    want = session(fp32).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 0.2 * np.abs(want).max()  # measured 0.06x to 0.1x (K=64, 2 layers)


def test_a_reshape_whose_view_is_not_a_matmul_weight_is_left_alone(rng):
    w5 = (rng.standard_normal((1, 1, 64, 2, 32)) * SCALE).astype(np.float32)
    model = attention_like(w5, (rng.standard_normal((48, 64)) * SCALE).astype(np.float32), False)
    gemm = next(n for n in model.graph.node if list(n.input[1:2]) == ["view"])
    gemm.input[0], gemm.input[1] = "view", "x"  # the view is now the activation side
    out = to_precision(model, "int4", short_names=False).graph
    assert "W5" in {i.name for i in out.initializer} and by_op(out, "Reshape")


# Issue 14's target: the int4 file at most 0.2x the fp32 tied file. Measured
# (`python scripts/bench_lm_int4.py`, onnxruntime 1.32, block 32, asymmetric, seed 0):
# tiny GPT-2 (vocab 1000, hidden 64, 2 layers) int4 / fp32 = 0.149 (0.474 with only the
# tie 4-bit, 0.295 with the attention kernels, then short names and the position
# embedding); max abs logits vs Keras 0.065, argmax agreement 0.667 on random weights.
GPT2_INT4_RATIO = 0.2


def test_tiny_gpt2_int4_has_no_float_weights_and_meets_the_size_target(tmp_path):
    import keras
    import keras_hub

    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import verify

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    lm = m.GPT2CausalLM(m.GPT2Backbone(vocabulary_size=1000, num_layers=2, hidden_dim=64, intermediate_dim=128,
                                       num_heads=2, max_sequence_length=64), preprocessor=None)
    export(lm, tmp_path / "fp32.onnx", verify=False)
    export(lm, tmp_path / "int4.onnx", precision="int4", verify=False)
    ratio = (tmp_path / "int4.onnx").stat().st_size / (tmp_path / "fp32.onnx").stat().st_size
    assert ratio <= GPT2_INT4_RATIO
    saved = onnx.load(tmp_path / "int4.onnx")
    floats = [list(i.dims) for i in saved.graph.initializer if i.data_type == TensorProto.FLOAT
              and np.prod(i.dims) >= 1024]
    assert floats == []  # the position embedding (read by Slice) is 4-bit too
    assert len(by_op(saved.graph, "MatMulNBits")) == 13  # 2 x (q, k, v, o, 2 FFN) + the tied projection
    verify(lm, saved, precision="int4")  # the int4 parity bound


def test_a_tie_between_equally_native_layouts_is_stored_with_the_least_padding():
    # W is [64, 40]; each use is native in one orientation (x @ W wants W^T
    # stored, h @ W^T wants W stored), so padding decides. Block 32: stored as W
    # ([64, 40], K = 40) the last block pads 24 values per row; stored as W^T
    # ([40, 64], K = 64) nothing pads. Expected: 40 rows of 2 blocks of 16 bytes.
    model = to_precision(two_uses(64, 40), "int4", block_size=32)
    (packed,) = packed_initializers(model.graph)
    assert list(packed.dims) == [40, 2, 16]


def test_int4_raises_the_ir_version_to_8_when_it_adds_a_function():
    # A Mul reading the weight has no 4-bit kernel: it reads it through the
    # model-local DequantizeNBits function, and model-local functions exist
    # from IR version 8 (onnx/docs/IR.md); this model starts at 7.
    w = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Mul", ["W", "W"], ["z"])], "g",
        [vi("x", TensorProto.FLOAT, ["n", 64])],
        [vi("y", TensorProto.FLOAT, ["n", 40]), vi("z", TensorProto.FLOAT, [64, 40])],
        [numpy_helper.from_array(w, "W")])
    model = to_precision(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=7),
                         "int4")
    assert [f.name for f in model.functions] == ["DequantizeNBits"]
    assert model.ir_version == 8
