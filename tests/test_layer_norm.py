"""runtime/graph/layer_norm: Keras's layer normalization (tf2onnx's 13 nodes) -> one LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.graph.layer_norm import fuse_layer_norms

H = 8


def _norm_nodes(x: str, out: str, gamma: str, beta: str, eps: str, tag: str) -> list:
    """The pattern as tf2onnx writes Keras 3's LayerNormalization (names as in a real export)."""
    t = lambda s: f"{tag}/{s}"  # noqa: E731
    return [
        helper.make_node("GlobalAveragePool", [x], [t("mean")]),
        helper.make_node("Neg", [t("mean")], [t("neg")]),
        helper.make_node("Sub", [x, t("mean")], [t("d")]),
        helper.make_node("Mul", [t("d"), t("d")], [t("sq")]),
        helper.make_node("GlobalAveragePool", [t("sq")], [t("var")]),
        helper.make_node("Add", [t("var"), eps], [t("ve")]),
        helper.make_node("Sqrt", [t("ve")], [t("s")]),
        helper.make_node("Reciprocal", [t("s")], [t("r")]),
        helper.make_node("Mul", [t("r"), gamma], [t("g")]),
        helper.make_node("Mul", [x, t("g")], [t("xg")]),
        helper.make_node("Mul", [t("neg"), t("g")], [t("mg")]),
        helper.make_node("Add", [t("mg"), beta], [t("shift")]),
        helper.make_node("Add", [t("xg"), t("shift")], [out]),
    ]


def _model(*, opset=17, rank=3, extra_reader=None, gamma_shape=(1, 1, H)):
    rng = np.random.default_rng(0)
    gamma = rng.standard_normal(gamma_shape).astype(np.float32)
    inits = [numpy_helper.from_array(gamma, "gamma"),
             numpy_helper.from_array(rng.standard_normal((1, 1, H)).astype(np.float32), "beta"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = (_norm_nodes("x", "n1", "gamma", "beta", "eps", "ln1")
             + [helper.make_node("Relu", ["n1"], ["h"])]
             + _norm_nodes("h", "n2", "gamma", "beta", "eps", "ln2")  # the parameters shared, as tf2onnx does
             + [helper.make_node("Mul", ["n2", "gamma"], ["y"])])  # gamma also read outside a norm
    shape = ["batch", "seq", H] if rank == 3 else ["batch", "seq", 2, H]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info(extra_reader, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_both_norms_fuse_and_compute_the_same():
    model = _model()
    x = np.random.default_rng(1).standard_normal((2, 5, H)).astype(np.float32) * 3 + 1
    before = _run(model, x)
    fused, count = fuse_layer_norms(_model())
    onnx.checker.check_model(fused)
    assert count == 2
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["LayerNormalization", "Relu", "LayerNormalization", "Mul"]
    assert {a.name: helper.get_attribute_value(a) for a in fused.graph.node[0].attribute} == {
        "axis": -1, "epsilon": pytest.approx(1e-5)}
    # gamma is also read by the last Mul: the norms read a 1-D copy; beta only by norms: reshaped in place
    inits = {i.name: list(i.dims) for i in fused.graph.initializer}
    assert inits == {"gamma": [1, 1, H], "beta": [H], "gamma/layer_norm_1d": [H]}  # eps became an attribute
    after = _run(fused, x)
    np.testing.assert_allclose(after[0], before[0], atol=5e-6)  # measured 1.4e-6: float32 sums in another order
    assert fuse_layer_norms(fused)[1] == 0  # idempotent


@pytest.mark.parametrize("model, why", [
    (lambda: _model(opset=15), "opset 15 has no LayerNormalization"),
    (lambda: _model(rank=4), "GlobalAveragePool over two axes is not axis=-1"),
    (lambda: _model(extra_reader="ln1/var"), "an intermediate is a graph output"),
    (lambda: _model(gamma_shape=(1, 5, H)), "gamma is not one value per feature"),
])
def test_what_does_not_match_is_left_alone(model, why):
    original = model()
    fused, count = fuse_layer_norms(model())
    if why == "an intermediate is a graph output":
        assert count == 1  # the second norm still fuses; the first keeps its 13 nodes
        assert sum(n.op_type == "GlobalAveragePool" for n in fused.graph.node) == 2
    else:
        assert count == 0, why
        assert fused.graph == original.graph
