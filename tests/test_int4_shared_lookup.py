"""int4: one padded table looked up twice (an encoder-decoder's shared embedding) and projected once."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.inspect import inspect_model
from tiedonnx.runtime.graph.quantize import to_precision

VOCAB, DIM = 40, 48  # 48 is not a whole number of 32-wide blocks: each lookup is trimmed by a Slice
# Measured 0.198 (see the test); a block of standard normals spans ~5, so half a 4-bit step is ~0.17-0.25.
LOOKUP_TOL = 0.3


def _two_lookups_one_projection() -> onnx.ModelProto:
    e = np.random.default_rng(3).standard_normal((VOCAB, DIM)).astype(np.float32)
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Gather", ["E", "enc_ids"], ["enc_emb"], axis=0),
             helper.make_node("Gather", ["E", "dec_ids"], ["dec_emb"], axis=0),
             helper.make_node("Transpose", ["E"], ["E__T"], perm=[1, 0]),
             helper.make_node("MatMul", ["dec_emb", "E__T"], ["logits"])]
    graph = helper.make_graph(
        nodes, "shared_lookups",
        [vi("enc_ids", TensorProto.INT64, ["b", "s"]), vi("dec_ids", TensorProto.INT64, ["b", "t"])],
        [vi("enc_emb", TensorProto.FLOAT, ["b", "s", DIM]), vi("logits", TensorProto.FLOAT, ["b", "t", VOCAB])],
        [numpy_helper.from_array(e, "E")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_both_lookups_read_the_one_4bit_table():
    fp32 = _two_lookups_one_projection()
    q = to_precision(fp32, "int4")  # raised "ValueError: ... is not in list" before (BART)
    onnx.checker.check_model(q, full_check=True)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("GatherBlockQuantized") == 2 and ops.count("Slice") == 2 and "Gather" not in ops
    assert [t["status"] for t in inspect_model(q).ties] == ["ok"]
    rng = np.random.default_rng(0)
    feed = {"enc_ids": rng.integers(0, VOCAB, (2, 5)), "dec_ids": rng.integers(0, VOCAB, (2, 3))}
    (enc_q, logits_q), (enc, logits) = _run(q, feed), _run(fp32, feed)
    assert enc_q.shape == enc.shape and logits_q.shape == logits.shape
    # 4-bit blocks of 32 over standard-normal rows: measured max abs 0.198 on the looked-up rows
    # (half a step of a block's range / 15); a lookup of other rows differs by several units.
    assert np.abs(enc_q - enc).max() < LOOKUP_TOL
