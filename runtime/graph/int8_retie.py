"""Re-tie a quantized graph: every use of a tie reads one stored int8 tensor.

Second half of :func:`tiedonnx.runtime.graph.quantize.to_precision` for
int8 (see that module for why ``quantize_dynamic`` needs it). Input: the graph
``quantize_dynamic`` wrote for an *untied* working copy, where each transposed
use of a tie had its own initializer and got its own ``<name>_quantized``,
``_scale`` and ``_zero_point``. Output, per tie: one int8 tensor; the other
uses read a ``Transpose`` of it (per-tensor), the per-channel rewrite
``(A * s) @ q^T`` (:func:`_fold_scales`), a row lookup that dequantizes only
the rows it gathers (:func:`_gather_rows`, the embedding of a language model
whose projection holds the per-channel scales), or ``DequantizeLinear`` of it
when no integer kernel exists for the op. Edits the graph in place.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConversionError
from .edit import (consumers, gathers_rows, prepend_nodes, relative_perm, remove_initializers, rename_uses, replace_repeated,
                   used_names)
from .metadata import TieRecord, TieUse

logger = logging.getLogger(__name__)

__all__ = ["merge_equal_parameters", "per_channel_exclusions", "prune_initializers", "retie_quantized"]

_QSUFFIX, _SSUFFIX, _ZSUFFIX = "_quantized", "_scale", "_zero_point"


def _scale_axis(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, ref: np.ndarray) -> int | None:
    """The axis a 1-D scale runs along (None for per-tensor), found from the data itself."""
    if scale.size == 1:
        return None
    best, best_err = None, np.inf
    for axis in (a for a in range(q.ndim) if q.shape[a] == scale.size):
        shape = [1] * q.ndim
        shape[axis] = scale.size
        deq = (q.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
        err = float(np.abs(deq - ref).max())
        if err < best_err:
            best, best_err = axis, err
    if best is None:
        raise ConversionError(f"Cannot tell which axis a {scale.size}-element scale belongs to in a "
                              f"tensor of shape {list(q.shape)}; please report this model.")
    return best


def per_channel_exclusions(graph: onnx.GraphProto, ties: list[TieRecord]) -> list[str]:
    """Names of the nodes ``quantize_dynamic`` must leave alone for per-channel scales.

    Per tie, one use is quantized by onnxruntime, per output channel; the others
    are rewritten by :func:`retie_quantized` around that tensor and its scales.
    The quantized use is the first member that a ``MatMul`` reads as its weight:
    the encoder ``W`` of an autoencoder, and for a language model the output
    projection ``E^T`` rather than the lookup ``Gather(E, ids)``, which
    onnxruntime would quantize with one scale for the whole table (and whose
    rows the lookup rewrite dequantizes with the projection's per-row scales).
    ``graph`` is the untied working copy (each member an initializer).
    """
    exclude = []
    for tie in ties:
        members = list(tie.members())
        weights = [m for m in members
                   if any(n.op_type == "MatMul" and n.input[1:2] == [m] for n in consumers(graph, m))]
        quantized = weights[0] if weights else members[0]
        for name in members:
            if name != quantized:
                exclude += [n.name for n in consumers(graph, name)]
    return exclude


class _Tie:
    """One tie inside the quantized graph: its stored int8 tensor and how to reach it."""

    def __init__(self, graph: onnx.GraphProto, entry: TieRecord, source: np.ndarray):
        self.graph, self.entry = graph, entry
        self.members = entry.members()
        self.inits = {i.name: i for i in graph.initializer}
        quantized = [m for m in self.members if m + _QSUFFIX in self.inits]
        self.quantized = quantized
        self.primary = _pick_primary(self.inits, quantized) if quantized else entry.initializer
        self.new_nodes: list[onnx.NodeProto] = []
        self.uses: list[TieUse] = []
        self.remove: set[str] = set()
        if quantized:
            p = self.primary
            self.q = numpy_helper.to_array(self.inits[p + _QSUFFIX])
            self.scale = numpy_helper.to_array(self.inits[p + _SSUFFIX])
            self.zp = numpy_helper.to_array(self.inits[p + _ZSUFFIX])
            ref = np.transpose(source, self.members[p])
            self.axis = _scale_axis(self.q, self.scale, self.zp, ref)

    def name(self, suffix: str = "") -> str:
        return self.primary + suffix

    def rel(self, member: str) -> list[int]:
        return relative_perm(self.members[self.primary], self.members[member])

    def add(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.new_nodes.append(helper.make_node(op, inputs, [output],
                                               name=f"tiedonnx_int8/{output}", **attrs))
        return output


def _pick_primary(inits: dict, quantized: list[str]) -> str:
    """The use whose int8 tensor is kept: with per-tensor scales, the coarsest.

    quantize_dynamic gives MatMul weights 7-bit magnitudes (``reduce_range``)
    but Gather weights (a tied embedding) full 8 bits; the 7-bit tensor is
    safe for every kernel, so every use shares that one.
    """
    scales = {m: numpy_helper.to_array(inits[m + _SSUFFIX]) for m in quantized}
    if all(s.size == 1 for s in scales.values()):
        return max(quantized, key=lambda m: (float(scales[m]), m == quantized[0]))
    return quantized[0]


def retie_quantized(graph: onnx.GraphProto, entry: TieRecord, original: onnx.ModelProto) -> TieRecord:
    """Make every use of one tie read a single stored tensor; return its new tie record."""
    source = numpy_helper.to_array(next(i for i in original.graph.initializer
                                        if i.name == entry.initializer))
    tie = _Tie(graph, entry, source)
    if not tie.quantized:
        logger.warning("tie %r: no use of it is quantizable by onnxruntime; stored once in fp32",
                       entry.initializer)
    for member in tie.members:
        if member != tie.primary and member in tie.quantized:
            _share_quantized(tie, member)
    for member in tie.members:
        if consumers(graph, member) or member in {o.name for o in graph.output}:
            _float_use(tie, member)
    if tie.quantized and consumers(graph, tie.name(_QSUFFIX)):
        tie.uses.insert(0, TieUse(relation="direct", output=tie.name(_QSUFFIX), kernel="integer"))
    tie.remove |= {m for m in tie.members if m != tie.primary or tie.quantized}
    remove_initializers(graph, tie.remove)
    prepend_nodes(graph, tie.new_nodes)
    return _record(tie, source)


def _share_quantized(tie: _Tie, member: str) -> None:
    """Replace ORT's int8 copy of a transposed use by a Transpose over the stored int8 tensor."""
    perm = tie.rel(member)
    mine = [numpy_helper.to_array(tie.inits[member + s]) for s in (_QSUFFIX, _SSUFFIX, _ZSUFFIX)]
    same = (np.array_equal(mine[0], np.transpose(tie.q, perm))
            and np.array_equal(mine[1], tie.scale) and np.array_equal(mine[2], tie.zp))
    # Per-tensor (q, scale, zero point) triples are consumed together, so a use
    # quantized with another scale (8-bit Gather next to 7-bit MatMul) can take
    # the stored triple instead; per-channel ones cannot.
    if not same and (mine[1].size != 1 or tie.scale.size != 1):
        raise ConversionError(
            f"The int8 copy of tied use {member!r} is not the transpose of the int8 "
            f"{tie.primary!r} (scales {mine[1].ravel()[:3]} vs {tie.scale.ravel()[:3]}). "
            "This happens only with per-channel scales; use per_channel=False.")
    tie.add("Transpose", [tie.name(_QSUFFIX)], member + _QSUFFIX, perm=perm)
    rename_uses(tie.graph, {member + _SSUFFIX: tie.name(_SSUFFIX),
                            member + _ZSUFFIX: tie.name(_ZSUFFIX)})
    tie.remove |= {member + s for s in (_QSUFFIX, _SSUFFIX, _ZSUFFIX)}
    tie.uses.append(TieUse(relation="transpose", perm=perm, output=member + _QSUFFIX, kernel="integer"))


def _float_use(tie: _Tie, member: str) -> None:
    """A use still reading the float tensor: integer rewrite if a MatMul can take it, else dequantize."""
    if not tie.quantized:  # the fp32 tie as retie left it
        if member != tie.primary:
            tie.add("Transpose", [tie.primary], member, perm=tie.rel(member))
            tie.uses.append(TieUse(relation="transpose", perm=tie.rel(member), output=member,
                                   kernel="float"))
        return
    for node in consumers(tie.graph, member):
        if _can_fold(tie, member, node):
            _fold_scales(tie, member, node)
        elif _can_gather_rows(tie, member, node):
            _gather_rows(tie, member, node)
    if not (consumers(tie.graph, member) or member in {o.name for o in tie.graph.output}):
        return
    logger.warning("tie %r: use %r cannot run as an integer kernel; it reads the int8 tensor "
                   "through DequantizeLinear (fp32 compute)", tie.entry.initializer, member)
    tie.uses.append(TieUse(relation="dequantize", perm=tie.rel(member), output=member, kernel="float"))
    if any(member in n.output for n in tie.graph.node):
        return  # quantize_dynamic already feeds it from DequantizeLinear of the int8 tensor
    float_name = tie.name("_dequantized")
    if not any(n.output[0] == float_name for n in tie.new_nodes):
        attrs = {} if tie.axis is None else {"axis": tie.axis}
        tie.add("DequantizeLinear", [tie.name(_QSUFFIX), tie.name(_SSUFFIX), tie.name(_ZSUFFIX)],
                float_name, **attrs)
    tie.add("Transpose", [float_name], member, perm=tie.rel(member))


def _can_fold(tie: _Tie, member: str, node: onnx.NodeProto) -> bool:
    return (node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] == member
            and node.input[0] != member and tie.q.ndim == 2 and tie.rel(member) == [1, 0]
            and tie.axis in (None, 1) and not np.any(tie.zp))


