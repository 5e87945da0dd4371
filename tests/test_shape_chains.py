"""runtime/graph/shape_chains: tf2onnx's shape arithmetic around Dense/einsum rewritten, outputs unchanged."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.shape_chains import simplify_shape_chains

I64, I32, F = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _simplified(model):
    """The pass's result on a copy (onnxruntime checks it when a test runs it), with the rewrite count."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out, count = simplify_shape_chains(out)
    return out, count


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def _assert_same(before, after, feeds_list):
    for feeds in feeds_list:
        for a, b in zip(_run(before, feeds), _run(after, feeds)):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)  # same products, same order: bit for bit


def _tensordot(x="x", weight="w", k=4, lead_from="x", tag="d"):
    """tf2onnx's Dense: Reshape(MatMul(Reshape(x, [-1, k]), W), Cast(Concat(Gather(Cast(Shape(.)), [0, 1]), n)))."""
    t = lambda s: f"{tag}/{s}"  # noqa: E731
    nodes = [
        helper.make_node("Shape", [lead_from], [t("shape")]),
        helper.make_node("Cast", [t("shape")], [t("shape32")], to=I32),
        helper.make_node("Gather", [t("shape32"), t("lead_idx")], [t("lead")], axis=0),
        helper.make_node("Concat", [t("lead"), t("n")], [t("target32")], axis=0),
        helper.make_node("Cast", [t("target32")], [t("target")], to=I64),
        helper.make_node("Reshape", [x, t("rows_shape")], [t("rows")]),
        helper.make_node("MatMul", [t("rows"), weight], [t("prod")]),
        helper.make_node("Reshape", [t("prod"), t("target")], [t("y")]),
    ]
    inits = [_const(t("lead_idx"), [0, 1], np.int32), _const(t("n"), [6], np.int32), _const(t("rows_shape"), [-1, k])]
    return nodes, inits


def _feeds(batch, seq, k=4, **extra):
    return {"x": RNG.standard_normal((batch, seq, k)).astype(np.float32), **extra}


def test_a_tensordot_becomes_one_matmul_with_the_same_output():
    nodes, inits = _tensordot()
    model = _model(nodes, [("x", F, ["batch", "seq", 4])], [("d/y", F)],
                   [*inits, numpy_helper.from_array(RNG.standard_normal((4, 6)).astype(np.float32), "w")])
    after, count = _simplified(model)
    assert count >= 1
    assert _ops(after) == {"MatMul": 1}
    assert [n.input[0] for n in after.graph.node] == ["x"]
    assert {i.name for i in after.graph.initializer} == {"w"}  # the chain's constants went with it
    # (no empty sequence: there tf2onnx's target [batch, 0, 6] reads its 0 as "copy" and the original fails)
    _assert_same(model, after, [_feeds(2, 3), _feeds(1, 1)])
    again, count = _simplified(after)
    assert count == 0 and _ops(again) == _ops(after)


def test_a_tensordot_whose_shape_is_read_from_another_tensor_is_kept():
    nodes, inits = _tensordot(lead_from="z")  # [z.0, z.1, 6]: equal to x's only if the feeds agree
    model = _model(nodes, [("x", F, ["batch", "seq", 4]), ("z", F, ["b2", "s2", "k2"])], [("d/y", F)],
                   [*inits, numpy_helper.from_array(RNG.standard_normal((4, 6)).astype(np.float32), "w")])
    after, count = _simplified(model)
    assert count == 0
    assert _ops(after) == _ops(model)


