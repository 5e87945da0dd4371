"""Fold "stack, then pick one": ``Squeeze(Slice(Concat(Unsqueeze(x_0), ...), i, i+1))`` -> ``x_i``.

KerasHub's ``call_with_cache`` keeps every layer's cache in one stacked tensor
(``ops.stack`` of the layers' ``[key, value]`` stacks) and each layer reads
its part back with ``cache[:, i, ...]``; the generation decoder then picks each
layer's key and value out of the returned stack. tf2onnx writes ``ops.stack``
as ``Unsqueeze`` + ``Concat`` and the pick as ``Slice`` + ``Squeeze``, which
onnxruntime runs as written: every step copies the whole cache into the stack
and back out, several times per layer. The pick of a stack's element is that
element, so this pass reads it directly; the stacks that nothing else reads
then go (they were only copies).

Outputs are unchanged bit for bit (the same values, without the copies).
Edits in place and returns the model and the number of picks folded;
idempotent.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .edit import attribute, drop_dead_nodes, int64_constant, remove_initializers, rename_uses, replace_repeated

logger = logging.getLogger(__name__)

__all__ = ["fold_stack_picks"]


def _ints(node: onnx.NodeProto, position: int, name: str, constants: dict) -> list[int] | None:
    """An int list given as input ``position`` (a constant) or as attribute ``name`` (older opsets)."""
    if len(node.input) > position and node.input[position]:
        value = constants.get(node.input[position])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    value = attribute(node, name)
    return None if value is None else list(value)


def _axis(node: onnx.NodeProto) -> int | None:
    return attribute(node, "axis")


# Slice ends at or past this are "to the end" (tf2onnx writes INT32_MAX; ONNX clamps).
_TO_END = 2**31 - 1


def _slice_index(sliced, axis: int, constants: dict) -> int | None:
    """``i`` when ``sliced`` takes ``i:i+1`` on ``axis`` and everything on its other axes, else None."""
    starts, ends = _ints(sliced, 1, "starts", constants), _ints(sliced, 2, "ends", constants)
    axes = _ints(sliced, 3, "axes", constants)
    steps = _ints(sliced, 4, "steps", constants) if len(sliced.input) > 4 and sliced.input[4] else None
    if starts is None or ends is None or axes is None or len(starts) != len(ends) or len(ends) != len(axes):
        return None
    if steps is not None and any(step != 1 for step in steps):
        return None
    index = None
    for start, end, a in zip(starts, ends, axes):
        if a == axis and start >= 0 and end == start + 1:
            index = start
        elif a == axis or start != 0 or end < _TO_END:
            return None
    return index


def _picked(squeeze, producers: dict, constants: dict) -> str | None:
    """The stacked element a ``Squeeze`` picks, or None when it is not a pick of a stack."""
    axes = _ints(squeeze, 1, "axes", constants)
    sliced = producers.get(squeeze.input[0])
    if axes is None or len(axes) != 1 or sliced is None or sliced.op_type != "Slice":
        return None
    index = _slice_index(sliced, axes[0], constants)
    stack = producers.get(sliced.input[0])
    if index is None or stack is None or stack.op_type != "Concat":
        return None
    members = _stack_members(stack, producers, constants)
    if members is None or _axis(stack) != axes[0] or index >= len(members):
        return None  # a concatenation of other tensors: element i is not input i
    return members[index]


def _stack_members(stack, producers: dict, constants: dict) -> list[str] | None:
    """The tensors a ``Concat`` stacks (each ``Unsqueeze``-d on the concat axis), or None."""
    if stack is None or stack.op_type != "Concat":
        return None
    axis = _axis(stack)
    if axis is None or axis < 0:
        return None
    members = []
    for name in stack.input:
        node = producers.get(name)
        if node is None or node.op_type != "Unsqueeze" or _ints(node, 1, "axes", constants) != [axis]:
            return None
        members.append(node.input[0])
    return members


def _shape_of_stack(node, producers: dict, constants: dict, graph: onnx.GraphProto) -> list | None:
    """``Shape(stack)`` as ``Shape(member)`` with the stacked count inserted: no copy just for a shape."""
    from onnx import helper

    if node.op_type != "Shape" or node.attribute:
        return None
    stack = producers.get(node.input[0])
    members = _stack_members(stack, producers, constants) if stack is not None else None
    if not members:
        return None
    axis, base = _axis(stack), node.output[0]
    consts = {"head_end": [axis], "tail_start": [axis], "count": [len(members)], "zero": [0], "end": [_TO_END]}
    names = {key: int64_constant(graph, value, f"{base}/stack_pick_{key}") for key, value in consts.items()}
    return [
        helper.make_node("Shape", [members[0]], [f"{base}/member"], name=f"{base}/stack_pick_shape"),
        helper.make_node("Slice", [f"{base}/member", names["zero"], names["head_end"]], [f"{base}/head"],
                         name=f"{base}/stack_pick_head"),
        helper.make_node("Slice", [f"{base}/member", names["tail_start"], names["end"]], [f"{base}/tail"],
                         name=f"{base}/stack_pick_tail"),
        helper.make_node("Concat", [f"{base}/head", names["count"], f"{base}/tail"], [base], axis=0,
                         name=f"{base}/stack_pick_concat"),
    ]


def _rewrite_stack_shapes(graph: onnx.GraphProto, constants: dict) -> int:
    producers = {o: n for n in graph.node for o in n.output}
    nodes, rewritten = [], 0
    for node in graph.node:
        replacement = _shape_of_stack(node, producers, constants, graph)
        nodes += replacement or [node]
        rewritten += replacement is not None
    if rewritten:
        replace_repeated(graph.node, nodes)
    return rewritten


def fold_stack_picks(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Read each picked stack element directly and drop what only the picks read (see module doc)."""
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                 if i.data_type == onnx.TensorProto.INT64 and len(i.dims) <= 1}
    outputs = {o.name for o in graph.output}
    folded = 0
    while True:
        producers = {o: n for n in graph.node for o in n.output}
        renames, changed = {}, 0
        for node in graph.node:
            source = _picked(node, producers, constants) if node.op_type == "Squeeze" else None
            if source is None:
                continue
            changed += 1
            if node.output[0] in outputs:  # callers know it by name: it stays, as an Identity
                del node.input[:]
                node.input.append(source)
                node.op_type = "Identity"
                del node.attribute[:]
            else:
                renames[node.output[0]] = source
        if not changed:
            break
        rename_uses(graph, renames)
        folded += changed
        drop_dead_nodes(graph)
    folded += _rewrite_stack_shapes(graph, constants)
    if not folded:
        return model, 0
    drop_dead_nodes(graph)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    remove_initializers(graph, lambda init: init.name not in used and init.name in constants)
    if folded:
        logger.info("stack picks: %d element(s) read directly; the stacked copies they came from are gone", folded)
    return model, folded