def _stored_view(tie: _Tie, member: str) -> str:
    """``member`` as an int8 ``Transpose`` of the stored tensor (one node per member, one use record)."""
    q_t = member + _QSUFFIX
    if not any(n.output[0] == q_t for n in tie.new_nodes):
        tie.add("Transpose", [tie.name(_QSUFFIX)], q_t, perm=tie.rel(member))
        tie.uses.append(TieUse(relation="transpose", perm=tie.rel(member), output=q_t, kernel="integer"))
    return q_t


def _replace_node(graph: onnx.GraphProto, node: onnx.NodeProto, pattern: list[onnx.NodeProto]) -> None:
    """Splice ``pattern`` in at ``node``'s place (it reads activations, so it cannot lead the graph)."""
    nodes = list(graph.node)
    at = nodes.index(node)
    nodes[at:at + 1] = pattern
    replace_repeated(graph.node, nodes)


def _can_gather_rows(tie: _Tie, member: str, node: onnx.NodeProto) -> bool:
    """A lookup of whole rows of ``member`` whose scales run along those rows (per-channel LM tie)."""
    return (gathers_rows(node, member) and tie.q.ndim == 2
            and tie.axis is not None and tie.rel(member)[0] == tie.axis and not np.any(tie.zp))


def _gather_rows(tie: _Tie, member: str, node: onnx.NodeProto) -> None:
    """``Gather(q * s, ids)`` as ``Gather(q, ids) * Gather(s, ids)``: only the looked-up rows are dequantized.

    The projection ``h @ E^T`` was quantized per output channel, so each row of
    ``E`` has its own scale; the lookup takes its int8 rows from the same stored
    tensor and scales each by that row's scale (zero points are 0: symmetric
    int8 weights). Dequantizing the whole table instead would cost V x H work
    on every call.
    """
    base = node.name or node.output[0]
    ids = node.input[1]
    rows_q = _stored_view(tie, member)
    # Scales as a (V, 1) column, so the gathered ones broadcast over each row. Reshape
    # reads initializers only: it leads the graph, and onnxruntime folds it once.
    column, column_shape = tie.name("_scale_column"), tie.name("_column_shape")
    if not any(n.output[0] == column for n in tie.new_nodes):
        tie.graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], np.int64), column_shape))
        tie.add("Reshape", [tie.name(_SSUFFIX), column_shape], column)
    mk = helper.make_node
    pattern = [
        mk("Gather", [rows_q, ids], [f"{base}/rows_quantized"], axis=0, name=f"tiedonnx_int8/{base}/rows"),
        mk("Cast", [f"{base}/rows_quantized"], [f"{base}/rows_float"], to=onnx.TensorProto.FLOAT,
           name=f"tiedonnx_int8/{base}/rows_float"),
        mk("Gather", [column, ids], [f"{base}/row_scales"], axis=0, name=f"tiedonnx_int8/{base}/row_scales"),
        mk("Mul", [f"{base}/rows_float", f"{base}/row_scales"], [node.output[0]],
           name=f"tiedonnx_int8/{base}/dequantize_rows"),
    ]
    _replace_node(tie.graph, node, pattern)
    logger.info("tie %r: %s looks up int8 rows of the shared tensor and scales them per row",
                tie.entry.initializer, base)