def test_a_gemm_projection_split_into_heads_becomes_matmul_and_one_reshape():
    """KerasHub's einsum projection: Unsqueeze, rows, Gemm(transB), reshape to heads with a 1, Squeeze."""
    w = RNG.standard_normal((6, 4)).astype(np.float32)  # [out, in]: Gemm's transB layout
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes23"], ["u"]),
        helper.make_node("Shape", ["u"], ["shape"]),
        helper.make_node("Gather", ["shape", "lead_idx"], ["lead"], axis=0),
        helper.make_node("Concat", ["lead", "heads", "one"], ["target"], axis=0),
        helper.make_node("Reshape", ["u", "rows_shape"], ["rows"]),
        helper.make_node("Gemm", ["rows", "w"], ["prod"], alpha=1.0, beta=0.0, transA=0, transB=1),
        helper.make_node("Reshape", ["prod", "target"], ["split"]),
        helper.make_node("Squeeze", ["split", "axis4"], ["y"]),
    ]
    inits = [_const("axes23", [2, 3]), _const("lead_idx", [0, 1]), _const("heads", [2, 3]), _const("one", [1]),
             _const("rows_shape", [-1, 4]), _const("axis4", [4]), numpy_helper.from_array(w, "w")]
    model = _model(nodes, [("x", F, ["batch", "seq", 4])], [("y", F)], inits)
    after, count = _simplified(model)
    assert count >= 3
    assert _ops(after) == {"MatMul": 1, "Reshape": 1}
    matmul, reshape = after.graph.node
    assert matmul.input[0] == "x"
    weight = numpy_helper.to_array(next(i for i in after.graph.initializer if i.name == matmul.input[1]))
    np.testing.assert_array_equal(weight, w.T)  # transposed in place: no second copy
    assert sum(i.data_type == F for i in after.graph.initializer) == 1
    assert numpy_helper.to_array(next(i for i in after.graph.initializer if i.name == reshape.input[1])).tolist() \
        == [0, 0, 2, 3]
    _assert_same(model, after, [_feeds(2, 3), _feeds(1, 1)])


def test_a_gemm_weight_read_elsewhere_is_transposed_by_a_node_not_copied():
    w = RNG.standard_normal((6, 4)).astype(np.float32)
    nodes, inits = _tensordot()
    gemm = next(n for n in nodes if n.op_type == "MatMul")
    gemm.op_type = "Gemm"
    gemm.attribute.extend([helper.make_attribute("transB", 1)])
    nodes.append(helper.make_node("ReduceSum", ["w"], ["w_sum"], keepdims=0))  # another reader of w
    model = _model(nodes, [("x", F, ["batch", "seq", 4])], [("d/y", F), ("w_sum", F)],
                   [*inits, numpy_helper.from_array(w, "w")])
    after, count = _simplified(model)
    assert count >= 1
    assert _ops(after) == {"Transpose": 1, "MatMul": 1, "ReduceSum": 1}
    assert [i.name for i in after.graph.initializer if i.data_type == F] == ["w"]
    _assert_same(model, after, [_feeds(2, 3)])


def test_a_gemm_with_a_bias_or_alpha_is_kept():
    nodes, inits = _tensordot()
    gemm = next(n for n in nodes if n.op_type == "MatMul")
    gemm.op_type = "Gemm"
    gemm.attribute.extend([helper.make_attribute("transB", 1), helper.make_attribute("alpha", 2.0)])
    model = _model(nodes, [("x", F, ["batch", "seq", 4])], [("d/y", F)],
                   [*inits, numpy_helper.from_array(RNG.standard_normal((6, 4)).astype(np.float32), "w")])
    after, _ = _simplified(model)
    assert _ops(after)["Gemm"] == 1 and _ops(after)["Reshape"] == 2


def _reshape_by(parts, x_shape, extra_inputs=()):
    """Reshape(x, Concat(parts)) where each part is (kind, source, start, end) or a constant list."""
    nodes, inits = [], []
    names = []
    for i, part in enumerate(parts):
        if isinstance(part, list):
            inits.append(_const(f"c{i}", part))
            names.append(f"c{i}")
            continue
        source, start, end = part
        nodes.append(helper.make_node("Shape", [source], [f"s{i}"], start=start, end=end))
        names.append(f"s{i}")
    nodes += [helper.make_node("Concat", names, ["target"], axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])]
    inputs = [("x", F, x_shape), *extra_inputs]
    return _model(nodes, inputs, [("y", F)], inits)


def test_a_reshape_to_its_own_dims_takes_a_constant_target_of_zeros():
    model = _reshape_by([("x", 0, 2), [6]], ["batch", "seq", 2, 3])
    after, count = _simplified(model)
    assert count == 1 and _ops(after) == {"Reshape": 1}
    target = next(i for i in after.graph.initializer if i.name == after.graph.node[0].input[1])
    assert numpy_helper.to_array(target).tolist() == [0, 0, 6]
    x = RNG.standard_normal((2, 5, 2, 3)).astype(np.float32)
    _assert_same(model, after, [{"x": x}, {"x": x[:, :1]}])


