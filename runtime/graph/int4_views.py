"""2-D views of higher-rank weights, so that int4 can store them as MatMulNBits tensors.

tf2onnx exports a Keras ``EinsumDense`` kernel (attention's query/key/value
and output projections, e.g. ``[1, 1, 64, 2, 32]``) as a rank-3+ constant that
a ``Reshape`` turns into the 2-D ``B`` of a ``Gemm``/``MatMul``; the shape is
computed by a few nodes over constants (``Concat([-1], ReduceProd(Gather(...)))``).
:func:`flatten_weight_reshapes` evaluates that shape and, when the weight's
only reader is such a ``Reshape`` whose only readers are matrix products,
stores the weight already reshaped under the ``Reshape``'s output name and
drops the ``Reshape``. The bytes are the same (a row-major reshape moves no
value), so the result is exact; :mod:`.int4` then quantizes it like any other
2-D MatMul weight. Weights of a tie, graph outputs and weights that a
subgraph reads are left alone.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .edit import add_initializers, drop_unread_chain, remove_initializers, remove_nodes
from .index import GraphIndex
from .metadata import read_ties

logger = logging.getLogger(__name__)

__all__ = ["flatten_weight_reshapes"]

# Ops a constant shape may be computed by (integer shape arithmetic only).
_SHAPE_OPS = {"Concat", "ReduceProd", "Gather", "Shape", "Cast", "Unsqueeze", "Squeeze", "Slice", "Mul",
              "Constant", "Identity"}
_MAX_SHAPE_NODES = 16
_MATRIX_READERS = {"MatMul", "Gemm"}


def flatten_weight_reshapes(model: onnx.ModelProto, *, keep: set[str] | None = None,
                            ) -> tuple[onnx.ModelProto, list[str]]:
    """Replace ``Reshape(W, shape)`` of a float rank-3+ weight read by MatMul/Gemm with a 2-D ``W``.

    Edits ``model`` in place (a pass, :mod:`.passes`).

    Args:
        model: the model.
        keep: initializer names never to touch (default: the ties of the
            model's record and their members).

    Returns:
        ``(model, views)``: the model and the names of the new 2-D initializers.
    """
    if keep is None:
        keep = {m for t in read_ties(model) for m in (t.initializer, *t.members())}
    graph = model.graph
    index = GraphIndex(graph)
    done = []
    for name, init in list(index.initializers.items()):
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 3 or name in keep or name in index.outputs:
            continue
        readers = index.consumers(name)
        if len(readers) != 1 or name in index.subgraph_reads:
            continue
        reshape = readers[0]
        if reshape.op_type != "Reshape" or list(reshape.input).index(name) != 0 or len(reshape.input) < 2:
            continue
        view = reshape.output[0]
        if view in index.outputs or not all(_matrix_weight(n, view) for n in index.consumers(view) or [None]):
            continue
        shape = _constant(model, reshape.input[1], index)
        array = numpy_helper.to_array(init)
        if shape is None or not _reshapes_to_2d(array.shape, shape):
            continue
        flat = array.reshape(_resolve(array.size, shape))
        remove_initializers(graph, {name}, index=index)
        remove_nodes(graph, [reshape], index=index)
        add_initializers(graph, [numpy_helper.from_array(flat, view)], index=index)
        drop_unread_chain(index, reshape.input[1])
        logger.info("weight %r %s: stored as its 2-D view %r %s", name, list(array.shape), view, list(flat.shape))
        done.append(view)
    return model, done


def _matrix_weight(node: onnx.NodeProto | None, name: str) -> bool:
    """True if ``node`` is a MatMul/Gemm reading ``name`` as its second operand only."""
    return (node is not None and node.op_type in _MATRIX_READERS and node.domain in ("", "ai.onnx")
            and len(node.input) >= 2 and node.input[1] == name and node.input[0] != name
            and name not in node.input[2:])


def _reshapes_to_2d(shape: tuple[int, ...], target: np.ndarray) -> bool:
    target = [int(v) for v in np.asarray(target).ravel()]
    if len(target) != 2 or target.count(-1) > 1 or 0 in target or any(v < -1 for v in target):
        return False
    known = int(np.prod([v for v in target if v != -1]))
    size = int(np.prod(shape))
    return known > 0 and size % known == 0 and (-1 in target or known == size)


def _resolve(size: int, target: np.ndarray) -> tuple[int, int]:
    rows, cols = (int(v) for v in np.asarray(target).ravel())
    return (size // cols, cols) if rows == -1 else (rows, size // rows) if cols == -1 else (rows, cols)


def _constant(model: onnx.ModelProto, name: str, index: GraphIndex) -> np.ndarray | None:
    """The value of ``name`` if a few shape ops compute it from initializers alone, else None."""
    inits = index.initializers
    if name in inits:
        return numpy_helper.to_array(inits[name])
    nodes, leaves, todo = {}, set(), [name]  # id -> node: protobuf == compares whole messages
    while todo:
        current = todo.pop()
        if current in inits:
            leaves.add(current)
            continue
        node = index.producer(current)
        if node is None or node.op_type not in _SHAPE_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if id(node) not in nodes:
            nodes[id(node)] = node
            todo.extend(i for i in node.input if i)
        if len(nodes) > _MAX_SHAPE_NODES:
            return None
    from onnx.reference import ReferenceEvaluator

    order = [n for n in model.graph.node if id(n) in nodes]
    sub = helper.make_graph(order, "shape", [], [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)],
                            [inits[leaf] for leaf in sorted(leaves)])
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    try:
        value = ReferenceEvaluator(helper.make_model(sub, opset_imports=opsets)).run(None, {})[0]
    except Exception:  # noqa: BLE001 - an unevaluable shape only means "leave this weight alone"
        logger.debug("shape %r could not be evaluated; its weight stays as it is", name, exc_info=True)
        return None
    value = np.asarray(value)
    return value if value.dtype.kind in "iu" else None

