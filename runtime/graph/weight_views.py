"""Fold ``Reshape`` / ``Transpose`` of an untied weight into the weight itself.

tf2onnx keeps some Keras kernels in the layout the layer stores them and
reshapes or transposes them in the graph: KerasHub's attention output kernel
``[heads, head_dim, hidden]`` reaches its ``MatMul`` as
``Transpose(Reshape(W, [-1, hidden]))`` after the shape-chain pass. onnxruntime
folds such constant chains when a session starts, so it costs nothing at run
time, but a quantizer sees a ``MatMul`` whose weight is not an initializer and
leaves it in float: on the GPT-2 small configuration that is one 768 x 768
matrix per layer kept in fp32 in an int8 or int4 file.

This pass stores the weight already reshaped/transposed, under the view's
output name, when the initializer has exactly one reader (that view): a tied
weight has two readers and is never touched, so the tie is still stored once.
Reshape needs a constant target shape. Values are bit for bit the same; the
file holds one tensor where it held one. Edits in place and returns the model
and the number of views folded; idempotent.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .edit import replace_repeated

logger = logging.getLogger(__name__)

__all__ = ["fold_weight_views"]

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _perm(node: onnx.NodeProto, rank: int) -> list[int]:
    for attribute in node.attribute:
        if attribute.name == "perm":
            return list(attribute.ints)
    return list(range(rank))[::-1]  # ONNX's default: reverse the axes


def _folded(node: onnx.NodeProto, inits: dict) -> np.ndarray | None:
    """The view's value, or None when it is not a view of a weight with constant arguments."""
    weight = inits.get(node.input[0]) if node.input else None
    if weight is None or weight.data_type not in _FLOATS or weight.data_location == onnx.TensorProto.EXTERNAL:
        return None
    value = numpy_helper.to_array(weight)
    if node.op_type == "Transpose":
        return np.ascontiguousarray(value.transpose(_perm(node, value.ndim)))
    shape_init = inits.get(node.input[1]) if len(node.input) > 1 else None
    allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if shape_init is None or shape_init.data_type != onnx.TensorProto.INT64 or allow_zero:
        return None
    shape = [int(d) for d in numpy_helper.to_array(shape_init).reshape(-1)]
    shape = [value.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # 0: copy that dim
    try:
        return value.reshape(shape)
    except ValueError:
        return None


def _copy_elsewhere(value: np.ndarray, source: str, inits: dict) -> bool:
    """True when another initializer holds ``value`` or its transpose.

    tf2onnx sometimes stores one Keras kernel twice, in two layouts (one of them
    reshaped, so ``retie`` saw no duplicate): folding the view would make the two
    copies equal, which the export's no-duplicates proof refuses. Such a view is
    left as it was (both copies stay, as before this pass).
    """
    for init in inits.values():
        if init.name == source or init.data_type not in _FLOATS or \
                int(np.prod(init.dims, dtype=np.int64)) != value.size:
            continue
        other = numpy_helper.to_array(init)
        if np.array_equal(other.reshape(-1), value.reshape(-1)):
            return True
        if other.ndim == value.ndim <= 4 and any(  # the export's proof also sees every transposition
                other.shape == tuple(value.shape[a] for a in perm) and np.array_equal(other, value.transpose(perm))
                for perm in itertools.permutations(range(value.ndim))):
            return True
    return False


def fold_weight_views(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Store each view of a single-reader weight as the weight (see the module doc)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    folded = 0
    while True:
        inits = {i.name: i for i in graph.initializer}
        readers: dict[str, int] = {}
        for node in graph.node:
            for name in set(node.input):
                readers[name] = readers.get(name, 0) + 1
        done, arguments = set(), set()
        for node in graph.node:
            if (node.op_type not in ("Reshape", "Transpose") or readers.get(node.input[0] if node.input else "") != 1
                    or node.input[0] in outputs or node.output[0] in outputs or node.input[0] in done):
                continue
            value = _folded(node, inits)
            if value is None or _copy_elsewhere(value, node.input[0], inits):
                continue
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            done.add(node.input[0])
            arguments.update(node.input[1:])
        if not done:
            break
        replace_repeated(graph.initializer, [i for i in graph.initializer if i.name not in done])
        replace_repeated(graph.input, [i for i in graph.input if i.name not in done])
        replace_repeated(graph.node, [n for n in graph.node
                                      if not (n.op_type in ("Reshape", "Transpose") and n.input
                                              and n.input[0] in done)])
        folded += len(done)
        still_read = {name for n in graph.node for name in n.input}
        replace_repeated(graph.initializer, [i for i in graph.initializer  # target shapes only these read
                                             if i.name not in arguments or i.name in still_read])
    if folded:
        logger.info("weight views: %d reshape/transpose of untied weights stored as the weight", folded)
    return model, folded