def test_one_unknown_dim_beside_known_ints_becomes_minus_one():
    z = ("z", F, ["n", "m"])
    model = _reshape_by([("z", 0, 1), [6]], ["batch", "seq", 6], [z])
    after, count = _simplified(model)
    assert count == 1
    target = next(i for i in after.graph.initializer if i.name == after.graph.node[0].input[1])
    assert numpy_helper.to_array(target).tolist() == [-1, 6]
    x = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    _assert_same(model, after, [{"x": x, "z": np.zeros((10, 1), np.float32)}])


@pytest.mark.parametrize("parts", [
    [("z", 0, 2), [6]],                 # two unknown dims: one -1 cannot say both
    [("x", 0, 1), ("z", 1, 2), [6]],    # -1 beside a copied dim that may be 0 at run time
], ids=["two_unknowns", "minus_one_beside_a_copy"])
def test_a_target_that_cannot_be_written_as_a_constant_is_kept(parts):
    model = _reshape_by(parts, ["batch", "seq", 6], [("z", F, ["n", "m", "k"])])
    after, count = _simplified(model)
    assert count == 0 and _ops(after) == _ops(model)


def test_allowzero_reshapes_are_left_alone():
    model = _reshape_by([("x", 0, 2), [6]], ["batch", "seq", 2, 3])
    next(n for n in model.graph.node if n.op_type == "Reshape").attribute.extend(
        [helper.make_attribute("allowzero", 1)])
    after, count = _simplified(model)
    assert count == 0 and _ops(after) == _ops(model)


def test_a_squeeze_with_a_copied_dim_after_it_is_kept():
    """Reshape(x, [0, 6, 1, 0]) then Squeeze(2): without the 1, the last 0 would copy x's dim 2 (3), not 3's c."""
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r"]), helper.make_node("Squeeze", ["r", "ax"], ["y"])]
    model = _model(nodes, [("x", F, ["a", 2, 3, "c"])], [("y", F)],
                   [_const("target", [0, 6, 1, 0]), _const("ax", [2])])
    after, count = _simplified(model)
    assert count == 0 and _ops(after) == {"Reshape": 1, "Squeeze": 1}


def test_a_reshape_that_keeps_the_shape_before_a_squeeze_goes():
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r"]), helper.make_node("Squeeze", ["r", "ax"], ["y"])]
    model = _model(nodes, [("x", F, ["a", 1, "c"])], [("y", F)], [_const("target", [0, 1, 0]), _const("ax", [1])])
    after, _ = _simplified(model)
    assert _ops(after) == {"Squeeze": 1}
    _assert_same(model, after, [{"x": np.ones((2, 1, 3), np.float32)}])


def test_an_unsqueeze_before_a_copied_dim_is_kept():
    """Reshape(Unsqueeze(x, 0), [0, -1]): the 0 copies the inserted 1, not x's first dim."""
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Reshape", ["u", "target"], ["y"])]
    model = _model(nodes, [("x", F, ["a", "b"])], [("y", F)], [_const("target", [0, -1]), _const("ax", [0])])
    after, _ = _simplified(model)
    assert _ops(after) == {"Unsqueeze": 1, "Reshape": 1}
    _assert_same(model, after, [{"x": np.ones((3, 4), np.float32)}])


def test_equal_shape_values_are_computed_once_and_static_ones_become_constants():
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Shape", ["h"], ["sh"]),  # the same dims as x
        helper.make_node("Gather", ["sx", "one"], ["len_a"], axis=0),
        helper.make_node("Gather", ["sh", "one"], ["len_b"], axis=0),
        helper.make_node("Gather", ["sh", "two"], ["width"], axis=0),  # static: 4
        helper.make_node("Add", ["len_a", "len_b"], ["sum"]),
        helper.make_node("Add", ["sum", "width"], ["y0"]),
        helper.make_node("Add", ["y0", "four"], ["y"]),
    ]
    model = _model(nodes, [("x", F, ["batch", "seq", 4])], [("y", I64)],
                   [_const("one", 1), _const("two", 2), _const("four", 4)])
    after, count = _simplified(model)
    assert count >= 2
    assert _ops(after) == {"Shape": 1, "Gather": 1, "Add": 3}  # Relu unread now, and the copies gone
    # the static width is the existing constant 4 (the export refuses two equal initializers)
    assert [i.name for i in after.graph.initializer if numpy_helper.to_array(i).tolist() == 4] == ["four"]
    for seq in (1, 7):
        out_before, out_after = _run(model, _feeds(2, seq)), _run(after, _feeds(2, seq))
        assert out_after[0] == out_before[0] == 2 * seq + 8


