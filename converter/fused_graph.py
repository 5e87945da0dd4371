"""Writing an ONNX graph node by node, and onnxruntime's fused normalizations (:mod:`.generation_fused`)."""

from __future__ import annotations

import numpy as np

from tiedonnx.runtime.graph.edit import MS_DOMAIN

__all__ = ["BATCH", "NEW", "PAST", "PRESENT", "TOTAL", "Graph", "rms_norm", "skip_layer_norm", "skip_norm"]

#: Symbolic axes, named as Optimum names them: transformers.js fills an empty first past by these
#: names (``batch_size`` from the input ids; any name it does not know gets size 0).
BATCH, NEW, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
#: The present's positions: the past and the new ones, or a shared buffer's length (:mod:`.generation_fused`).
PRESENT = "present_sequence_length"


class Graph:
    """Nodes and initializers, with short unique names."""

    def __init__(self):
        from onnx import helper

        self.helper, self.nodes, self.initializers, self._count = helper, [], [], 0
        self.value_info = []  # the fused ops' outputs: onnx's shape inference cannot type them

    def typed(self, name: str, dims: list) -> str:
        from onnx import TensorProto

        self.value_info.append(self.helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        return name

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs, outputs=1, domain: str = "", **attributes):
        if isinstance(outputs, int):
            names = [self.name(op_type.lower()) for _ in range(outputs)]
        else:
            names = [self.name(op_type.lower()) if n is None else n for n in outputs]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, name=self.name(op_type),
                                                domain=domain, **attributes))
        return names[0] if len(names) == 1 else names


def rms_norm(g: Graph, x: str, scale: str, epsilon: float) -> str:
    """The RMS norm as onnxruntime's SimplifiedLayerNormFusion expects it (Pow, ReduceMean, Add, Sqrt, Div, Mul)."""
    mean = g.op("ReduceMean", [g.op("Pow", [x, g.constant("two", np.float32(2.0))])], axes=[-1], keepdims=1)
    root = g.op("Sqrt", [g.op("Add", [mean, g.constant("epsilon", np.float32(epsilon))])])
    return g.op("Mul", [g.op("Div", [x, root]), scale])


def skip_norm(g: Graph, x: str, skip: str, scale: str, epsilon: float, hidden: int) -> tuple[str, str]:
    """``SkipSimplifiedLayerNormalization``: the RMS norm of ``x + skip``, and ``x + skip`` (the next residual)."""
    normed, _, _, total = g.op("SkipSimplifiedLayerNormalization", [x, skip, scale], outputs=[None, "", "", None],
                               domain=MS_DOMAIN, epsilon=epsilon)
    return g.typed(normed, [BATCH, NEW, hidden]), g.typed(total, [BATCH, NEW, hidden])


def skip_layer_norm(g: Graph, x: str, skip: str, gamma: str, beta: str, bias: str | None, epsilon: float,
                    hidden: int) -> tuple[str, str]:
    """``SkipLayerNormalization``: the layer norm of ``x + skip + bias``, and that sum (the next residual)."""
    normed, _, _, total = g.op("SkipLayerNormalization", [x, skip, gamma, beta] + ([bias] if bias else []),
                               outputs=[None, "", "", None], domain=MS_DOMAIN, epsilon=epsilon)
    return g.typed(normed, [BATCH, NEW, hidden]), g.typed(total, [BATCH, NEW, hidden])
