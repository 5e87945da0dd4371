"""The language-model tie in int8: lookup ``Gather(E, ids)`` and projection ``h @ E^T`` on one int8 tensor.

Per-tensor, both uses share one scale. Per-channel, the projection's scales
run along its output channels, which are the rows of ``E``: the lookup must
scale each gathered row by that row's own scale. The hand-built graph gives
``E`` rows whose magnitudes span three decades, so a lookup dequantized with
one scale (or with another row's scale) misses the per-row bound below.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph import read_ties
from tiedonnx.runtime.graph.inspect import inspect_model, untied_bytes
from tiedonnx.runtime.graph.quantize import to_precision

VOCAB, HIDDEN = 50, 12


def _table(seed: int = 0, hidden: int = HIDDEN) -> np.ndarray:
    """E[VOCAB, hidden]: row i has magnitude 10**(-3 i / VOCAB), from 1 down to about 1e-3."""
    rng = np.random.default_rng(seed)
    magnitudes = 10.0 ** (-3.0 * np.arange(VOCAB) / VOCAB)
    return (rng.uniform(-1, 1, (VOCAB, hidden)) * magnitudes[:, None]).astype(np.float32)


def _lm_graph(table: np.ndarray) -> onnx.ModelProto:
    """ids[N] -> embedded = E[ids]; logits = (embedded + x) @ E^T: the KerasHub LM tie, as retie leaves it."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["embedded"], axis=0, name="lookup"),
        helper.make_node("Add", ["embedded", "x"], ["h"], name="residual"),
        helper.make_node("Transpose", ["E"], ["E_T"], perm=[1, 0], name="tie"),
        helper.make_node("MatMul", ["h", "E_T"], ["logits"], name="projection"),
    ]
    graph = helper.make_graph(
        nodes, "lm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", table.shape[1]])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["n", table.shape[1]]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", VOCAB])],
        [numpy_helper.from_array(table, "E")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, ids: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["embedded", "logits"], {"ids": ids, "x": x})


def _readers(graph: onnx.GraphProto, name: str) -> dict[str, int]:
    """Op type -> count of the nodes reading ``name`` directly or through a Transpose/Reshape of it."""
    todo, seen, found = [name], {name}, {}
    while todo:
        current = todo.pop()
        for node in graph.node:
            if current in node.input:
                found[node.op_type] = found.get(node.op_type, 0) + 1
                if node.op_type in ("Transpose", "Reshape"):
                    todo += [o for o in node.output if o not in seen]
                    seen.update(node.output)
    return found


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_lm_tie_is_one_int8_tensor_read_by_the_lookup_and_the_integer_projection(per_channel):
    q = to_precision(_lm_graph(_table()), "int8", per_channel=per_channel)
    graph = q.graph
    (tie,) = read_ties(q)
    stored = next(i for i in graph.initializer if i.name == tie.initializer)
    assert stored.data_type == TensorProto.INT8 and sorted(stored.dims) == [HIDDEN, VOCAB]
    # No other tensor of the table's size, in any dtype: one copy in the file.
    assert [i.name for i in graph.initializer if sorted(i.dims) == [HIDDEN, VOCAB]] == [stored.name]
    readers = _readers(graph, stored.name)
    assert readers.get("Gather") == 1 and readers.get("MatMulInteger") == 1, readers
    # The lookup never dequantizes the whole table (V x H work on every call).
    assert "DequantizeLinear" not in readers and "MatMul" not in readers, readers
    assert inspect_model(q).ties_ok
    # One transposed use: a plain exporter stores E and E^T.
    assert untied_bytes(q, 0) == VOCAB * HIDDEN


def test_per_channel_scales_follow_the_rows_of_the_table():
    q = to_precision(_lm_graph(_table()), "int8", per_channel=True)
    (tie,) = read_ties(q)
    scale = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == tie.scale))
    assert scale.shape == (VOCAB,)
    # Row 0 has magnitude 1, the last about 1e-3: the scales must span nearly as much.
    assert scale[0] / scale[-1] > 500