def _fold_scales(tie: _Tie, member: str, node: onnx.NodeProto) -> None:
    """``A @ (q * s)^T`` as ``(A * s) @ q^T`` with int8 ``q^T``: per-channel scales of W move to A."""
    base = f"{node.name or node.output[0]}"
    q_t = _stored_view(tie, member)
    # s = c * r with c = max(s): r scales A, c is B's per-tensor scale. A
    # B scale of exactly 1 would be optimized away as a no-op Mul, and with it
    # the pattern onnxruntime fuses into DynamicQuantizeMatMul.
    ratio, peak, zero = tie.name("_scale_ratio"), tie.name("_scale_peak"), tie.name("_zero")
    if ratio not in {i.name for i in tie.graph.initializer}:
        c = np.float32(np.max(tie.scale))
        tie.graph.initializer.extend([
            numpy_helper.from_array((tie.scale / c).astype(np.float32), ratio),
            numpy_helper.from_array(np.array(c, np.float32), peak),
            numpy_helper.from_array(np.array(0, tie.zp.dtype), zero)])
    # Same node pattern quantize_dynamic emits, so onnxruntime fuses it into
    # DynamicQuantizeMatMul like the direct use. Spliced in at the MatMul's
    # place: these nodes read an activation, so they cannot lead the graph.
    a_q, a_scale, a_zp = f"{base}/a_quantized", f"{base}/a_scale", f"{base}/a_zero_point"
    mk = helper.make_node
    pattern = [
        mk("Mul", [node.input[0], ratio], [f"{base}/scaled_input"],
           name=f"tiedonnx_int8/{base}/scale_input"),
        mk("DynamicQuantizeLinear", [f"{base}/scaled_input"], [a_q, a_scale, a_zp],
           name=f"tiedonnx_int8/{base}/dql"),
        mk("MatMulInteger", [a_q, q_t, a_zp, zero], [f"{base}/acc"], name=f"tiedonnx_int8/{base}/mmi"),
        mk("Cast", [f"{base}/acc"], [f"{base}/acc_float"], name=f"tiedonnx_int8/{base}/cast",
           to=onnx.TensorProto.FLOAT),
        mk("Mul", [a_scale, peak], [f"{base}/scales"], name=f"tiedonnx_int8/{base}/scales"),
        mk("Mul", [f"{base}/acc_float", f"{base}/scales"], [node.output[0]],
           name=f"tiedonnx_int8/{base}/output"),
    ]
    _replace_node(tie.graph, node, pattern)
    logger.info("tie %r: %s runs (A * s) @ q^T on the shared int8 tensor", tie.entry.initializer,
                node.name)


