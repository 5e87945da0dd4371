"""Row lookups of a transposed 2-D weight read it on axis 1, so nothing folds into a second copy.

An int8 language-model tie is stored in the layout of its integer projection
(``MatMulInteger``'s B: ``[hidden, vocabulary]``), and the token lookup reads
its rows through ``Gather(Transpose(W), ids)``. onnxruntime constant-folds that
``Transpose`` at session start into a second copy of the tie, whatever the
session options. ``Gather(W, ids, axis=1)`` followed by a ``Transpose`` of the
gathered columns (an activation, ``[hidden, batch, sequence]`` ->
``[batch, sequence, hidden]``) gives the same rows from the stored tensor.

Measured on GPT-2 small's int8 tie (``[768, 50257]``, 36.8 MiB; a graph of the
tie's ``MatMulInteger`` and its lookup; RSS growth over session creation after
``malloc_trim``, onnxruntime 1.32, 2-core AMD EPYC):

=======================================  ===============  ================
lookup                                    pre-packing on   pre-packing off
=======================================  ===============  ================
``Gather(Transpose(W))`` (before)          83.6 MiB         83.4 MiB
``Gather(W, axis=1)`` + ``Transpose``      83.5 MiB         46.4 MiB
=======================================  ===============  ================

The projection's pre-packed B is a copy of its own, kept beside the original
that the lookup reads; ``memory="lean"`` disables pre-packing where a weight is
read by several nodes (:mod:`tiedonnx.runtime.lean`), so the tie is then held
once.
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from .edit import gathers_rows, transpose_perm, value_ranks
from .index import GraphIndex
from .metadata import read_ties, write_ties

logger = logging.getLogger(__name__)

__all__ = ["gather_transposed_columns"]


def _transposed_lookup(index: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The ``Transpose([1, 0])`` of a 2-D initializer that ``node`` (a row ``Gather``) reads, or None."""
    if not node.input or not gathers_rows(node, node.input[0]):
        return None
    transpose = index.producer(node.input[0])
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in index.initializers:
        return None
    weight = index.initializers[transpose.input[0]]
    return transpose if len(weight.dims) == 2 and transpose_perm(transpose, 2) == [1, 0] else None


def gather_transposed_columns(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite ``Gather(Transpose(W), ids)`` as ``Transpose(Gather(W, ids, axis=1))``; a pass (:mod:`.passes`).

    ``W`` is a 2-D initializer. Needs the rank of ``ids`` (ONNX shape
    inference); a lookup whose ids have no known rank is left as it is. A
    ``Transpose`` nothing else reads is removed; the tie record's use at it now
    names the column gather's output (still a transposed use of the stored
    tensor, so ``inspect``'s untied size is unchanged). Edits ``model`` in
    place; returns it and the number of lookups rewritten.
    """
    graph = model.graph
    index = GraphIndex(graph)
    found = [(node, t) for node in graph.node if (t := _transposed_lookup(index, node)) is not None]
    if not found:
        return model, 0
    ranks = value_ranks(model)
    nodes, moved, taken = list(graph.node), {}, set()
    for node, transpose in found:
        rank = ranks.get(node.input[1])
        if rank is None:
            logger.info("lookup %r: the rank of its ids %r is unknown; left reading a transposed copy",
                        node.name, node.input[1])
            continue
        columns = index.fresh_name(node.output[0] + "_columns", taken)
        gather = helper.make_node("Gather", [transpose.input[0], node.input[1]], [columns], axis=1,
                                  name=index.fresh_name(node.name + "_axis1", taken))
        move = helper.make_node("Transpose", [columns], [node.output[0]], perm=[*range(1, rank + 1), 0],
                                name=index.fresh_name(node.name + "_rows", taken))
        at = next(k for k, n in enumerate(nodes) if n is node)
        nodes[at:at + 1] = [gather, move]
        index.drop_node(node)
        for added in (gather, move):
            index.add_node(added)
        moved.setdefault(transpose.output[0], columns)
    unread = {id(t) for _, t in found if not index.is_read(t.output[0])}
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in unread)
    _repoint_uses(model, moved)
    logger.info("%d lookup(s) of a transposed weight now gather its columns (no folded copy)", len(moved))
    return model, sum(1 for _, t in found if t.output[0] in moved)


def _repoint_uses(model: onnx.ModelProto, moved: dict[str, str]) -> None:
    """A tie use recorded at a rewritten ``Transpose`` is now read through the column gather's output."""
    ties = read_ties(model)
    if not moved or not ties:
        return
    for tie in ties:
        for use in tie.uses:
            use.output = moved.get(use.output, use.output)
    write_ties(model, ties)