def test_a_graph_with_nothing_to_rewrite_is_returned_as_is():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", F, ["batch", 4])], [("y", F)], [])
    before = model.SerializeToString()
    after, count = simplify_shape_chains(model)
    assert count == 0 and after.SerializeToString() == before


def test_rows_over_several_trailing_axes_merge_only_those_and_the_identity_reshape_goes():
    """The attention output: rows of heads x head size from [b, s, 1, heads, size], weight computed."""
    kernel = RNG.standard_normal((1, 1, 6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["kernel", "w_shape"], ["w"]),  # not an initializer: transposed by a node
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "lead_idx"], ["lead"], axis=0),
        helper.make_node("Concat", ["lead", "out"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "rows_shape"], ["rows"]),
        helper.make_node("Gemm", ["rows", "w"], ["prod"], transB=1),
        helper.make_node("Reshape", ["prod", "target"], ["split"]),
        helper.make_node("Squeeze", ["split", "axes34"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    inits = [numpy_helper.from_array(kernel, "kernel"), _const("w_shape", [-1, 6]), _const("lead_idx", [0, 1]),
             _const("out", [4, 1, 1]), _const("rows_shape", [-1, 6]), _const("axes34", [3, 4])]
    model = _model(nodes, [("x", F, ["batch", "seq", 1, 2, 3])], [("y", F)], inits)
    after, count = _simplified(model)
    assert count >= 3
    assert _ops(after) == {"Reshape": 2, "Transpose": 1, "MatMul": 1, "Relu": 1}
    rows = next(n for n in after.graph.node if n.op_type == "Reshape" and n.input[0] == "x")
    assert numpy_helper.to_array(next(i for i in after.graph.initializer if i.name == rows.input[1])).tolist() \
        == [0, 0, 6]
    x = RNG.standard_normal((2, 3, 1, 2, 3)).astype(np.float32)
    _assert_same(model, after, [{"x": x}, {"x": x[:1, :1]}])


def test_a_reshape_that_keeps_the_shape_goes_unless_it_names_a_graph_output():
    nodes = [helper.make_node("Reshape", ["x", "same"], ["r"]), helper.make_node("Relu", ["r"], ["y"]),
             helper.make_node("Reshape", ["y", "same"], ["out"])]
    model = _model(nodes, [("x", F, ["batch", 4])], [("out", F)], [_const("same", [0, 4])])
    after, count = _simplified(model)
    assert count == 1
    assert [(n.op_type, list(n.input)) for n in after.graph.node] == [("Relu", ["x"]), ("Reshape", ["y", "same"])]
    _assert_same(model, after, [{"x": np.arange(8, dtype=np.float32).reshape(2, 4)}])


@pytest.mark.parametrize("y_shape, shapes_left", [([1, 1, 4], 1), (["b", "t", 4], 2)], ids=["broadcast_1s", "unknown"])
def test_a_broadcast_output_shares_its_input_dims_only_when_the_others_are_1(y_shape, shapes_left):
    """Shape(Add(x, y))[1] is x's dim 1 when y's is a static 1; with y's unknown it could be either."""
    nodes = [
        helper.make_node("Add", ["x", "y"], ["h"]),
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Shape", ["h"], ["sh"]),
        helper.make_node("Gather", ["sx", "one"], ["len_a"], axis=0),
        helper.make_node("Gather", ["sh", "one"], ["len_b"], axis=0),
        helper.make_node("Mul", ["len_a", "len_b"], ["out"]),
    ]
    model = _model(nodes, [("x", F, ["batch", "seq", 4]), ("y", F, y_shape)], [("out", I64)], [_const("one", 1)])
    after, _ = _simplified(model)
    assert _ops(after)["Shape"] == shapes_left
    y = np.zeros([1 if isinstance(d, int) and d == 1 else {"b": 2, "t": 3}.get(d, d) for d in y_shape], np.float32)
    assert _run(after, _feeds(2, 3, y=y))[0] == _run(model, _feeds(2, 3, y=y))[0] == 9