def _record(tie: _Tie, source: np.ndarray) -> TieRecord:
    if not tie.quantized:
        return TieRecord(initializer=tie.primary, dtype=str(source.dtype), shape=list(source.shape),
                         uses=tie.uses, keras=tie.entry.keras)
    return TieRecord(initializer=tie.name(_QSUFFIX), dtype=str(tie.q.dtype), shape=list(tie.q.shape),
                     scale=tie.name(_SSUFFIX), zero_point=tie.name(_ZSUFFIX), axis=tie.axis,
                     source=tie.entry.initializer, uses=tie.uses, keras=tie.entry.keras)


def merge_equal_parameters(graph: onnx.GraphProto, *, keep: set[str]) -> dict[str, str]:
    """One initializer per value among those quantization added (zero points are mostly 0).

    The file then holds no two equal tensors, the invariant every export proves.
    Returns the merged names (old -> kept), for records that name them.
    """
    first: dict[tuple, str] = {}
    renames = {}
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first and init.name not in keep:
            renames[init.name] = first[key]
        else:
            first.setdefault(key, init.name)
    if renames:
        rename_uses(graph, renames)  # subgraphs too: they may read a merged parameter
        remove_initializers(graph, set(renames))
        logger.debug("merged %d equal quantization parameters", len(renames))
    return renames


def prune_initializers(graph: onnx.GraphProto) -> None:
    """Drop initializers that nothing reads (subgraphs included)."""
    used = used_names(graph) | {i.name for i in graph.input}
    dropped = remove_initializers(graph, lambda init: init.name not in used)
    if dropped:
        logger.debug("dropped %d unused initializers", dropped)
