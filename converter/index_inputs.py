"""What an integer input *is*, read from the TensorFlow graph the model traces to.

An integer input is used for one of three things, and the values that
exercise it differ:

- token ids: it indexes a weight table (an embedding lookup). Values must stay
  below the table's rows.
- positions: it indexes an activation along an axis (``mask_positions`` of a
  KerasHub masked LM gathers the hidden states at those sequence positions).
  Values must stay below that axis' size, usually the sequence length.
- anything else (a padding mask, a flag): neither.

The name says little (``mask_positions`` contains "mask" and is not a mask),
so the model is traced once and each input is followed through the ops that
carry integer or boolean values, up to the ``indices`` port of a gather. The
walk stops at float tensors (token ids become embeddings there: what follows
no longer is the input) and at shape ops (a shape carries no values).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from .signature import InputSignature

logger = logging.getLogger(__name__)

__all__ = ["IndexUse", "index_uses"]

# TensorFlow gathers and the port of their indices.
_GATHERS = {"GatherV2": 1, "Gather": 1, "ResourceGather": 1, "GatherNd": 1, "ResourceGatherNd": 1}
# Ops whose output is a shape or a size: what flows on says nothing about the values.
_SHAPE_OPS = {"Shape", "ShapeN", "Size", "Rank", "BroadcastArgs", "BroadcastGradientArgs"}
# Ops between a variable and a gather of its value (ReadVariableOp, then maybe Identity or Cast).
_PASS_THROUGH = {"Identity", "Cast", "ReadVariableOp", "IdentityN"}


@dataclass(frozen=True)
class IndexUse:
    """How an integer input is used as an index.

    Attributes:
        kind: ``"vocabulary"`` (indexes a weight table) or ``"position"``
            (indexes an activation along one of its axes).
        bound: the exclusive upper bound when the graph knows it statically
            (a table's rows, a fixed axis), else None: the axis is open, the
            sequence length of the case decides.
    """

    kind: str
    bound: int | None = None


def index_uses(model, signature: InputSignature, names) -> dict[str, IndexUse]:
    """For each input in ``names``, how the model uses it as an index (inputs used as none are left out).

    Traces ``model`` once (``tf.function`` over the signature). A tracing
    failure is logged and answers ``{}``: the caller falls back to its rules.
    """
    import tensorflow as tf

    wanted = [i for i, s in enumerate(signature.specs) if s.name in set(names)]
    if not wanted:
        return {}
    fn = tf.function(lambda *args: model(signature.pack(args), training=False),
                     input_signature=signature.tf_specs())
    try:
        graph = fn.get_concrete_function().graph
    except Exception as exc:  # a model that traces only for tf2onnx's own wrapper still exports
        logger.debug("index inputs not traced: %s: %s", type(exc).__name__, exc)
        return {}
    consumers: dict[str, list] = {}
    for op in graph.get_operations():
        for port, tensor in enumerate(op.inputs):
            consumers.setdefault(tensor.name, []).append((op, port))
    found = {}
    var_shapes = _variable_shapes(graph)
    for i in wanted:
        use = _classify(graph.inputs[i], consumers, var_shapes)
        if use is not None:
            found[signature.specs[i].name] = use
    logger.debug("index inputs: %s", found)
    return found


def _classify(placeholder, consumers, var_shapes) -> IndexUse | None:
    """Follow integer/bool values from ``placeholder`` to the gathers whose indices they are."""
    tables, positions = [], []
    queue, seen = deque([placeholder]), {placeholder.name}
    while queue:
        tensor = queue.popleft()
        for op, port in consumers.get(tensor.name, []):
            if op.type in _SHAPE_OPS:
                continue
            if _GATHERS.get(op.type) == port:
                params = op.inputs[0]
                (tables if _reads_variable(params) else positions).append(_axis_size(op, params, var_shapes))
            for out in op.outputs:
                if (out.dtype.is_integer or out.dtype.is_bool) and out.name not in seen:
                    seen.add(out.name)
                    queue.append(out)
    if tables:
        known = [b for b in tables if b]
        return IndexUse("vocabulary", min(known) if known else None)
    if positions:
        known = [b for b in positions if b]
        return IndexUse("position", min(known) if known else None)
    return None


def _reads_variable(tensor, depth: int = 0) -> bool:
    """Whether ``tensor`` is a variable's value (through reads, identities and casts)."""
    op = tensor.op
    if op.type in ("VarHandleOp", "VariableV2") or tensor.dtype.name == "resource":
        return True
    if op.type in _PASS_THROUGH and op.inputs and depth < 8:
        return _reads_variable(op.inputs[0], depth + 1)
    return False


def _variable_shapes(graph) -> dict[str, list]:
    """Captured variable placeholder name -> the variable's shape (a resource tensor has none)."""
    by_handle = {id(v.handle): v.shape.as_list() for v in getattr(graph, "variables", ())}
    return {inner.name: by_handle[id(outer)] for outer, inner in graph.captures if id(outer) in by_handle}


def _axis_size(op, params, var_shapes) -> int | None:
    """The static size of the axis a gather indexes, when known."""
    import tensorflow as tf

    axis = 0
    if op.type == "GatherV2" and len(op.inputs) > 2:
        value = tf.get_static_value(op.inputs[2])
        if value is None:
            return None
        axis = int(value)
    source = params
    while source.op.type in _PASS_THROUGH and source.op.inputs:
        source = source.op.inputs[0]
    shape = var_shapes.get(source.name)
    if shape is None:
        try:
            shape = params.shape.as_list()
        except ValueError:  # unknown rank
            return None
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]
