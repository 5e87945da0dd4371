"""runtime/graph/weight_views: Reshape/Transpose of an untied weight stored as the weight; ties untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.graph.weight_views import fold_weight_views


def _model():
    """y = x6 @ Transpose(Reshape(W, [4, -1])) + x4 @ E^T @ E: W untied (one reader), E tied (two)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "W"),  # [hidden, heads, dim]
             numpy_helper.from_array(np.array([4, -1], np.int64), "rows"),
             numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "E")]
    nodes = [helper.make_node("Reshape", ["W", "rows"], ["W2"]),
             helper.make_node("Transpose", ["W2"], ["Wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x6", "Wt"], ["a"]),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
             helper.make_node("MatMul", ["x4", "Et"], ["h"]),
             helper.make_node("MatMul", ["h", "E"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x6", TensorProto.FLOAT, ["n", 6]),
                     helper.make_tensor_value_info("x4", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model):
    rng = np.random.default_rng(1)
    feeds = {"x6": rng.standard_normal((3, 6)).astype(np.float32), "x4": rng.standard_normal((3, 4)).astype(np.float32)}
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_the_untied_view_is_stored_and_the_tie_is_not_touched():
    before = _run(_model())
    model, folded = fold_weight_views(_model())
    onnx.checker.check_model(model)
    assert folded == 2  # Reshape, then the Transpose of its result
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Transpose", "MatMul", "MatMul", "Add"]
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    assert inits == {"Wt": [6, 4], "E": [6, 4]}  # W and its target shape are gone; E is stored once as it was
    np.testing.assert_array_equal(_run(model), before)  # the same values, not recomputed
    assert fold_weight_views(model)[1] == 0


def _int8(model):
    result = to_precision(model, "int8", per_channel=False)
    return result[0] if isinstance(result, tuple) else result


def _float_matrices(model) -> set[str]:
    return {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2}


def test_the_folded_weight_is_quantized():
    """What the pass is for: the quantizer sees the MatMul's weight as an initializer."""
    assert "W" in _float_matrices(_int8(_model()))  # behind Reshape/Transpose, it stayed float
    folded = _int8(fold_weight_views(_model())[0])
    assert not {"W", "Wt"} & _float_matrices(folded)
    assert "Wt_quantized" in {i.name for i in folded.graph.initializer}


def test_a_view_of_a_weight_stored_twice_is_left_as_it_was():
    """tf2onnx stored a Qwen kernel twice, once reshaped: folding the view would make the two copies
    equal, which the export's no-duplicates proof refuses (found on the tiny Qwen and Llama decoders)."""
    model = _model()
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    model.graph.initializer.append(numpy_helper.from_array(w.reshape(4, 6).T.copy(), "W_other_layout"))
    model.graph.node.append(helper.make_node("MatMul", ["x6", "W_other_layout"], ["c"]))
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 4]))
    folded, count = fold_weight_views(model)
    assert count == 0
    assert [n.op_type for n in folded.graph.node][:2] == ["Reshape", "Transpose"]
