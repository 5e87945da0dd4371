"""graph.stack_pick: a picked element of a stack is read directly; outputs bit for bit; structure checked."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.stack_pick import fold_stack_picks

BIG = 2**31 - 1  # tf2onnx's "to the end"


def _const(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _stacked_graph(*, pick_axis: int = 1, concat_other: bool = False) -> onnx.ModelProto:
    """y_i = stack([a, b, c], axis=1)[:, i] for i in 0..2 (as tf2onnx writes it), plus Shape(stack)."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, ["batch", 4]) for n in ("a", "b", "c")]
    nodes = [helper.make_node("Relu", [n], [f"{n}r"]) for n in ("a", "b", "c")]
    nodes += [helper.make_node("Unsqueeze", [f"{n}r", "axis1"], [f"{n}u"]) for n in ("a", "b", "c")]
    members = ["ar", "bu", "cu"] if concat_other else ["au", "bu", "cu"]
    nodes.append(helper.make_node("Concat", members, ["stack"], axis=1))
    outputs = []
    for i in range(3):
        nodes.append(helper.make_node("Slice", ["stack", f"s{i}", f"e{i}", "axes01"], [f"sl{i}"]))
        nodes.append(helper.make_node("Squeeze", [f"sl{i}", f"axis{pick_axis}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", f, ["batch", 4]))
    nodes.append(helper.make_node("Shape", ["stack"], ["shape"]))
    outputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [3]))
    inits = [_const("axis1", [1]), _const("axis0", [0]), _const("axes01", [0, 1])]
    inits += [_const(f"s{i}", [0, i]) for i in range(3)] + [_const(f"e{i}", [BIG, i + 1]) for i in range(3)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_picks_read_the_members_and_the_stack_goes():
    feed = {n: np.random.default_rng(i).standard_normal((5, 4)).astype(np.float32) for i, n in enumerate("abc")}
    before = _run(_stacked_graph(), feed)
    model, folded = fold_stack_picks(_stacked_graph())
    onnx.checker.check_model(model, full_check=True)
    assert folded == 4  # three picks and the Shape
    ops = [n.op_type for n in model.graph.node]
    assert "Unsqueeze" not in ops and "Squeeze" not in ops  # the stack and its copies are gone
    assert ops.count("Concat") == 1  # only the shape's [batch] + [3] + [4]
    after = _run(model, feed)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert after[3].tolist() == [5, 3, 4]
    again, more = fold_stack_picks(model)
    assert more == 0 and [n.op_type for n in again.graph.node] == ops


def test_a_concat_of_other_tensors_is_left_alone():
    model = _stacked_graph(concat_other=True)
    ops = [n.op_type for n in model.graph.node]
    _, folded = fold_stack_picks(model)
    assert folded == 0 and [n.op_type for n in model.graph.node] == ops


def test_a_squeeze_of_another_axis_is_not_a_pick():
    feed = {n: np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) for i, n in enumerate("abc")}
    before = _run(_stacked_graph(pick_axis=0), feed)
    model, folded = fold_stack_picks(_stacked_graph(pick_axis=0))
    assert folded == 1  # only Shape(stack); the three Squeezes of axis 0 stay
    assert [n.op_type for n in model.graph.node].count("Squeeze") == 3
    for x, y in zip(before, _run(model, feed)):
        np.testing.assert_array_equal(x, y)
