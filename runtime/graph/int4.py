"""int4 block-wise weights that keep the tie: one 4-bit tensor per tie, read by every use.

Why onnxruntime's ``MatMulNBitsQuantizer`` alone breaks ties: it quantizes
each ``MatMul``/``Gather`` node's constant weight separately. A weight used
twice becomes two 4-bit copies, and a transposed use (the decoder reads
``Transpose(W)``, a node output) is not quantized at all, so the fp32 ``W``
stays in the file beside the 4-bit copy. onnxruntime-genai shares only the
language-model case.

What :func:`to_int4` does, per 2-D tie (and per untied ``MatMul`` weight or
float lookup table, e.g. GPT-2's position embedding read by ``Slice``):

1. Pick the stored layout ``O`` (the source or its transpose, rows x blocks):
   the one that the most uses can read natively, then the one with the least
   block padding. A ``MatMul(A, M)`` runs as ``MatMulNBits`` when ``M^T`` is
   ``O`` (MatMulNBits blocks along K); an embedding ``Gather(M, ids)`` runs as
   ``GatherBlockQuantized`` when ``M`` is ``O`` (blocks along the row). Both
   uses of a language-model tie (``Gather(E)`` and ``MatMul(h, E^T)``) are
   native with ``O = E``: they share one tensor as in onnxruntime-genai, the
   Gather reading a ``Reshape`` of the MatMulNBits weight.
2. Quantize ``O`` once with onnxruntime's own kernel
   (:func:`.int4_blocks.quantize_blocks`) and check it is a faithful rounding
   of the source in that layout (never assumed from shapes alone).
3. Rewrite every use to read it. A transposed Dense tie cannot be native
   twice: ``x @ W`` blocks along W's rows, ``h @ W^T`` along its columns. The
   other use reads the float matrix through ``tiedonnx.DequantizeNBits``, a
   model-local function of standard ops over the same packed tensor, then
   ``MatMul``.

Why that read, measured on this project's 2-core AMD EPYC (AVX-512, VNNI),
onnxruntime 1.32, 1 thread, a 784-256 tied AE (random weights) at block 32:
samples/s at batch 1 and 256, interleaved, and RSS growth over session
creation in a fresh process (hand-built prototypes of each graph; the chosen
one and onnxruntime's untied file are rows of ``scripts/bench_edge.py``):

==============================================  =======  =======  ========
second use reads the packed tensor through      batch 1  b. 256   RSS MB
==============================================  =======  =======  ========
(fp32 tied file, for scale)                      17,659   65,610    13.5
DequantizeNBits (standard ops, folded at start)  13,964   60,097    14.2
GatherBlockQuantized over all rows                1,655   52,634    10.4
opset-21 DequantizeLinear on an INT4 tensor         587   58,631     9.9
(two MatMulNBits copies: onnxruntime's untied)   10,638   60,396    10.3
==============================================  =======  =======  ========

onnxruntime constant-folds standard ops at session start but neither its
contrib ops (``GatherBlockQuantized``) nor ``DequantizeLinear``: those two
dequantize the whole matrix on every call, 8x to 24x slower at batch 1. The
function is folded once, so that use runs as an fp32 ``Gemm`` and the other as
``MatMulNBits``; the price is one float copy of the weight in the session (on a
4096x2048 tie: 63 MB of RSS against 74 MB for the fp32 tied file and 28 MB for
two 4-bit copies). The file, which is what a phone or browser downloads, has one
4-bit tensor. Block scales are stored as float16 when they fit (a Cast feeds
MatMulNBits float32), which the size target needs: on the 784-256 AE they are
12.5 KB of 128 KB.

Ties of other ranks (a ``ConvTranspose`` tied to a ``Conv``) stay fp32, stored
once (logged). Quantization is round-to-nearest (onnxruntime's default);
its HQQ needs PyTorch and k-quant needs ``onnx_ir``, neither in the runtime.
``rounding="search"`` picks each block's scale by least squares instead
(:mod:`.int4_search`, numpy only), and ``int8_ties`` keeps the ties in int8
(:mod:`.int4_mixed`); what each buys is measured by scripts/bench_quality.py.
Small matrices lose more: the demo's 64-32 AE at block 32 has +10.8% MSE on
held-out digits (5,899 bytes; int8: -0.1%, 6,516 bytes), the 784-256 AE +1.5%.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConversionError
from .duplicates import find_duplicates
from .edit import (MS_DOMAIN, add_initializers, attribute, gathers_rows, insert_after, int64_constant, main_opset,
                   prepend_nodes, relative_perm, remove_initializers, remove_nodes, set_inputs)
from .index import GraphIndex
from .int4_blocks import (DEQUANTIZE_OP, FUNCTION_DOMAIN, Blocks, dequantize_function,
                          scale_dtype)
from .metadata import TieRecord, TieUse, read_ties, write_ties

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SYMMETRIC", "to_int4"]

#: Asymmetric by default, as onnxruntime's quantizer. Measured on held-out
#: digits at block 32: the 784-256 AE asymmetric 124,275 bytes, MSE +1.48% vs
#: Keras fp32, max abs 0.132; symmetric 120,310 bytes, +1.54%, 0.106. The
#: 64-32 AE: +10.80%, max abs 0.19 asymmetric; +10.78%, 0.28 symmetric (a
#: symmetric block reaches only 7 steps on one side).
DEFAULT_SYMMETRIC = False
# MatMulNBits keeps onnxruntime's default accuracy_level (0: float activations).
# Level 4 (int8 activations) measured 1.60x faster at batch 1 on the digits AE
# with the same MSE, but onnxruntime 1.32 computes wrong results with it (max abs
# 0.44 instead of 0.04 on a 64-32 AE) when the scales are not an initializer at
# pre-packing time: here the float16 scales' Cast, whenever constant folding is
# off (ORT_DISABLE_ALL, and the .ort files save_ort writes).
_MIN_OPSET = 13  # Unsqueeze/Slice with tensor inputs in the dequantizing function
_IDENTITY, _SWAP = (0, 1), (1, 0)


@dataclass
class _Weight:
    """A float 2-D initializer to store once in 4 bits, and the names it is read by."""

    source: str
    array: np.ndarray
    members: dict[str, tuple[int, ...]]  # float name -> permutation of the source
    tie: TieRecord | None = None
    uses: list[TieUse] = field(default_factory=list)


def to_int4(model: onnx.ModelProto, *, block_size: int, symmetric: bool,
            rounding: str = "rtn", accuracy_level: int = 0) -> tuple[onnx.ModelProto, list[str]]:
    """Store ``model``'s weights (ties folded and recorded) as 4-bit blocks, in place (a pass, :mod:`.passes`).

    Called by :func:`.quantize.to_precision`, which validates the options and first stores rank-3+ weights
    as 2-D views (:mod:`.int4_views`). ``rounding``: ``"rtn"`` (onnxruntime's) or ``"search"`` (:mod:`.int4_search`).
    ``accuracy_level``: set on every ``MatMulNBits`` when not 0 (:data:`tiedonnx.runtime.options.ACCURACY_LEVELS`).

    Returns:
        ``(model, sources)``: the model and the float initializers now stored in 4 bits.
    """
    opset = _main_opset(model)
    ties = read_ties(model)
    index = GraphIndex(model.graph)  # one index for every weight: kept correct by the edits
    tied = _tied_weights(index, ties)
    kept = [t for t in ties if t.initializer not in {w.source for w in tied}]
    weights = tied + _untied_weights(model.graph, index, ties)
    for weight in weights:
        _store_4bit(index, weight, block_size=block_size, symmetric=symmetric, rounding=rounding)
    _finish(model, opset, symmetric=symmetric)
    if accuracy_level:
        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and node.domain == MS_DOMAIN:
                node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
    write_ties(model, [w.tie for w in tied] + kept)
    return model, [w.source for w in weights]


def _main_opset(model: onnx.ModelProto) -> int:
    opset = main_opset(model)
    if opset < _MIN_OPSET:
        raise ConversionError(f"int4 needs ONNX opset {_MIN_OPSET} or newer. Received: opset {opset}. "
                              f"Export with opset >= {_MIN_OPSET}.")
    return opset


def _float_2d(index: GraphIndex) -> dict[str, onnx.TensorProto]:
    return {name: i for name, i in index.initializers.items()
            if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}


def _tied_weights(index: GraphIndex, ties: list[TieRecord]) -> list[_Weight]:
    candidates = _float_2d(index)
    weights = []
    for tie in ties:
        if tie.initializer in candidates:
            array = numpy_helper.to_array(candidates[tie.initializer])
            weights.append(_Weight(tie.initializer, array, tie.members(), tie))
        else:  # an int8 tie (scale recorded) is there by request: .int4_mixed
            (logger.info if tie.scale else logger.warning)(
                "tie %r is not a 2-D float32 tensor; it stays as it is, stored once", tie.initializer)
    return weights


def _untied_weights(graph: onnx.GraphProto, index: GraphIndex, ties: list[TieRecord]) -> list[_Weight]:
    """Float 2-D initializers outside any tie that a MatMul (or a Gemm without bias) reads as its
    weight, or that only row lookups read (:func:`_lookup_tables`)."""
    tied = {t.initializer for t in ties}
    candidates = _float_2d(index)
    names = dict.fromkeys(n.input[1] for n in graph.node if len(n.input) >= 2 and (
        (n.op_type == "MatMul" and len(n.input) == 2) or _plain_gemm(n, n.input[1])))
    names.update(dict.fromkeys(_lookup_tables(index, candidates)))
    arrays = {name: numpy_helper.to_array(candidates[name]) for name in names
              if name in candidates and name not in tied}
    ranks = {name: len(i.dims) for name, i in index.initializers.items()}
    if stacked := [n for n in names if ranks.get(n, 2) > 2]:  # MatMulNBits takes 2-D weights only
        logger.info("int4: %d stacked weight(s) of rank 3+ (mixture-of-experts experts) stay float32", len(stacked))
    # A weight stored as a 2-D view (.int4_views) may equal another one (seeded
    # clone initializers): one 4-bit tensor for both, as for a tie.
    members = {name: {name: _IDENTITY} for name in arrays}
    for copy in find_duplicates(arrays):
        if copy.cast is None and copy.source in members and copy.copy in members:
            members[copy.source][copy.copy] = tuple(copy.perm)
            del members[copy.copy]
    return [_Weight(name, arrays[name], group) for name, group in members.items()]


def _lookup_tables(index: GraphIndex, candidates: dict[str, onnx.TensorProto]) -> list[str]:
    """Learned tables read only by row lookups: an untied embedding (``Gather`` on axis 0, which
    runs as ``GatherBlockQuantized``) or a position embedding (``Slice``, which reads the float
    matrix folded at session start). GPT-2's 64x64 position embedding was the last float32 weight
    of the tiny LM. Integer-valued tables (masks, index maps) and subgraph reads are left alone."""
    found = []
    for name, init in candidates.items():
        readers = index.consumers(name)
        if not readers or name in index.subgraph_reads or not all(_row_lookup(n, name) for n in readers):
            continue
        array = numpy_helper.to_array(init)
        if not np.all(np.isfinite(array)) or np.array_equal(array, np.round(array)):
            logger.info("int4: table %r stays float32 (integer-valued or not finite)", name)
            continue
        found.append(name)
    return found


def _row_lookup(node: onnx.NodeProto, name: str) -> bool:
    """``Gather(name, ids)`` on axis 0, or a ``Slice`` of ``name`` (data input only)."""
    return gathers_rows(node, name) or (node.op_type == "Slice" and node.domain in ("", "ai.onnx")
                                        and list(node.input).count(name) == 1 and node.input[0] == name)


def _plain_gemm(node: onnx.NodeProto, member: str) -> bool:
    """A ``Gemm(A, member)`` that is a matrix product: no bias, alpha 1, A not transposed."""
    return (node.op_type == "Gemm" and node.domain in ("", "ai.onnx") and len(node.input) >= 2
            and node.input[1] == member and node.input[0] != member and not any(node.input[2:])
            and attribute(node, "alpha", 1.0) == 1.0 and attribute(node, "transA", 0) == 0)


def _native(node: onnx.NodeProto, member: str, perm: tuple[int, ...], layout: tuple[int, ...]) -> str | None:
    """``"matmul"``/``"gather"`` if ``node`` can read ``member`` straight from the layout's 4-bit tensor."""
    if node.op_type == "MatMul" and list(node.input).index(member) == 1 and node.input[0] != member:
        return "matmul" if perm != layout else None  # MatMulNBits reads B^T
    if _plain_gemm(node, member):  # Gemm reads member^T when transB is set
        transposed = attribute(node, "transB", 0)
        return "matmul" if (perm == layout) == bool(transposed) else None
    if gathers_rows(node, member):
        return "gather" if perm == layout else None
    return None


def _choose_layout(index: GraphIndex, weight: _Weight, block_size: int) -> tuple[int, ...]:
    """The stored orientation: most native uses, then least padding, then the source's own."""
    def score(layout):
        native = sum(_native(n, m, p, layout) is not None
                     for m, p in weight.members.items() for n in index.consumers(m))
        k = weight.array.shape[layout[1]]
        return (native, -(-k % block_size), layout == _IDENTITY)

    return max((_IDENTITY, _SWAP), key=score)


def _store_4bit(index: GraphIndex, weight: _Weight, *, block_size: int, symmetric: bool,
                rounding: str) -> None:
    """Quantize ``weight`` once and make every reader use the 4-bit tensor (in place)."""
    from .int4_search import quantize_rows

    graph = index.graph
    layout = _choose_layout(index, weight, block_size)
    rows = np.ascontiguousarray(np.transpose(weight.array, layout))
    blocks, steps = quantize_rows(rows, block_size=block_size, symmetric=symmetric, rounding=rounding)
    blocks.scales = blocks.scales.astype(scale_dtype(blocks.scales))
    blocks.check_faithful(rows, what=f"weight {weight.source!r}", steps=steps)
    for member, perm in weight.members.items():  # each use's view of the stored layout
        if not np.array_equal(np.transpose(rows, relative_perm(layout, perm)), np.transpose(weight.array, perm)):
            raise ConversionError(f"weight {weight.source!r}: use {member!r} would not read its own "
                                  "values from the 4-bit tensor; please report this model.")
    names = _add_initializers(index, weight.source, blocks)
    # The old transposes go first: what still reads a member afterwards needs the float read.
    transposes = [n for n in map(index.producer, weight.members) if n is not None and n.op_type == "Transpose"]
    remove_nodes(graph, transposes, index=index)
    remove_initializers(graph, {weight.source, *weight.members}, index=index)  # members: equal untied weights
    prepend_nodes(graph, _rewrite_uses(index, weight, layout, blocks, names), index=index)
    if weight.tie is not None:
        weight.tie = TieRecord(initializer=names["packed"], uses=weight.uses, keras=weight.tie.keras,
                               source=weight.source, scale=names["scales"],
                               zero_point=names.get("zero_points"), axis=layout[1])
    logger.info("%s %r: one 4-bit tensor %s (block %d), uses: %s", "tie" if weight.tie else "weight",
                weight.source, list(rows.shape), block_size, [u.relation for u in weight.uses] or ["direct"])


def _add_initializers(index: GraphIndex, source: str, blocks: Blocks) -> dict[str, str]:
    """Store packed codes, scales and zero points; return the names nodes read them by."""
    taken: set[str] = set()
    names = {"packed": index.fresh_name(f"{source}_q4", taken),
             "scales": index.fresh_name(f"{source}_q4_scales", taken)}
    arrays = {"packed": blocks.packed, "scales": blocks.scales}
    if blocks.zero_points is not None:
        names["zero_points"] = index.fresh_name(f"{source}_q4_zero_points", taken)
        arrays["zero_points"] = blocks.zero_points
    add_initializers(index.graph, [numpy_helper.from_array(arrays[k], names[k]) for k in names], index=index)
    # MatMulNBits and GatherBlockQuantized take scales in the activations' dtype.
    names["scales_f32"] = names["scales"]
    if blocks.scales.dtype != np.float32:
        names["scales_f32"] = index.fresh_name(f"{names['scales']}_f32", taken)
    names["rows"] = index.fresh_name(f"{source}_q4_rows", taken)
    names["float"] = index.fresh_name(f"{source}_q4_dequantized", taken)
    return names


def _rewrite_uses(index: GraphIndex, weight: _Weight, layout: tuple[int, ...], blocks: Blocks,
                  names: dict[str, str]) -> list[onnx.NodeProto]:
    """Native readers become MatMulNBits / GatherBlockQuantized; the rest read the float matrix.

    Returns the nodes that read initializers only (to put first).
    """
    mk = helper.make_node
    n_rows, k = blocks.shape
    quantized = [names["packed"], names["scales_f32"]] + ([names["zero_points"]] if "zero_points" in names else [])
    first: list[onnx.NodeProto] = []
    if names["scales_f32"] != names["scales"]:
        first.append(mk("Cast", [names["scales"]], [names["scales_f32"]], to=TensorProto.FLOAT,
                        name=f"tiedonnx_int4/{names['scales_f32']}"))
    kinds = set()
    for member, perm in weight.members.items():
        for node in index.consumers(member):
            kind = _native(node, member, perm, layout)
            if kind == "matmul":
                _to_matmul_nbits(index, node, quantized, k=k, n=n_rows, block_size=blocks.block_size)
            elif kind == "gather":
                _to_gather_block_quantized(index, node, [names["rows"], *quantized[1:]], k=k,
                                           padded=blocks.packed.shape[1] * blocks.block_size,
                                           block_size=blocks.block_size)
            kinds.add(kind)
    if "matmul" in kinds:
        weight.uses.append(TieUse(relation="direct", output=names["packed"], kernel="integer"))
    if "gather" in kinds:
        shape = int64_constant(index.graph, [n_rows, -1], f"{names['rows']}_shape", index=index)
        first.append(mk("Reshape", [names["packed"], shape], [names["rows"]],
                        name=f"tiedonnx_int4/{names['rows']}"))
        weight.uses.append(TieUse(relation="identity", output=names["rows"], kernel="integer"))
    first += _float_reads(index, weight, layout, quantized, names["float"], k=k)
    return first


def _float_reads(index: GraphIndex, weight: _Weight, layout: tuple[int, ...], quantized: list[str],
                 float_name: str, *, k: int) -> list[onnx.NodeProto]:
    """``DequantizeNBits`` (+ Transpose) for each member some node still reads as float."""
    wanted = {m: relative_perm(layout, weight.members[m]) for m in weight.members
              if index.is_read(m) and index.producer(m) is None}
    if not wanted:
        return []
    # The member laid out as stored is the function's own output; the others transpose it.
    same = [m for m, perm in wanted.items() if perm == sorted(perm)]
    float_name = same[0] if same else float_name
    nodes = [helper.make_node(DEQUANTIZE_OP, quantized, [float_name], domain=FUNCTION_DOMAIN, K=k,
                              name=f"tiedonnx_int4/{float_name}")]
    for member, perm in wanted.items():
        if member != float_name:
            nodes.append(helper.make_node("Transpose", [float_name], [member], perm=perm,
                                          name=f"tiedonnx_int4/{member}"))
        weight.uses.append(TieUse(relation="dequantize", output=member, perm=perm, kernel="float"))
    logger.info("weight %r: %s read(s) the 4-bit tensor as float (folded once per session)",
                weight.source, wanted)
    return nodes


def _to_matmul_nbits(index: GraphIndex, node: onnx.NodeProto, quantized: list[str], *, k: int, n: int,
                     block_size: int) -> None:
    """Turn ``MatMul(A, M)`` into ``MatMulNBits(A, packed, scales[, zero_points])`` in place."""
    node.op_type, node.domain = "MatMulNBits", MS_DOMAIN
    set_inputs(node, [node.input[0], *quantized], index=index)
    node.ClearField("attribute")
    node.attribute.extend([helper.make_attribute("K", k), helper.make_attribute("N", n),
                           helper.make_attribute("bits", 4), helper.make_attribute("block_size", block_size)])


def _to_gather_block_quantized(index: GraphIndex, node: onnx.NodeProto, quantized: list[str], *,
                               k: int, padded: int, block_size: int) -> None:
    """Turn ``Gather(M, ids)`` into ``GatherBlockQuantized`` over the packed rows, in place.

    Padded rows are trimmed back to ``k`` by a ``Slice`` inserted after the node.
    """
    ids, output = node.input[1], node.output[0]
    node.op_type, node.domain = "GatherBlockQuantized", MS_DOMAIN
    set_inputs(node, [quantized[0], ids, *quantized[1:]], index=index)
    node.ClearField("attribute")
    node.attribute.extend([helper.make_attribute("bits", 4), helper.make_attribute("block_size", block_size),
                           helper.make_attribute("gather_axis", 0), helper.make_attribute("quantize_axis", 1)])
    if padded == k:
        return
    # Rows are padded to whole blocks; the lookup returns the padded width, trimmed here.
    wide = f"{output}_padded"
    index.drop_node(node)
    node.output[0] = wide
    index.add_node(node)
    bounds = [int64_constant(index.graph, [v], f"{wide}_{n}", index=index)
              for n, v in (("start", 0), ("end", k), ("axis", -1))]
    insert_after(index.graph, node, helper.make_node("Slice", [wide, *bounds], [output],
                                                     name=f"tiedonnx_int4/{output}/trim"), index=index)


def _finish(model: onnx.ModelProto, opset: int, *, symmetric: bool) -> None:
    """Domains, the dequantizing function if used, and an IR version that allows functions."""
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    domains = {o.domain for o in model.opset_import}
    if any(d == MS_DOMAIN for d, _ in ops) and MS_DOMAIN not in domains:
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if (FUNCTION_DOMAIN, DEQUANTIZE_OP) in ops:
        if FUNCTION_DOMAIN not in domains:
            model.opset_import.append(helper.make_opsetid(FUNCTION_DOMAIN, 1))
        if not any(f.domain == FUNCTION_DOMAIN and f.name == DEQUANTIZE_OP for f in model.functions):
            model.functions.append(dequantize_function(symmetric=symmetric, opset=opset))
        model.ir_version = max(model.ir_version, 8)  # model-local functions
