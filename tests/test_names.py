"""Short names (runtime/graph/names.py) and int4 lookup tables (position embeddings).

Names: the renamed graph must compute bit-identical outputs, keep its input and
output names, stay valid for ``onnx.checker``, and its tie record must name
tensors that exist. Tables: a float table read only by ``Gather``/``Slice`` is
stored in 4 bits; the values read back are checked against a bound computed
here from the table (half a quantization step per block), not from the code.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.fp16 import KEPT_FP32_KEY
from tiedonnx.runtime.graph.inspect import inspect_model
from tiedonnx.runtime.graph.metadata import read_ties
from tiedonnx.runtime.graph.names import shorten_names
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.testing import tied_autoencoder

F, H = 64, 32


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def internal_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
    return names - {v.name for v in g.input} - {v.name for v in g.output}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_short_names_compute_the_same_and_keep_the_tie(precision, rng):
    model = tied_autoencoder(F, H, input_name="pixels", output_name="reconstruction")
    long = to_precision(model, precision, short_names=False)
    short = to_precision(model, precision, short_names=True)
    onnx.checker.check_model(short, full_check=True)
    assert [v.name for v in short.graph.input] == ["pixels"]
    assert [v.name for v in short.graph.output] == ["reconstruction"]
    assert all(len(n) <= 3 for n in internal_names(short)), internal_names(short)
    assert all(not n.name for n in short.graph.node)
    x = rng.random((5, F), dtype=np.float32)
    np.testing.assert_array_equal(run(short, {"pixels": x})[0], run(long, {"pixels": x})[0])
    assert short.ByteSize() < long.ByteSize()
    (tie,) = read_ties(short)
    names = {i.name for i in short.graph.initializer} | {o for n in short.graph.node for o in n.output}
    assert tie.initializer in names and all(u.output in names for u in tie.uses)
    assert [t["status"] for t in inspect_model(short).ties] == ["ok"]
    extra = lambda m: inspect_model(m).untied_bytes - inspect_model(m).bytes  # noqa: E731
    # a plain exporter's second copy of W, at the stored precision (int4: two values per byte)
    assert extra(short) == extra(long) == F * H * {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}[precision]


def test_short_names_must_be_a_bool():
    from tiedonnx.runtime.errors import UsageError

    with pytest.raises(UsageError, match="short_names must be True or False. Received: short_names='false'"):
        to_precision(tied_autoencoder(F, H), "int4", short_names="false")


def test_int4_shortens_by_default_and_other_precisions_do_not():
    model = tied_autoencoder(F, H)
    assert all(len(n) <= 3 for n in internal_names(to_precision(model, "int4")))
    assert "W" in {i.name for i in to_precision(model, "int8").graph.initializer} | {
        t.source for t in read_ties(to_precision(model, "int8"))}
    assert any(len(n) > 3 for n in internal_names(to_precision(model, "int4", short_names=False)))


def test_subgraphs_follow_outer_renames_and_kept_names_are_never_reused():
    """An If branch reads an outer initializer; the inputs are called t0 and t1 (the first short names)."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    branch = lambda scale: helper.make_graph(  # noqa: E731
        [helper.make_node("Mul", ["outer_weight", f"scale_{scale}"], [f"branch_out_{scale}"])],
        f"b{scale}", [], [helper.make_tensor_value_info(f"branch_out_{scale}", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.float32(scale), f"scale_{scale}")])
    nodes = [helper.make_node("If", ["t0"], ["picked"], then_branch=branch(2), else_branch=branch(3)),
             helper.make_node("Add", ["picked", "t1"], ["sum"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("t1", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "outer_weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = [run(model, {"t0": np.array(c), "t1": w})[0] for c in (True, False)]
    _, mapping = shorten_names(model)
    onnx.checker.check_model(model, full_check=True)
    assert not {"t0", "t1", "sum"} & set(mapping.values())
    assert len(set(mapping.values())) == len(mapping)
    after = [run(model, {"t0": np.array(c), "t1": w})[0] for c in (True, False)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after[0], 3 * w)  # 2 w + w


def test_fp16_kept_list_follows_the_rename():
    model = tied_autoencoder(F, H)
    model.graph.initializer.append(numpy_helper.from_array(np.full(F, -1e9, np.float32), "mask_bias"))
    add = next(n for n in model.graph.node if n.op_type == "Add" and n.input[1] == "b2")
    model.graph.node.append(helper.make_node("Add", [add.output[0], "mask_bias"], ["masked"]))
    short = to_precision(model, "fp16", short_names=True)
    kept = json.loads(next(p.value for p in short.metadata_props if p.key == KEPT_FP32_KEY))
    inits = {i.name: i for i in short.graph.initializer}
    assert len(kept) == 1 and inits[kept[0]].data_type == TensorProto.FLOAT
    assert numpy_helper.to_array(inits[kept[0]]).min() == np.float32(-1e9)


def test_cli_short_names_flag(tmp_path, capsys):
    from tiedonnx.runtime.cli import main

    source = tmp_path / "ae.onnx"
    onnx.save(tied_autoencoder(F, H), source)
    for args, short in ((["int8", "--short-names"], True), (["int4", "--no-short-names"], False),
                        (["int4"], True)):
        target = tmp_path / f"{'_'.join(args)}.onnx"
        assert main(["quantize", str(source), "-o", str(target), "--precision", *args]) == 0
        assert all(len(n) <= 3 for n in internal_names(onnx.load(target))) == short
        # the report names the tie's tensor before the rename
        assert "; was W)" in capsys.readouterr().out


# --- int4 lookup tables -------------------------------------------------------

def table_model(table: np.ndarray, mask: np.ndarray) -> onnx.ModelProto:
    """ids -> Gather(table, ids) + Slice(table, 0, n) (a position embedding), and Gather(mask, ids)."""
    n = 4
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(mask, "mask"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([n], np.int64), "end")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Slice", ["table", "start", "end"], ["pos"]),
             helper.make_node("Add", ["emb", "pos"], ["out"]),
             helper.make_node("Gather", ["mask", "ids"], ["masked"])]
    dims = table.shape[1]
    graph = helper.make_graph(
        nodes, "tables", [helper.make_tensor_value_info("ids", TensorProto.INT64, [n])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [n, dims]),
         helper.make_tensor_value_info("masked", TensorProto.FLOAT, [n, mask.shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def half_step(table: np.ndarray, block: int) -> np.ndarray:
    """Per value: half the asymmetric 4-bit step of its block (range including 0, over 15 steps),
    plus float16 rounding of the scale (15 steps x 2^-11 relative)."""
    rows, cols = table.shape
    padded = np.zeros((rows, -(-cols // block) * block), np.float64)
    padded[:, :cols] = table
    blocks = padded.reshape(rows, -1, block)
    step = (np.maximum(blocks.max(-1), 0) - np.minimum(blocks.min(-1), 0)) / 15
    bound = step * (0.5 + 15 * 2.0 ** -11) + 1e-7
    return np.repeat(bound, block, axis=1)[:, :cols]


def test_float_tables_read_by_gather_and_slice_become_4bit(rng):
    table = rng.normal(0, 0.1, (16, 64)).astype(np.float32)
    mask = np.where(rng.random((16, 8)) < 0.5, 0.0, -1e4).astype(np.float32)  # integer-valued: kept
    model = table_model(table, mask)
    out = to_precision(model, "int4", block_size=32)
    graph = out.graph
    floats = {i.name: list(i.dims) for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    assert [16, 64] not in floats.values()  # no float32 copy of the table
    assert list(floats.values()).count([16, 8]) == 1  # the mask stays float32, once
    assert [n.op_type for n in graph.node].count("GatherBlockQuantized") == 1
    ids = np.array([3, 0, 15, 7], np.int64)
    got, masked = run(out, {"ids": ids})
    want = table[ids] + table[:4]
    bound = half_step(table, 32)
    assert np.all(np.abs(got - want) <= bound[ids] + bound[:4])
    assert np.abs(got - want).max() > 0  # it really is quantized
    np.testing.assert_array_equal(masked, mask[ids])
