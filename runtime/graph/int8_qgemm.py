"""Transposed int8 uses of a tie as ``QGemm(transB=1)`` over the stored tensor.

An int8 tie's transposed use reads ``Transpose(W_q)``. onnxruntime folds that
Transpose into a second int8 tensor when it optimizes an ``.onnx`` at session
start, but an ``.ort`` file is loaded without graph optimizations, so there it
ran on every call, and the ``MatMulInteger`` behind it could not pre-pack a
weight that is not an initializer: measured 2.2x the ``.onnx``'s batch-1 time
on the 784-256 autoencoder (onnxruntime 1.32, 2-core AMD EPYC).

``quantize_dynamic`` writes each int8 MatMul as::

    DynamicQuantizeLinear(A) -> a_q, a_scale, a_zp
    Mul(a_scale, b_scale) -> scales
    MatMulInteger(a_q, B, a_zp, b_zp) -> acc
    Cast(acc, to=FLOAT) -> acc_f
    Mul(acc_f, scales) -> Y

Where ``B`` is ``Transpose(W_q)`` (perm ``[1, 0]``) of a rank-2 initializer,
``A`` has rank 2 and ``b_scale``/``b_zp`` are per-tensor, this pass writes
instead::

    QGemm(a_q, a_scale, a_zp, W_q, b_scale, b_zp, transB=1) -> Y   (com.microsoft)

QGemm's float output is ``a_scale * b_scale * sum((a - a_zp) * (b - b_zp))``,
the same arithmetic, and onnxruntime's CPU kernel pre-packs ``W_q`` transposed
at session start (``IsBTransposed``), reading the one stored tensor.

Edits the model in place; idempotent (nothing matches a second time).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .edit import MS_DOMAIN, attribute, drop_dead_nodes, insert_after, remove_nodes, transpose_perm, value_ranks
from .index import GraphIndex, match_parent_path, only_consumer

logger = logging.getLogger(__name__)

__all__ = ["transposed_int8_to_qgemm"]

_INT8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def transposed_int8_to_qgemm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite every matching transposed int8 MatMul (main graph), in place (a pass, :mod:`.passes`).

    Returns:
        ``(model, written)``: the model and the names of the QGemm nodes written.
    """
    graph = model.graph
    index = GraphIndex(graph)
    ranks = value_ranks(model)
    written = []
    for node in list(graph.node):
        match = _match(index, node, ranks)
        if match is None:
            continue
        qgemm, removed, final = match
        insert_after(graph, final, qgemm, index=index)  # in the place of ``final``
        remove_nodes(graph, [*removed, final], index=index)
        written.append(qgemm.name)
    if not written:
        return model, []
    drop_dead_nodes(graph)  # the Transpose, the scales Mul
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    for name in written:
        logger.info("int8: %s reads its tied tensor through QGemm(transB=1)", name)
    return model, written


def _match(index: GraphIndex, node, ranks):
    """``(QGemm node, nodes it replaces, the node whose place it takes)`` or None."""
    if node.op_type != "MatMulInteger" or len(node.input) != 4:
        return None
    transpose = match_parent_path(index, node, [("Transpose", 1)])
    dql = match_parent_path(index, node, [("DynamicQuantizeLinear", 0)])
    if transpose is None or dql is None:
        return None
    (transpose,), (dql,) = transpose, dql
    weight = index.initializers.get(transpose.input[0])
    if (weight is None or len(weight.dims) != 2 or weight.data_type not in _INT8
            or transpose_perm(transpose, 2) != [1, 0] or node.input[2] != dql.output[2]
            or ranks.get(dql.input[0]) != 2 or not _scalar(index.initializers.get(node.input[3]))):
        return None
    cast = only_consumer(index, node.output[0], ["Cast"])
    if cast is None or attribute(cast, "to") != onnx.TensorProto.FLOAT:
        return None
    mul = only_consumer(index, cast.output[0], ["Mul"])
    if mul is None:
        return None
    scales = index.producer(next((i for i in mul.input if i != cast.output[0]), ""))
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    b_scale = next((i for i in scales.input if i != dql.output[1]), "")
    if not _scalar(index.initializers.get(b_scale)):
        return None
    qgemm = helper.make_node(
        "QGemm", [dql.output[0], dql.output[1], dql.output[2], weight.name, b_scale, node.input[3]],
        [mul.output[0]], name=f"tiedonnx_int8/{node.name or node.output[0]}/qgemm",
        domain=MS_DOMAIN, transB=1)
    return qgemm, [node, cast], mul


def _scalar(init) -> bool:
    return init is not None and int(np.prod(init.dims)) == 1 and numpy_helper.to_array(init).size == 1