def test_per_channel_lookup_dequantizes_each_row_with_its_own_scale(rng):
    table = _table()
    ids = np.array([0, VOCAB - 1, 7, VOCAB // 2, VOCAB - 1, 3], np.int64)
    x = rng.normal(size=(len(ids), HIDDEN)).astype(np.float32)
    embedded, logits = _run(to_precision(_lm_graph(table), "int8", per_channel=True), ids, x)
    want = table[ids]
    # Symmetric 7-bit weights (reduce_range): a row's step is max|row| / 64, so rounding
    # moves a value by at most max|row| / 128. One scale for the table would move the
    # 1e-3 rows by up to 1/128, 8x their own magnitude.
    bound = np.abs(want).max(axis=1, keepdims=True) / 128 * 1.01
    assert np.all(np.abs(embedded - want) <= bound), np.abs(embedded - want).max(axis=1)
    # The projection: measured max abs 0.045 here (per-channel) against logits up to 4.0;
    # a lookup or projection on the wrong rows moves them by about their own size.
    ref = (want + x) @ table.T
    assert np.abs(logits - ref).max() <= 0.05 * max(1.0, np.abs(ref).max())


def test_per_tensor_lookup_is_dequantized_with_the_one_scale(rng):
    """Control for the per-row bound above: with one scale, the small rows miss it."""
    table = _table()
    ids = np.arange(VOCAB, dtype=np.int64)
    embedded, _ = _run(to_precision(_lm_graph(table), "int8", per_channel=False), ids,
                       np.zeros((VOCAB, HIDDEN), np.float32))
    bound = np.abs(table).max(axis=1, keepdims=True) / 128 * 1.01
    assert not np.all(np.abs(embedded - table) <= bound)
    # ...but every row is within the table's own step.
    assert np.abs(embedded - table).max() <= np.abs(table).max() / 128 * 1.01


@pytest.mark.slow  # builds and exports a KerasHub language model
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")
def test_keras_hub_lm_per_channel_int8_shares_one_tensor_and_passes_parity(tmp_path):
    keras = pytest.importorskip("keras")
    keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed")
    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import verify

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    lm = m.GPT2CausalLM(m.GPT2Backbone(vocabulary_size=97, num_layers=2, num_heads=2, hidden_dim=16,
                                       intermediate_dim=32, max_sequence_length=64), preprocessor=None)
    export(lm, tmp_path / "lm.onnx", verify=False)
    q = to_precision(onnx.load(tmp_path / "lm.onnx"), "int8", per_channel=True)
    (tie,) = [t for t in read_ties(q) if t.keras]
    stored = next(i for i in q.graph.initializer if i.name == tie.initializer)
    assert stored.data_type == TensorProto.INT8 and sorted(stored.dims) == [16, 97]
    assert [i.name for i in q.graph.initializer if sorted(i.dims) == [16, 97]] == [stored.name]
    readers = _readers(q.graph, stored.name)
    assert readers.get("Gather") == 1 and readers.get("MatMulInteger") == 1, readers
    assert "DequantizeLinear" not in readers, readers
    assert inspect_model(q).ties_ok
    # Measured max abs 0.0023 (per-tensor 0.0029) at logits below 1; the bound is 0.05.
    assert verify(lm, q, precision="int8").ok


def _int8_vnni_or_arm() -> bool:
    from tiedonnx.runtime.providers import cpu_has_int8_dot

    return cpu_has_int8_dot() is True


@pytest.mark.parametrize("reduce_range", [None, False], ids=["default_7bit", "full_range"])
def test_reduce_range_sets_the_weight_magnitudes_and_is_recorded(reduce_range):
    from tiedonnx.runtime.graph.quantize import FULL_RANGE_KEY

    q = to_precision(_lm_graph(_table()), "int8", reduce_range=reduce_range)
    (tie,) = read_ties(q)
    stored = numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == tie.initializer))
    # One per-tensor scale: the largest |w| maps to the largest magnitude: onnxruntime's
    # symmetric int8 range is [-64, 64] with reduce_range, [-127, 127] without.
    assert np.abs(stored.astype(int)).max() == (127 if reduce_range is False else 64)
    assert {p.key: p.value for p in q.metadata_props}.get(FULL_RANGE_KEY) == (
        "true" if reduce_range is False else None)


