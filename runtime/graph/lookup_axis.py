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
that the lookup reads. :func:`leave_tie_unpacked` (the next pass) lists such a
tie among the graph's inputs as well: onnxruntime then treats it as an
overridable initializer, which it neither folds nor pre-packs, so the session
holds it once with every other weight still pre-packed. onnxruntime's integer
MatMul kernels pre-pack only a constant 2-D B (``MatMulIntegerBase::PrePack``).
Measured on the GPT-2 small int8 decoder (2 threads, 2-core AMD EPYC, load 3-4;
the commands are in the README's "Generate text"):

==========================================  ===================  ==================
tie                                          session (x file)     decode step, past 128
==========================================  ===================  ==================
constant (pre-packed copy + original)         177.9 MiB (1.46x)    34.5 ms
graph input too (held once)                   141.1 MiB (1.16x)    38.2 ms (0.90x)
stored ``[1, hidden, vocab]`` (3-D B)         141.1 MiB (1.16x)    37.0 ms
pre-packing off for the session (``lean``)    140.4 MiB (1.15x)    about 0.6x
==========================================  ===================  ==================

The 3-D form would change the stored tensor's shape and the tie record; the
graph-input form changes nothing but the input list (``get_inputs()`` leaves
overridable initializers out, so the decoder's contract is unchanged).
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from .edit import consumers, gathers_rows, transpose_perm, value_ranks
from .index import GraphIndex
from .metadata import read_ties, write_ties

logger = logging.getLogger(__name__)

__all__ = ["gather_transposed_columns", "leave_tie_unpacked"]


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


_INT8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def leave_tie_unpacked(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """List an 8-bit tie read by a lookup and an integer MatMul as a graph input too; a pass (:mod:`.passes`).

    onnxruntime neither constant-folds nor pre-packs an initializer that is also
    a graph input, so the projection reads the stored tie instead of a packed
    copy kept beside it (see the module docstring for the cost). Ties read
    otherwise, and float or 4-bit ties, are left alone. Edits ``model`` in place;
    returns it and the number of ties listed.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    listed = {i.name for i in graph.input}
    added = 0
    for tie in read_ties(model):
        init = inits.get(tie.initializer)
        if init is None or init.data_type not in _INT8 or tie.initializer in listed:
            continue
        readers = consumers(graph, tie.initializer)
        looked_up = any(n.op_type == "Gather" and n.domain in ("", "ai.onnx") and n.input[0] == tie.initializer
                        and tie.initializer not in n.input[1:] for n in readers)
        projected = any(n.op_type == "MatMulInteger" and n.input[1] == tie.initializer for n in readers)
        if looked_up and projected:
            graph.input.append(helper.make_tensor_value_info(tie.initializer, init.data_type, list(init.dims)))
            added += 1
    if added:
        logger.info("%d int8 tie(s) listed as graph inputs: held once, not pre-packed", added)
    return model, added
