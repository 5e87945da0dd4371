"""Hand-built tied ONNX graphs for tests, benchmarks and examples (numpy and onnx only).

One builder, shared by the test suite and the scripts, for the graph that
export + retie produce for a Dense/DenseTied autoencoder: one initializer
``W`` read by the encoder's MatMul and, through a ``Transpose`` node, by the
decoder's MatMul (or, with ``untied=True``, a second initializer ``W^T`` as
plain exporters write it).

Example:
    >>> from tiedonnx.runtime.testing import tied_autoencoder
    >>> model = tied_autoencoder(784, 256)
    >>> [i.name for i in model.graph.initializer]
    ['W', 'b1', 'b2']
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["tied_autoencoder", "tied_autoencoder_reference", "tied_autoencoder_weights"]

#: Opset and IR version of the built graphs. IR 8 is what tf2onnx writes and
#: what older onnxruntime builds (1.23 on Python 3.10) still load.
OPSET = 17
IR_VERSION = 8


def tied_autoencoder_weights(features: int = 8, hidden: int = 3, *, seed: int = 0,
                             weight_scale: float = 1.0, bias_scale: float = 1.0) -> dict[str, np.ndarray]:
    """``W`` (features x hidden), ``b1`` and ``b2``: normal draws times the scales, float32."""
    rng = np.random.default_rng(seed)
    return {"W": (weight_scale * rng.standard_normal((features, hidden))).astype(np.float32),
            "b1": (bias_scale * rng.standard_normal(hidden)).astype(np.float32),
            "b2": (bias_scale * rng.standard_normal(features)).astype(np.float32)}


def tied_autoencoder(features: int = 8, hidden: int = 3, *, seed: int = 0, untied: bool = False,
                     rank: int = 2, batch: str | int = "batch", transposed_name: str = "W__T",
                     weight_scale: float = 1.0, bias_scale: float = 1.0, activation: str = "Sigmoid",
                     input_name: str = "x", output_name: str = "y", expose_code: bool = False,
                     code_name: str = "h", biases: bool = True, opset: int = OPSET) -> onnx.ModelProto:
    """``x -> sigmoid(act(x W + b1) W^T + b2)`` with one stored ``W`` and a Transpose node.

    Args:
        features, hidden: the kernel's shape.
        seed, weight_scale, bias_scale: see :func:`tied_autoencoder_weights`.
        untied: store ``W^T`` as a second initializer instead (as exporters do).
        rank: 2 (``[batch, features]``) or 3 (adds a middle axis of 2).
        batch: the batch axis: a name (dynamic) or a fixed size.
        transposed_name: the name of ``W^T`` (node output or initializer).
        activation: the encoder's activation op, ``"Sigmoid"`` or ``"Relu"``.
        input_name, output_name: the graph's input and output names.
        expose_code: also output the code (the encoder's output) as a second output.
        code_name: the code's tensor name.
        biases: with ``False``, no bias initializers or ``Add`` nodes (``W`` alone).
    """
    w = tied_autoencoder_weights(features, hidden, seed=seed, weight_scale=weight_scale,
                                 bias_scale=bias_scale)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items() if biases or k == "W"]
    nodes = []
    if untied:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w["W"].T), transposed_name))
    else:
        nodes.append(helper.make_node("Transpose", ["W"], [transposed_name], name="tie", perm=[1, 0]))
    nodes += [
        helper.make_node("MatMul", [input_name, "W"], ["m1"], name="enc"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="enc_bias"),
        helper.make_node(activation, ["a1"], [code_name], name="enc_act"),
        helper.make_node("MatMul", [code_name, transposed_name], ["m2"], name="dec"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="dec_bias"),
        helper.make_node("Sigmoid", ["a2"], [output_name], name="dec_act"),
    ]
    if not biases:  # the activations read the MatMuls directly
        nodes = [n for n in nodes if n.op_type != "Add"]
        nodes[-3].input[0] = "m1"
        nodes[-1].input[0] = "m2"
    shape = [batch, features] if rank == 2 else [batch, 2, features]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, shape)]
    if expose_code:
        outputs.append(helper.make_tensor_value_info(code_name, TensorProto.FLOAT, [*shape[:-1], hidden]))
    graph = helper.make_graph(nodes, "tied_ae",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=IR_VERSION)


def tied_autoencoder_reference(x: np.ndarray, features: int = 8, hidden: int = 3, *, seed: int = 0,
                               weight_scale: float = 1.0, bias_scale: float = 1.0,
                               activation: str = "Sigmoid") -> np.ndarray:
    """The same model in float64 numpy, for parity checks."""
    w = tied_autoencoder_weights(features, hidden, seed=seed, weight_scale=weight_scale,
                                 bias_scale=bias_scale)

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    a = x.astype(np.float64) @ w["W"] + w["b1"]
    h = sigmoid(a) if activation == "Sigmoid" else np.maximum(a, 0.0)
    return sigmoid(h @ w["W"].T + w["b2"])