def test_reduce_range_is_int8_only_and_a_bool():
    from tiedonnx.runtime.errors import UsageError

    with pytest.raises(UsageError, match="reduce_range applies to int8 only"):
        to_precision(_lm_graph(_table()), "int4", reduce_range=False)
    with pytest.raises(UsageError, match="reduce_range must be True or False. Received: reduce_range='no'"):
        to_precision(_lm_graph(_table()), "int8", reduce_range="no")


@pytest.mark.slow  # builds and exports a KerasHub language model
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis")
@pytest.mark.skipif(not _int8_vnni_or_arm(), reason="full-range int8 weights saturate on x86 without VNNI")
def test_gemma_int8_passes_parity_per_channel_with_full_range_weights(tmp_path):
    """Tiny Gemma misses the int8 bound by default (0.14 at a peak of 1.55; the 7-bit weights);
    measured per-channel with full-range weights 0.060 against the bound of 0.077."""
    keras = pytest.importorskip("keras")
    keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed")
    from tiedonnx.converter.errors import ParityError
    from tiedonnx.converter.export import export

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    lm = m.GemmaCausalLM(m.GemmaBackbone(vocabulary_size=97, num_layers=2, hidden_dim=16, intermediate_dim=32,
                                         num_query_heads=2, num_key_value_heads=1, head_dim=8), preprocessor=None)
    with pytest.raises(ParityError, match=r"exceeds atol=0\.05.*per_channel=True.*reduce_range=False"):
        export(lm, tmp_path / "default.onnx", precision="int8")
    assert not (tmp_path / "default.onnx").exists()
    report = export(lm, tmp_path / "lm.onnx", precision="int8", per_channel=True, reduce_range=False)
    assert report.parity.ok and report.parity.max_abs < 0.077


def test_cli_reduce_range_flag(tmp_path, capsys):
    from tiedonnx.runtime.cli import main
    from tiedonnx.runtime.graph.quantize import FULL_RANGE_KEY

    source, target = tmp_path / "lm.onnx", tmp_path / "lm.int8.onnx"
    onnx.save(_lm_graph(_table()), source)
    assert main(["quantize", str(source), "-o", str(target), "--precision", "int8", "--per-channel",
                 "--no-reduce-range"]) == 0
    assert {p.key: p.value for p in onnx.load(target).metadata_props}[FULL_RANGE_KEY] == "true"
    capsys.readouterr()
    assert main(["quantize", str(source), "-o", str(tmp_path / "b.onnx"), "--precision", "int4",
                 "--no-reduce-range"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "reduce_range applies to int8 only" in line and not (tmp_path / "b.onnx").exists()


def _lm_with_untied_weight() -> onnx.ModelProto:
    """ids -> E[ids] @ W @ E^T: an untied weight W quantized first, so its zero point (0, like
    the tie's) is the one kept when equal parameters are merged."""
    w = np.random.default_rng(1).standard_normal((HIDDEN, HIDDEN)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"], axis=0, name="emb"),
             helper.make_node("MatMul", ["e", "W"], ["h"], name="mid"),
             helper.make_node("Transpose", ["E"], ["ET"], perm=[1, 0], name="tie"),
             helper.make_node("MatMul", ["h", "ET"], ["logits"], name="proj")]
    graph = helper.make_graph(
        nodes, "lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", VOCAB])],
        [numpy_helper.from_array(_table(), "E"), numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_tie_record_names_scales_and_zero_points_the_file_has():
    """quantize_dynamic's zero points are all 0 and get merged into one: the record follows."""
    from tiedonnx.runtime.testing import tied_autoencoder

    for model in (_lm_with_untied_weight(), _lm_graph(_table()), tied_autoencoder(16, 4)):
        q = to_precision(model, "int8")
        inits = {i.name for i in q.graph.initializer}
        for tie in read_ties(q):
            assert tie.scale in inits and tie.zero_point in (None, *inits), tie
        assert inspect_model(q).ties_ok
        broken = onnx.ModelProto()
        broken.CopyFrom(q)
        (tie,) = read_ties(broken)
        tie.scale = "no_such_scale"
        from tiedonnx.runtime.graph import write_ties

        write_ties(broken, [tie])
        assert "scale 'no_such_scale' is not an initializer" in inspect_model(broken).ties[0]["status"]


@pytest.mark.parametrize("full_range, cpu, warned", [(True, False, True), (True, True, False),
                                                      (False, False, False)])
def test_load_warns_when_full_range_int8_meets_a_cpu_without_vnni(tmp_path, monkeypatch, caplog,
                                                                  full_range, cpu, warned):
    from tiedonnx.runtime import load, providers

    monkeypatch.setattr(providers, "cpu_has_int8_dot", lambda: cpu)
    path = tmp_path / "lm.onnx"
    onnx.save(to_precision(_lm_graph(_table()), "int8", reduce_range=not full_range), path)
    with caplog.at_level("WARNING", logger="tiedonnx.runtime.session"):
        load(path, providers="cpu")
    assert ("full-range int8 weights" in caplog.text) == warned


def _stored_scale(q: onnx.ModelProto) -> np.ndarray:
    (tie,) = read_ties(q)
    return numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == tie.scale))


def test_int8_defaults_to_one_scale_per_channel_for_a_language_model():
    """A tie read by a lookup: per channel unless asked otherwise (README 'Quantization quality': 98.7% vs
    96.7% same top token on the trained LM)."""
    table = _table()
    assert _stored_scale(to_precision(_lm_graph(table), "int8")).size == VOCAB
    assert _stored_scale(to_precision(_lm_graph(table), "int8", per_channel=False)).size == 1


def test_int8_stays_per_tensor_without_a_lookup_or_with_stacked_expert_weights():
    table = _table()
    no_lookup = _lm_graph(table)
    lookup = next(n for n in no_lookup.graph.node if n.op_type == "Gather")
    lookup.op_type, lookup.input[:] = "Identity", ["x"]  # embedded = x: the tie is read by the projection only
    del lookup.attribute[:]
    assert _stored_scale(to_precision(no_lookup, "int8")).size == 1
    experts = _lm_graph(table)  # plus a MatMul over a stacked [2, HIDDEN, HIDDEN] kernel, as a MoE layer has
    stacked = np.ones((2, HIDDEN, HIDDEN), np.float32)
    experts.graph.initializer.append(numpy_helper.from_array(stacked, "experts"))
    experts.graph.node.append(helper.make_node("MatMul", ["x", "experts"], ["routed"], name="moe"))
    experts.graph.output.append(helper.make_tensor_value_info("routed", TensorProto.FLOAT, [2, "n", HIDDEN]))
    assert _stored_scale(to_precision(experts, "int8")).size == 1


# --- the lookup reads the stored int8 tie on axis 1 (runtime/graph/lookup_axis.py) -----------------


def _lookup_reads(q: onnx.ModelProto, stored: str) -> list[onnx.NodeProto]:
    return [n for n in q.graph.node if n.op_type == "Gather" and n.input[0] == stored]


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_int8_lookup_gathers_columns_of_the_stored_tie_no_transposed_copy(per_channel):
    """The int8 tie is stored as the projection's [HIDDEN, VOCAB]; the lookup must read it directly
    (a Transpose of it is folded by onnxruntime into a second copy at session start)."""
    table = _table()
    model = _lm_graph(table)
    q = to_precision(model, "int8", per_channel=per_channel)
    (tie,) = read_ties(q)
    stored = next(i for i in q.graph.initializer if i.name == tie.initializer)
    assert list(stored.dims) == [HIDDEN, VOCAB]
    transposes = [n for n in q.graph.node if n.op_type == "Transpose" and n.input[0] == tie.initializer]
    assert transposes == []
    (gather,) = _lookup_reads(q, tie.initializer)
    assert [a.i for a in gather.attribute if a.name == "axis"] == [1]
    assert inspect_model(q).ties_ok
    # Same rows as the float table, to int8 rounding: computed here from the table, not from the file.
    ids = np.array([0, 3, VOCAB - 1, 3], np.int64)
    x = np.zeros((4, HIDDEN), np.float32)
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    embedded, logits = sess.run(["embedded", "logits"], {"ids": ids, "x": x})
    assert embedded.shape == (4, HIDDEN)
    step = np.abs(table).max() / 64  # one 7-bit step of the coarsest scale: a wrong row is off by far more
    assert np.abs(embedded - table[ids]).max() <= step
    assert np.abs(logits - table[ids] @ table.T).max() <= 0.05


