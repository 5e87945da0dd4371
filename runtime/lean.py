"""``memory="lean"``: one in-memory copy per tied weight.

What onnxruntime does with a tied graph (``Transpose(W)`` feeding the decoder's
``MatMul``) under its default, full optimizations: constant folding turns
``Transpose(W)`` into a second initializer and each consumer pre-packs its
weight, so a tie sits in memory twice.

Measured on this project's 2-core CPU host (onnxruntime 1.32, a 4096x2048
float32 tie = 32 MiB; RSS growth of a fresh process over session creation and
one run, ``scripts/bench_runtime.py`` re-measures it):

=====================================================  ===========
graph / session options                                 session MB
=====================================================  ===========
Transpose + MatMul, full optimizations (``fast``)       74
same, pre-packing disabled                              74
Gemm(transB=1) over W, pre-packing on                   74
Gemm(transB=1) over W, pre-packing disabled            42
=====================================================  ===========

So lean needs both: the rewrite (nothing left to fold) and no packed second
copy of ``W``. An fp32 ``W`` read directly by several nodes after the rewrite
is listed as a graph input of the session's copy of the graph
(:attr:`LeanReport.listed`): onnxruntime neither folds nor pre-packs such an
overridable initializer, so pre-packing stays on for every other weight
(4096x2048 tie: lean 49.6 MiB in a fresh process, 32.1 against fast's 64.0 over
load and one run, batch 1 at 1.03x fast's time; the 100M-parameter Qwen
generation folder decodes at fast's speed in 1.03x its file). Before that,
lean disabled pre-packing for the whole session, which cost the other
weights' speed; it still does where the shared weight is not an fp32
initializer (an fp16 tie's Cast) or a float transpose is kept. The rewrite turns
``MatMul(A, Transpose(W))`` with a rank-2 ``A`` into ``Gemm(A, W, transB=1)``
and flips ``transB`` of a ``Gemm`` that reads ``Transpose(W)``. In fp16 files
``W`` is ``Cast(W16)``: both uses then read the Cast, which constant folding
turns into the one float32 copy (4096x2048 fp16 tie: lean 32.1 MiB, fast 64.0;
64.1 before the rewrite looked through the Cast).

A rank-3+ ``A`` (a language model's ``[batch, sequence, hidden]`` before the
tied logits projection) is flattened around the Gemm (Reshape -> Gemm ->
Reshape, opset >= 13): the 2048x1024 rank-3 tie holds 8.03 MiB after a run,
fast 16.04 MiB. A float transpose it cannot rewrite (opset < 13 with such an
``A``, a perm other than ``[1, 0]``) stays, and the session then disables ``ConstantFolding`` so
it is not folded into a copy; it is logged because it then runs on every call
(its output is freed after the call).

An integer tie's transposed use (``MatMulInteger`` over ``Transpose(W_q)``
in int8 files) cannot be rewritten, and keeping it run per call saves no
memory: the 4096x2048 int8 tie held 8.0 MiB after load and 16.4 MiB after one
run (RSS growth, 2-core AMD EPYC, onnxruntime 1.32), against 16.1 MiB for
``fast``. So an integer transpose is left to constant folding, and where no
weight is read by several nodes pre-packing stays on too
(:attr:`LeanReport.prepacking`): the session then holds what ``fast`` holds, at
``fast``'s speed. The former lean int8 graph ran at 3.1-3.7x fast at batch 1
on the 784-256 model (Transpose 18 us, each un-prepacked DynamicQuantizeMatMul
13 us against 6 us pre-packed, one-thread profile).
A language model's int8 tie has no transposed use left: the lookup gathers
columns of the stored ``[hidden, vocabulary]`` tensor
(:mod:`.graph.lookup_axis`), and the tie is read by that ``Gather`` and the
projection's ``MatMulInteger``. Shared, it gets no pre-packing in lean mode,
and is then held once (GPT-2 small int8: 140.3 MiB after session creation
against 177.5 for ``fast``, decode about 0.6x; :mod:`tiedonnx.runtime.generate`).
Since then export also lists such a tie as a graph input
(:func:`tiedonnx.runtime.graph.lookup_axis.leave_tie_unpacked`): ``fast`` then
holds it once as well (141.1 MiB) with every other weight pre-packed, at 0.90x
the decode step, so lean gains nothing more on those files.
Also measured and rejected, each with one int8 copy: the folded transpose
without pre-packing (1.58x), the decoder as ``W_q @ h_q^T`` with ``W_q`` as
``MatMulInteger``'s A (2.5x at batch 1, 11.6x at batch 256: no fast signed-A
kernel), the same with ``W_q`` stored as uint8 (4.5x), and ``QGemm(transB=1)``
without pre-packing (transposes ``W_q`` on every call, 43.7 us).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .graph.edit import attribute, int64_constant, main_opset, replace_repeated, transpose_perm, used_names, value_ranks

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

_INTEGER_TYPES = ("UINT4", "INT4", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64")

#: The session config entry that keeps each consumer from packing its own copy of a weight.
DISABLE_PREPACKING = {"session.disable_prepacking": "1"}


@dataclass
class LeanReport:
    """What :func:`lean_rewrite` changed, and the session settings lean needs.

    Attributes:
        rewritten: names of nodes now reading the shared initializer directly.
        removed_transposes: Transpose nodes deleted (no consumer left).
        kept_transposes: Transpose-of-initializer nodes that could not be rewritten.
        kept_integer: those of them that transpose an integer (quantized) tensor.
        shared: weights (rank >= 2 initializers) that several nodes read after
            the rewrite and that onnxruntime would pre-pack; a kept transpose
            counts as a weight of its own.
        listed: float32 initializers read directly by several nodes, now also
            listed as graph inputs (onnxruntime neither folds nor pre-packs
            such an overridable initializer, so it is held once while every
            other weight is pre-packed).
    """

    rewritten: list[str] = field(default_factory=list)
    removed_transposes: list[str] = field(default_factory=list)
    kept_transposes: list[str] = field(default_factory=list)
    kept_integer: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)

    @property
    def integer_only(self) -> bool:
        """Every kept transpose is of an integer tensor (and there is one)."""
        return bool(self.kept_transposes) and len(self.kept_integer) == len(self.kept_transposes)

    @property
    def disabled_optimizers(self) -> list[str]:
        """Optimizers the session must disable so kept float transposes are not folded."""
        return ["ConstantFolding"] if self.kept_transposes and not self.integer_only else []

    @property
    def prepacking(self) -> bool:
        """Whether the session may pre-pack weights: only where it costs lean no memory.

        That is where no weight it would pre-pack is read by several nodes
        (a float tie read directly is :attr:`listed` instead) and no float
        transpose is kept (it runs per call: one copy at rest). A kept integer
        transpose is two tensors of memory either way (measured on the
        4096x2048 int8 tie, RSS growth over load and one run: 16.4 MiB with the
        Transpose run per call and no pre-packing, 16.1 MiB folded and
        pre-packed, as ``fast``).
        """
        float_kept = bool(self.kept_transposes) and not self.integer_only
        return not float_kept and not self.shared

    @property
    def session_config(self) -> dict[str, str]:
        """Session config entries for lean mode."""
        return {} if self.prepacking else dict(DISABLE_PREPACKING)


def lean_rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, LeanReport]:
    """Rewrite transposed uses of initializers to read the initializer directly.

    Edits ``model`` in place (it is the loader's private copy) and returns it;
    idempotent: a second call changes nothing.
    """
    graph, report = model.graph, LeanReport()
    ranks_of = {init.name: len(init.dims) for init in graph.initializer}
    # fp16 files read the tie through Cast(W16) -> W; constant folding turns that
    # Cast into the one float32 copy both uses then read.
    ranks_of.update({node.output[0]: ranks_of[node.input[0]] for node in graph.node
                     if node.op_type == "Cast" and node.input and node.input[0] in ranks_of})
    transposes = {
        node.output[0]: node for node in graph.node
        if node.op_type == "Transpose" and ranks_of.get(node.input[0]) == 2
        and transpose_perm(node, 2) == [1, 0]
    }
    if transposes:
        _rewrite_uses(model, transposes, report)
        _drop_unused(graph, transposes, report)
    kept = {t: n for t, n in transposes.items() if (n.name or n.output[0]) in report.kept_transposes}
    from onnx import TensorProto

    types = {getattr(TensorProto, name) for name in _INTEGER_TYPES}
    integers = {init.name for init in graph.initializer if init.data_type in types}
    report.kept_integer = [n.name or n.output[0] for n in kept.values() if n.input[0] in integers]
    weights = {name for name, rank in ranks_of.items() if rank >= 2}
    shared = _shared_weights(graph, weights, set(kept) if report.integer_only else set())
    report.listed = _list_float_ties(graph, shared)
    inputs = {i.name for i in graph.input}
    report.shared = [name for name in shared if name not in inputs]
    _log(report)
    return model, report


def _list_float_ties(graph, shared: list[str]) -> list[str]:
    """List each shared float32 initializer as a graph input too; returns their names.

    A tie's Cast (fp16 files) is not an initializer: constant folding must turn it
    into the one float32 copy, so it is left to the no-pre-packing rule.
    """
    from onnx import TensorProto, helper

    inputs = {i.name for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    listed = []
    for name in shared:
        init = inits.get(name)
        if init is not None and init.data_type == TensorProto.FLOAT and name not in inputs:
            graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
            listed.append(name)
    return listed


def _rewrite_uses(model, transposes: dict, report: LeanReport) -> None:
    """``MatMul``/``Gemm`` over ``Transpose(W)`` -> ``Gemm(A, W, transB=1)``.

    A rank-3+ ``A`` (a language model's ``[batch, sequence, hidden]`` before the
    tied logits projection) is flattened to ``[-1, hidden]`` around the Gemm and
    its leading axes restored (:func:`_flat_gemm`), so the projection too reads
    the one stored table.
    """
    graph = model.graph
    ranks = value_ranks(model)
    opset = main_opset(model)
    nodes = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in transposes:
            rank = ranks.get(node.input[0])
            if rank == 2 and opset >= 11:
                _to_gemm(node, transposes[node.input[1]].input[0])
                report.rewritten.append(node.name or node.output[0])
            elif node.op_type == "MatMul" and rank is not None and rank >= 3 and opset >= 13:
                nodes += _flat_gemm(graph, node, transposes[node.input[1]].input[0], rank)
                report.rewritten.append(node.name or node.output[0])
                continue
        nodes.append(node)
    if len(nodes) != len(graph.node):
        replace_repeated(graph.node, nodes)


def _weight_dims(graph, name: str) -> list[int]:
    """Dims of initializer ``name``, or of the initializer a ``Cast`` named ``name`` reads."""
    inits = {init.name: list(init.dims) for init in graph.initializer}
    if name in inits:
        return inits[name]
    cast = next(n for n in graph.node if n.op_type == "Cast" and n.output[0] == name)
    return inits[cast.input[0]]


def _flat_gemm(graph, node, weight: str, rank: int) -> list:
    """``MatMul(A, Transpose(W))`` with a rank-``rank`` A as Reshape -> Gemm(transB=1) -> Reshape."""
    from onnx import helper

    rows, hidden = _weight_dims(graph, weight)
    taken = used_names(graph) | {i.name for i in graph.initializer}
    base = node.output[0]

    def fresh(suffix: str) -> str:
        name, i = f"{base}/lean_{suffix}", 0
        while name in taken:
            i += 1
            name = f"{base}/lean_{suffix}{i}"
        taken.add(name)
        return name

    consts = {key: int64_constant(graph, value, fresh(key))
              for key, value in (("flat", [-1, hidden]), ("rows", [rows]), ("start", [0]), ("end", [rank - 1]))}
    flat, prod, shape, lead, out_shape = (fresh(k) for k in ("a2", "y2", "shape", "lead", "out_shape"))
    return [
        helper.make_node("Reshape", [node.input[0], consts["flat"]], [flat], name=fresh("reshape_in")),
        helper.make_node("Gemm", [flat, weight], [prod], name=node.name or fresh("gemm"), transB=1),
        helper.make_node("Shape", [node.input[0]], [shape], name=fresh("shape_node")),
        helper.make_node("Slice", [shape, consts["start"], consts["end"]], [lead], name=fresh("slice")),
        helper.make_node("Concat", [lead, consts["rows"]], [out_shape], name=fresh("concat"), axis=0),
        helper.make_node("Reshape", [prod, out_shape], [node.output[0]], name=fresh("reshape_out")),
    ]


def _log(report: LeanReport) -> None:
    for name in report.rewritten:
        logger.info("lean: %s reads its tied initializer directly (Gemm transB)", name)
    for name in report.listed:
        logger.info("lean: %s is listed as a graph input: held once, not pre-packed; other weights are", name)
    if report.integer_only:
        logger.info("lean: integer transposes %s are folded%s: an int8 tie is two tensors of memory "
                    "either way", report.kept_integer,
                    " and pre-packed" if report.prepacking else "")
        return
    for name in report.kept_transposes:
        logger.warning("lean: transpose %s kept; it runs on every call", name)


def _shared_weights(graph, weights: set[str], kept_outputs: set[str]) -> list[str]:
    """Weights (rank >= 2 initializers and their Casts) read by several nodes, subgraphs included.

    A kept ``Transpose`` in ``kept_outputs`` is not a reader of its input:
    onnxruntime folds it at session start, and its output counts as a weight.
    """
    from .graph.edit import iter_graphs

    weights = weights | kept_outputs
    readers: dict[str, int] = {}
    for g in iter_graphs(graph):
        for node in g.node:
            if node.op_type == "Transpose" and node.output and node.output[0] in kept_outputs:
                continue
            for name in set(node.input) & weights:
                readers[name] = readers.get(name, 0) + 1
    return sorted(name for name, count in readers.items() if count > 1)


def _to_gemm(node, weight: str) -> None:
    from onnx import helper

    trans_b = attribute(node, "transB", 0) if node.op_type == "Gemm" else 0
    kept = [a for a in node.attribute if a.name != "transB"] if node.op_type == "Gemm" else []
    node.op_type = "Gemm"
    node.input[1] = weight
    replace_repeated(node.attribute, [*kept, helper.make_attribute("transB", 1 - trans_b)])


def _drop_unused(graph, transposes: dict, report: LeanReport) -> None:
    used = used_names(graph)
    keep = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.output[0] in transposes:
            if node.output[0] not in used:
                report.removed_transposes.append(node.name or node.output[0])
                continue
            report.kept_transposes.append(node.name or node.output[0])
        keep.append(node)
    if len(keep) != len(graph.node):
        replace_repeated(graph.node, keep)
