"""fp16: each tie stored once as float16; float32 in and out; runs on the CPU provider."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from tiedonnx.runtime.graph.fp16 import to_fp16
from tests.graphs import recorded_ties
from tiedonnx.runtime.graph.quantize import read_precision, to_precision

from tests.graphs import resolve, run, tied_graph

# Hand-built 64-16-64 sigmoid AE, W ~ N(0, 0.3), vs the fp32 graph: measured
# max abs 1.1e-4 (weights rounded to 11 significant bits, fp32 arithmetic).
TINY_FP16_ATOL = 5e-4


@pytest.mark.parametrize("untied", [False, True], ids=["tied_input", "exporter_copy_input"])
def test_fp16_stores_each_tie_once(tmp_path, rng, untied):
    model = tied_graph(untied=untied)
    path = tmp_path / "fp16.onnx"
    onnx.save(to_precision(model, "fp16"), path)
    saved = onnx.load(path)
    onnx.checker.check_model(saved, full_check=True)
    graph = saved.graph

    big = [i for i in graph.initializer if int(np.prod(i.dims)) == 64 * 16]
    assert [(i.data_type, list(i.dims)) for i in big] == [(TensorProto.FLOAT16, [64, 16])]
    assert not any(i.data_type == TensorProto.FLOAT for i in graph.initializer)
    (tie,) = recorded_ties(saved)
    assert (tie["initializer"], tie["dtype"]) == (big[0].name, "float16")
    assert read_precision(saved) == "fp16"
    # Both matmuls read the one fp16 tensor (through its Cast, and the tie's Transpose).
    producers = {o: n for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    for node in matmuls:
        cast = producers[resolve(graph, node.input[1])]
        assert (cast.op_type, cast.input[0]) == ("Cast", big[0].name)

    # float32 in, float32 out, CPU provider only.
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = rng.random((32, 64), dtype=np.float32)
    y = session.run(None, {"x": x})[0]
    assert y.dtype == np.float32
    assert np.abs(y - run(model, x)).max() <= TINY_FP16_ATOL


def test_fp16_values_are_the_rounded_weights():
    model = tied_graph()
    w = numpy_helper.to_array(model.graph.initializer[0])
    half = next(i for i in to_fp16(model)[0].graph.initializer if i.name == "W__fp16")
    np.testing.assert_array_equal(numpy_helper.to_array(half), w.astype(np.float16))


def test_fp16_keeps_out_of_range_tensors_in_fp32_and_says_so(caplog):
    """A mask constant (-1e9) or a huge weight would become -inf in float16: it stays float32."""
    import json

    from tiedonnx.runtime.graph.fp16 import KEPT_FP32_KEY

    model = tied_graph()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[0, 0] = 1e5
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    with caplog.at_level("INFO", logger="tiedonnx.runtime.graph.fp16"):  # documented behaviour: info, not a warning
        out = to_precision(model, "fp16")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    kinds = {i.name: i.data_type for i in out.graph.initializer}
    assert kinds["W"] == TensorProto.FLOAT and "W__fp16" not in kinds
    assert kinds["b1__fp16"] == TensorProto.FLOAT16  # the others are converted
    meta = {p.key: p.value for p in out.metadata_props}
    assert json.loads(meta[KEPT_FP32_KEY]) == ["W"]
    assert "'W' kept in float32: largest |value| 100000" in caplog.text
    np.testing.assert_array_equal(numpy_helper.to_array(next(i for i in out.graph.initializer
                                                             if i.name == "W")), w)


def test_fp16_leaves_overridable_initializers_in_fp32():
    model = tied_graph()
    model.graph.input.append(onnx.helper.make_tensor_value_info("b1", TensorProto.FLOAT, [16]))
    out, _ = to_fp16(model)
    kinds = {i.name: i.data_type for i in out.graph.initializer}
    assert kinds["b1"] == TensorProto.FLOAT and kinds["W__fp16"] == TensorProto.FLOAT16