def test_lookup_axis_pass_keeps_ids_of_any_rank_and_refuses_unknown_ranks():
    from tiedonnx.runtime.graph.lookup_axis import gather_transposed_columns

    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # stored [3, 4]; the lookup wants rows of w.T [4, 3]
    for ids_shape, known in (([2, 5], True), (None, False)):
        graph = helper.make_graph(
            [helper.make_node("Transpose", ["W"], ["WT"], perm=[1, 0]), helper.make_node("Gather", ["WT", "ids"], ["rows"])],
            "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)],
            [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        out, count = gather_transposed_columns(model)
        assert count == (1 if known else 0)
        assert any(n.op_type == "Transpose" and n.input[0] == "W" for n in out.graph.node) is not known
        if known:
            ids = np.array([[0, 1, 2, 3, 0], [3, 3, 2, 1, 0]], np.int64)
            got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"ids": ids})[0]
            assert np.array_equal(got, w.T[ids])


@pytest.mark.parametrize("precision, options", [("int8", {"per_channel": True}), ("int8", {"per_channel": False}),
                                                ("int4", {"int8_ties": True})],
                         ids=["per_channel", "per_tensor", "int4_int8_ties"])
def test_the_int8_tie_is_also_a_graph_input_so_no_packed_copy_is_kept_beside_it(precision, options):
    """onnxruntime pre-packs a constant 2-D B of MatMulInteger into a copy of its own while the lookup keeps
    reading the original; an initializer that is also a graph input is neither folded nor pre-packed."""
    table = _table(hidden=32)  # int4 blocks of 32 along the hidden axis
    q = to_precision(_lm_graph(table), precision, **options)
    assert not [n for n in q.graph.node if n.op_type == "Transpose" and n.input[0] == read_ties(q)[0].initializer]
    (tie,) = read_ties(q)
    assert [i.name for i in q.graph.input] == ["ids", "x", tie.initializer]
    listed = next(i for i in q.graph.input if i.name == tie.initializer)
    stored = next(i for i in q.graph.initializer if i.name == tie.initializer)
    assert listed.type.tensor_type.elem_type == stored.data_type
    assert [d.dim_value for d in listed.type.tensor_type.shape.dim] == list(stored.dims)
    assert inspect_model(q).ties_ok
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ids", "x"]  # the caller's contract is unchanged
    assert [i.name for i in sess.get_overridable_initializers()] == [tie.initializer]
    # The same numbers as the graph without the listing: the pass changes memory only.
    plain = onnx.ModelProto()
    plain.CopyFrom(q)
    del plain.graph.input[2]
    ids, x = np.array([0, 7, VOCAB - 1], np.int64), np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    for got, want in zip(sess.run(["embedded", "logits"], {"ids": ids, "x": x}), _run(plain, ids, x)):
        assert np.array_equal(got, want)


def test_only_an_8_bit_tie_read_by_a_lookup_and_an_integer_projection_is_listed():
    from tiedonnx.runtime.graph.lookup_axis import leave_tie_unpacked

    fp32 = to_precision(_lm_graph(_table()), "fp32")
    assert leave_tie_unpacked(fp32)[1] == 0  # a float tie: onnxruntime's lean Gemm keeps it once already
    q = to_precision(_lm_graph(_table()), "int8")
    assert leave_tie_unpacked(q)[1] == 0  # already listed: not twice
    assert [i.name for i in q.graph.input].count(read_ties(q)[0].initializer) == 1
    no_lookup = to_precision(_lm_graph(_table()), "int8")
    del no_lookup.graph.input[2]
    for node in no_lookup.graph.node:
        if node.op_type == "Gather" and node.input[0] == read_ties(no_lookup)[0].initializer:
            node.op_type, node.domain = "GatherElements", ""  # any reader but a Gather: not a lookup
    assert leave_tie_unpacked(no_lookup)[1] == 0
