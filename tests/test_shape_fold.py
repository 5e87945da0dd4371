"""Shape-of-initializer folding on hand-built graphs: numbers and structure, before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.edit import copy_model
from tiedonnx.runtime.graph.shape_fold import fold_initializer_shapes


def _graph(rng) -> onnx.ModelProto:
    """What tf2onnx's einsum optimizer leaves: ``Wg`` feeds a Gemm, ``We`` (the same kernel in
    its einsum layout) feeds only a ``Shape`` whose output reshapes the result."""
    w = rng.standard_normal((6, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "Wg"),
             numpy_helper.from_array(w.reshape(1, 2, 3, 6).copy(), "We")]
    nodes = [helper.make_node("Gemm", ["x", "Wg"], ["h"]),
             helper.make_node("Shape", ["We"], ["s"], start=1, end=3),  # [2, 3]
             helper.make_node("Concat", ["batch", "s"], ["target"], axis=0),
             helper.make_node("Reshape", ["h", "target"], ["y"])]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "batch"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def test_shape_of_an_initializer_becomes_a_constant_and_the_copy_goes(rng):
    model = _graph(rng)
    out, removed = fold_initializer_shapes(copy_model(model))  # a pass consumes its argument
    onnx.checker.check_model(out, full_check=True)
    assert removed == ["We"]
    assert [n.op_type for n in out.graph.node] == ["Gemm", "Concat", "Reshape"]
    shape = next(i for i in out.graph.initializer if i.name == "s")
    assert numpy_helper.to_array(shape).tolist() == [2, 3]
    x = rng.random((4, 6), dtype=np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))  # bit-identical
    assert _run(out, x).shape == (4, 2, 3)
    again, removed_again = fold_initializer_shapes(out)  # idempotent
    assert removed_again == [] and again.SerializeToString() == out.SerializeToString()


def test_initializer_read_by_other_ops_stays_and_graph_inputs_are_left_alone(rng):
    model = _graph(rng)
    model.graph.node.append(helper.make_node("ReduceSum", ["We"], ["total"], keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    out, removed = fold_initializer_shapes(model)
    assert removed == [] and "We" in {i.name for i in out.graph.initializer}
    overridable = _graph(rng)
    overridable.graph.input.append(helper.make_tensor_value_info("We", TensorProto.FLOAT, [1, 2, 3, 6]))
    kept, removed = fold_initializer_shapes(overridable)
    assert removed == [] and "Shape" in [n.op_type for n in kept.graph.node]


def test_equal_shapes_fold_into_one_constant(rng):
    model = _graph(rng)
    model.graph.node.insert(1, helper.make_node("Shape", ["We"], ["s2"], start=1, end=3))
    model.graph.node.append(helper.make_node("Reshape", ["h", "s2"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]))
    out, _ = fold_initializer_shapes(model)
    int64 = [i.name for i in out.graph.initializer if i.data_type == TensorProto.INT64]
    assert sorted(int64) == ["batch", "s2"]  # the first in graph order stays
    assert [n.input[1] for n in out.graph.node if n.op_type == "Reshape"] == ["target", "s2"]
    assert [n.input for n in out.graph.node if n.op_type == "Concat"] == [["batch", "s2"]]
