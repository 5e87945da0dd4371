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

from .edit import consumers, producers, replace_repeated, transpose_perm, used_names

logger = logging.getLogger(__name__)

__all__ = ["transposed_int8_to_qgemm"]

MS_DOMAIN = "com.microsoft"
_INT8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def transposed_int8_to_qgemm(model: onnx.ModelProto) -> list[str]:
    """Rewrite every matching transposed int8 MatMul (main graph); return the nodes written."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made = producers(graph)
    ranks = _ranks(model)
    rewrites: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in graph.node:
        match = _match(graph, node, inits, made, ranks)
        if match is None:
            continue
        qgemm, removed, final = match
        rewrites[id(final)] = qgemm
        dropped |= {id(n) for n in removed}
    if not rewrites:
        return []
    replace_repeated(graph.node, [rewrites.get(id(n), n) for n in graph.node if id(n) not in dropped])
    _drop_dead(graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    written = [q.name for q in rewrites.values()]
    for name in written:
        logger.info("int8: %s reads its tied tensor through QGemm(transB=1)", name)
    return written


def _match(graph, node, inits, made, ranks):
    """``(QGemm node, nodes it replaces, the node whose place it takes)`` or None."""
    if node.op_type != "MatMulInteger" or len(node.input) != 4:
        return None
    transpose, dql = made.get(node.input[1]), made.get(node.input[0])
    if (transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits
            or dql is None or dql.op_type != "DynamicQuantizeLinear"):
        return None
    weight = inits[transpose.input[0]]
    if (len(weight.dims) != 2 or weight.data_type not in _INT8
            or transpose_perm(transpose, 2) != [1, 0] or node.input[2] != dql.output[2]
            or ranks.get(dql.input[0]) != 2 or not _scalar(inits.get(node.input[3]))):
        return None
    cast = _only_consumer(graph, node.output[0], "Cast")
    mul = cast and _only_consumer(graph, cast.output[0], "Mul")
    if mul is None:
        return None
    scales = made.get(next((i for i in mul.input if i != cast.output[0]), ""))
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    b_scale = next((i for i in scales.input if i != dql.output[1]), "")
    if not _scalar(inits.get(b_scale)):
        return None
    qgemm = helper.make_node(
        "QGemm", [dql.output[0], dql.output[1], dql.output[2], weight.name, b_scale, node.input[3]],
        [mul.output[0]], name=f"tiedonnx_int8/{node.name or node.output[0]}/qgemm",
        domain=MS_DOMAIN, transB=1)
    return qgemm, [node, cast], mul


def _only_consumer(graph, name: str, op_type: str):
    found = consumers(graph, name)
    if len(found) != 1 or found[0].op_type != op_type or name in {o.name for o in graph.output}:
        return None
    to = {a.name: helper.get_attribute_value(a) for a in found[0].attribute}.get("to")
    if op_type == "Cast" and to != onnx.TensorProto.FLOAT:
        return None
    return found[0]


def _scalar(init) -> bool:
    return init is not None and int(np.prod(init.dims)) == 1 and numpy_helper.to_array(init).size == 1


def _drop_dead(graph) -> None:
    """Drop nodes whose outputs nothing reads any more (the Transpose, the scales Mul)."""
    while True:
        used = used_names(graph)
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            return
        replace_repeated(graph.node, live)


def _ranks(model) -> dict[str, int]:
    """Rank of every value ONNX shape inference can tell."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    ranks = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks
