"""Tiny ONNX graphs built by hand for the runtime tests (no TensorFlow), and their checks.

``tied_ae`` mirrors what export + retie produce for a Dense/DenseTied
autoencoder: one initializer ``W`` read by the encoder's MatMul and, through a
``Transpose`` node, by the decoder's MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import sigmoid

OPSET = 17


def _model(nodes, inputs, outputs, inits, *, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def tied_weights(n_in: int = 8, n_h: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((n_in, n_h)).astype(np.float32),
            "b1": rng.standard_normal(n_h).astype(np.float32),
            "b2": rng.standard_normal(n_in).astype(np.float32)}


def tied_ae(n_in: int = 8, n_h: int = 3, *, seed: int = 0, rank: int = 2) -> onnx.ModelProto:
    """x[?, n_in] -> sigmoid(sigmoid(x W + b1) W^T + b2); ``rank=3`` adds a middle axis."""
    w = tied_weights(n_in, n_h, seed)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [
        helper.make_node("Transpose", ["W"], ["W__T"], name="retie/W__T", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "W"], ["m1"], name="enc/matmul"),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Sigmoid", ["a1"], ["h"]),
        helper.make_node("MatMul", ["h", "W__T"], ["m2"], name="dec/matmul"),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Sigmoid", ["a2"], ["y"]),
    ]
    shape = ["batch", n_in] if rank == 2 else ["batch", 2, n_in]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)


def tied_reference(x: np.ndarray, n_in: int = 8, n_h: int = 3, seed: int = 0) -> np.ndarray:
    w = tied_weights(n_in, n_h, seed)
    h = sigmoid(x.astype(np.float64) @ w["W"] + w["b1"])
    return sigmoid(h @ w["W"].T + w["b2"])


def two_inputs() -> onnx.ModelProto:
    """a[?, 4] + b[?, 4] -> sum, and a * b -> prod: two inputs, two outputs."""
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4])  # noqa: E731
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    return _model(nodes, [vi("a"), vi("b")], [vi("sum"), vi("prod")], [])


def int_model(dtype=TensorProto.INT32) -> onnx.ModelProto:
    """ids[?, 3] (int) -> ids + 1."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    one = numpy_helper.from_array(np.ones(1, np_dtype), "one")
    return _model([helper.make_node("Add", ["ids", "one"], ["out"])],
                  [helper.make_tensor_value_info("ids", dtype, ["batch", 3])],
                  [helper.make_tensor_value_info("out", dtype, ["batch", 3])], [one])


def total_sum() -> onnx.ModelProto:
    """x[?, 4] -> scalar sum: an output without a batch axis."""
    return _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])], [])


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


# Measured: float32 onnxruntime vs the float64 numpy reference differ by at most
# 6e-8 on these graphs; 1e-6 leaves room for other BLAS kernels.
REFERENCE_ATOL = 1e-6


def test_builders_pass_the_full_checker():
    for model in (tied_ae(), tied_ae(rank=3), two_inputs(), int_model(), total_sum()):
        onnx.checker.check_model(model, full_check=True)


def test_tied_ae_stores_the_tie_once_with_a_transpose_node():
    model = tied_ae()
    assert [i.name for i in model.graph.initializer] == ["W", "b1", "b2"]
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert [(n.input[0], n.output[0]) for n in transposes] == [("W", "W__T")]
