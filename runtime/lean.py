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
Gemm(transB=1) over W, pre-packing disabled (``lean``)  42
=====================================================  ===========

So lean needs both: the rewrite (nothing left to fold) and
``session.disable_prepacking`` (no packed second copy). The rewrite turns
``MatMul(A, Transpose(W))`` with a rank-2 ``A`` into ``Gemm(A, W, transB=1)``
and flips ``transB`` of a ``Gemm`` that reads ``Transpose(W)``. A transpose it
cannot rewrite (``A`` of another rank, a perm other than ``[1, 0]``) stays,
and the session then disables ``ConstantFolding`` so it is not folded into a
copy; it is logged because it then runs on every call.

int8 files: the transposed use reads ``Transpose(W_q)`` and it stays (no
integer ``Gemm(transB=1)`` runs without pre-packing). With pre-packing off,
onnxruntime's int8 kernels also re-pack their weight on every call. Measured
at batch 1 on the 784-256 model (2-core AMD EPYC, onnxruntime 1.32, per-node
profile): Transpose 21 us, each un-prepacked DynamicQuantizeMatMul 14-16 us
against about 4 us pre-packed; lean int8 runs at about 3x fast int8 (44 vs
14 us). ``QGemm(transB=1)`` over ``W_q`` (what ``.ort`` files use) does not
help here: un-prepacked it transposes ``W_q`` itself on every call (43.7 us).
The alternatives that are fast (pre-packing both uses) hold two packed copies,
which is what ``fast`` is for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .graph.edit import replace_repeated, transpose_perm, used_names

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

#: Session config entries for lean mode.
LEAN_SESSION_CONFIG = {"session.disable_prepacking": "1"}


@dataclass
class LeanReport:
    """What :func:`lean_rewrite` changed.

    Attributes:
        rewritten: names of nodes now reading the shared initializer directly.
        removed_transposes: Transpose nodes deleted (no consumer left).
        kept_transposes: Transpose-of-initializer nodes that could not be rewritten.
    """

    rewritten: list[str] = field(default_factory=list)
    removed_transposes: list[str] = field(default_factory=list)
    kept_transposes: list[str] = field(default_factory=list)

    @property
    def disabled_optimizers(self) -> list[str]:
        """Optimizers the session must disable so kept transposes are not folded."""
        return ["ConstantFolding"] if self.kept_transposes else []


def lean_rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, LeanReport]:
    """Rewrite transposed uses of initializers to read the initializer directly.

    Edits ``model`` in place (it is the loader's private copy) and returns it;
    idempotent: a second call changes nothing.
    """
    graph, report = model.graph, LeanReport()
    initializers = {init.name for init in graph.initializer}
    transposes = {
        node.output[0]: node for node in graph.node
        if node.op_type == "Transpose" and node.input[0] in initializers
        and transpose_perm(node, 2) == [1, 0] and _rank(graph, node.input[0]) == 2
    }
    if not transposes:
        return model, report
    ranks = _ranks(model)
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in transposes:
            if ranks.get(node.input[0]) != 2 or _opset(model) < 11:
                continue
            _to_gemm(node, transposes[node.input[1]].input[0])
            report.rewritten.append(node.name or node.output[0])
    _drop_unused(graph, transposes, report)
    for name in report.rewritten:
        logger.info("lean: %s reads its tied initializer directly (Gemm transB)", name)
    for name in report.kept_transposes:
        logger.warning("lean: transpose %s kept; it runs on every call", name)
    return model, report


def _rank(graph, name: str) -> int:
    return next(len(i.dims) for i in graph.initializer if i.name == name)


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _ranks(model) -> dict[str, int]:
    """Rank of every value whose shape ONNX shape inference can tell."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    graph = inferred.graph
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks


def _to_gemm(node, weight: str) -> None:
    from onnx import helper

    trans_b = 0
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm":
        trans_b = helper.get_attribute_value(attrs["transB"]) if "transB" in attrs else 0
        kept = [a for a in node.attribute if a.name != "transB"]
    else:
        kept = []
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
