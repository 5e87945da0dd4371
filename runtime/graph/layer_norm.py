"""Fuse Keras's layer normalization, as tf2onnx writes it, into one ``LayerNormalization`` node.

Keras 3 computes ``LayerNormalization`` from ``moments`` and folds the scale
into one multiplier; tf2onnx writes a mean over the last axis of a rank-3
tensor as ``GlobalAveragePool``, so each normalization becomes 13 nodes::

    mean = GlobalAveragePool(x)                var = GlobalAveragePool(Mul(d, d)), d = Sub(x, mean)
    r = Reciprocal(Sqrt(Add(var, epsilon)))    g = Mul(r, gamma)
    y = Add(Mul(x, g), Add(Mul(Neg(mean), g), beta))

onnxruntime's own fusions do not recognise that form, and runs the 13 nodes
as written. In a decoder step of a small language model each node costs about
as much as a matrix product (per-node overhead), so a GPT-2 layer's two
normalizations are a fifth of its nodes. This pass writes each as
``LayerNormalization(x, gamma, beta, axis=-1, epsilon)`` (ONNX opset 17),
which computes the same function: outputs agree to float rounding.

Matched only when every intermediate value is read by the pattern alone, the
input is known to be rank 3 (``GlobalAveragePool`` then averages the last
axis, which is what ``axis=-1`` normalizes), ``gamma`` and ``beta`` are 1-D
float initializers of the last axis' size, ``epsilon`` is a scalar constant,
and the model imports opset 17 or later. Edits in place and returns the model
and the number of normalizations fused; idempotent.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .edit import main_opset, remove_initializers, replace_repeated
from .index import GraphIndex, only_consumer

logger = logging.getLogger(__name__)

__all__ = ["fuse_layer_norms"]

#: The first ONNX opset with ``LayerNormalization``.
LAYER_NORM_OPSET = 17


def _other_input(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not ``name`` (None if it is not one of them)."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _vector(index: GraphIndex, name: str, size: int) -> bool:
    """A float initializer of ``size`` values along its last axis (``[size]``, ``[1, 1, size]``)."""
    init = index.initializers.get(name)
    return (init is not None and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
            and len(init.dims) >= 1 and init.dims[-1] == size and all(d == 1 for d in init.dims[:-1]))


def _scalar(index: GraphIndex, name: str) -> float | None:
    init = index.initializers.get(name)
    if init is None or int(np.prod(init.dims, dtype=np.int64)) != 1:
        return None
    return float(numpy_helper.to_array(init).reshape(-1)[0])


def _only(index: GraphIndex, name: str, op_type: str) -> onnx.NodeProto | None:
    return only_consumer(index, name, (op_type,))


def _match(mean: onnx.NodeProto, index: GraphIndex, ranks: dict) -> tuple[list, dict] | None:
    """The 13 nodes of one normalization starting at its mean, and the fused node's parts."""
    x = mean.input[0]
    shape = ranks.get(x)
    if shape is None or len(shape) != 3 or not isinstance(shape[2], int):
        return None
    readers = index.consumers(mean.output[0])
    if mean.output[0] in index.outputs or sorted(n.op_type for n in readers) != ["Neg", "Sub"]:
        return None
    sub = next(n for n in readers if n.op_type == "Sub")
    neg = next(n for n in readers if n.op_type == "Neg")
    if list(sub.input) != [x, mean.output[0]]:
        return None
    square = _only(index, sub.output[0], "Mul")
    if square is None or list(square.input) != [sub.output[0]] * 2:
        return None
    var = _only(index, square.output[0], "GlobalAveragePool")
    add_eps = var and _only(index, var.output[0], "Add")
    epsilon = add_eps and _scalar(index, _other_input(add_eps, var.output[0]) or "")
    sqrt = epsilon is not None and add_eps and _only(index, add_eps.output[0], "Sqrt")
    recip = sqrt and _only(index, sqrt.output[0], "Reciprocal")
    scale = recip and _only(index, recip.output[0], "Mul")
    gamma = scale and _other_input(scale, recip.output[0])
    if not gamma or not _vector(index, gamma, shape[2]):
        return None
    uses = index.consumers(scale.output[0])
    if scale.output[0] in index.outputs or len(uses) != 2 or any(n.op_type != "Mul" for n in uses):
        return None
    x_mul = next((n for n in uses if _other_input(n, scale.output[0]) == x), None)
    mean_mul = next((n for n in uses if _other_input(n, scale.output[0]) == neg.output[0]), None)
    if x_mul is None or mean_mul is None or _only(index, neg.output[0], "Mul") is not mean_mul:
        return None
    shift = _only(index, mean_mul.output[0], "Add")
    beta = shift and _other_input(shift, mean_mul.output[0])
    if not beta or not _vector(index, beta, shape[2]):
        return None
    final = _only(index, shift.output[0], "Add")
    if final is None or _only(index, x_mul.output[0], "Add") is not final:
        return None
    nodes = [mean, sub, neg, square, var, add_eps, sqrt, recip, scale, x_mul, mean_mul, shift, final]
    return nodes, {"x": x, "gamma": gamma, "beta": beta, "epsilon": epsilon, "y": final.output[0]}


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with float initializers reduced to name, type and dims: all shape inference needs."""
    bare = onnx.ModelProto(ir_version=model.ir_version)
    bare.opset_import.extend(model.opset_import)
    graph = bare.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64:  # shapes and axes: their values matter
            graph.initializer.append(init)
        else:
            graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
    return bare


def _ranks(model: onnx.ModelProto) -> dict[str, list]:
    """Each value's shape from onnx's shape inference (ints where known, else the symbol)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def _flatten_parameters(graph: onnx.GraphProto, index: GraphIndex, fused: dict, gone: set) -> None:
    """Give each fused node 1-D scale and bias (LayerNormalization's shape for axis=-1).

    tf2onnx stores them as ``[1, 1, size]`` and shares equal ones between
    layers: an initializer that only fused nodes read is reshaped in place; one
    that other nodes also read gets a 1-D copy beside it (a few hundred bytes).
    """
    copies: dict[str, str] = {}
    for node in fused.values():
        for position in (1, 2):
            name = node.input[position]
            init = index.initializers[name]
            if len(init.dims) == 1:
                continue
            if all(id(r) in gone for r in index.consumers(name)):
                init.dims[:] = [init.dims[-1]]
                continue
            if name not in copies:
                flat = numpy_helper.from_array(numpy_helper.to_array(init).reshape(-1), f"{name}/layer_norm_1d")
                graph.initializer.append(flat)
                copies[name] = flat.name
            node.input[position] = copies[name]


def fuse_layer_norms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Write each Keras layer normalization as one ``LayerNormalization`` node (see the module doc)."""
    graph = model.graph
    if main_opset(model) < LAYER_NORM_OPSET or not any(n.op_type == "GlobalAveragePool" for n in graph.node):
        return model, 0
    ranks = _ranks(_without_weights(model))
    index = GraphIndex(graph)
    fused: dict[int, onnx.NodeProto] = {}  # id of each match's final node -> its replacement
    gone: set[int] = set()
    for node in graph.node:
        if node.op_type != "GlobalAveragePool" or id(node) in gone:
            continue
        found = _match(node, index, ranks)
        if found is None:
            continue
        nodes, parts = found
        gone.update(id(n) for n in nodes)
        fused[id(nodes[-1])] = helper.make_node(
            "LayerNormalization", [parts["x"], parts["gamma"], parts["beta"]], [parts["y"]],
            name=f"{nodes[-1].name or parts['y']}/fused_layer_norm", axis=-1, epsilon=parts["epsilon"])
    if not fused:
        return model, 0
    _flatten_parameters(graph, index, fused, gone)
    was_read = {name for n in graph.node if id(n) in gone for name in n.input}
    replace_repeated(graph.node, [fused.get(id(n), n) for n in graph.node
                                  if id(n) not in gone or id(n) in fused])
    still_read = {name for n in graph.node for name in n.input} | index.outputs
    remove_initializers(graph, was_read - still_read)  # the epsilons, now attributes
    logger.info("layer norms: %d fused into LayerNormalization (%d nodes fewer)", len(fused), 12 * len(fused))
    return model, len(fused)
