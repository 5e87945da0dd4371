"""Lower-precision exports that keep the tie: one int8 / fp16 tensor per tie.

Why onnxruntime's ``quantize_dynamic`` alone breaks ties: it quantizes a
``MatMul`` weight only when input B *is an initializer* (``MatMulConstBOnly``,
on by default in dynamic mode, and it has no other way to know B is
constant). In a tied graph the decoder reads ``Transpose(W)``, a node output,
so that ``MatMul`` stays fp32, and ``W`` must stay in the file in fp32 to feed
the ``Transpose`` next to the int8 copy made for the encoder: on the 784-256
autoencoder the "quantized" file (1,010,074 bytes) is larger than the fp32 one.
Untying first lets it quantize both uses, but then it stores two int8 copies.

What this module does instead (:func:`to_precision` with ``"int8"``):

1. ``retie`` (ties preserved, or restored when an exporter folded them).
2. On a working copy, *untie*: each transposed use becomes its own initializer,
   so ``quantize_dynamic`` sees a constant B everywhere and does what it does
   right (scale and zero-point choice, ``DynamicQuantizeLinear`` +
   ``MatMulInteger`` rewrite, opset bump).
3. *Re-tie the quantized model* (the part written here). Per-tensor
   quantization commutes with transposition (one scale from the same set of
   values, rounding element by element), so the int8 ``W^T`` is bit for bit
   the transpose of the int8 ``W``: it is replaced by a ``Transpose`` over the
   int8 ``W`` and shares its scale and zero point (checked, never assumed).
   Per-channel scales follow each ``MatMul``'s *output* columns, which are
   W's columns for the encoder but W's rows for the decoder, so the two uses
   cannot share one int8 tensor that way. The transposed use is instead left
   out of ``quantize_dynamic`` and rewritten here to keep W's column scales
   ``s`` on the activation side: ``h @ (q * s)^T == (h * s) @ q^T``.

Uses that onnxruntime cannot run as integer kernels (a ``ConvTranspose`` tied
to a ``Conv``) read ``DequantizeLinear`` of the same int8 tensor: still one
copy in the file, computed in fp32 (logged).

Choice of default (``per_channel=None`` -> per-tensor), measured on the
784-256 sigmoid autoencoder (``scripts/bench_edge.py``): per-channel adds an
elementwise ``Mul`` on the decoder's input and 1 KiB of scales; see
``DEFAULT_PER_CHANNEL`` for the figures.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConversionError, UsageError
from .fp16 import to_fp16
from .metadata import read_ties, ties_json, write_metadata, TIES_KEY
from .retie import retie

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "PRECISION_KEY", "DEFAULT_PER_CHANNEL", "to_precision", "read_precision"]

PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_KEY = "tiedonnx.precision"

# Per-tensor by default. Measured on the 784-256 sigmoid AE (random-normal
# weights, digits-derived inputs): per-tensor max abs diff vs fp32 0.0087,
# per-channel 0.0079; reconstruction MSE within 0.1% of fp32 for both. The
# accuracy gain of per-channel is within noise here while it costs an extra
# activation-side Mul on every transposed use, so per-tensor is the default.
DEFAULT_PER_CHANNEL = False

_QSUFFIX, _SSUFFIX, _ZSUFFIX = "_quantized", "_scale", "_zero_point"


def read_precision(model: onnx.ModelProto) -> str:
    """The precision recorded in ``model``'s metadata (``"fp32"`` when none is)."""
    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY:
            return prop.value
    return "fp32"


def to_precision(model: onnx.ModelProto, precision: str, *,
                 per_channel: bool | None = None) -> onnx.ModelProto:
    """Return a copy of ``model`` with its weights stored at ``precision``, ties kept.

    Args:
        model: an fp32 model (ties already folded or not: ``retie`` runs first).
            Not modified.
        precision: ``"fp32"`` (retie only), ``"fp16"`` (weights stored as
            float16, computed and exposed as float32) or ``"int8"`` (weights
            int8, activations quantized at run time).
        per_channel: int8 only; per-channel weight scales instead of one per
            tensor. ``None`` takes :data:`DEFAULT_PER_CHANNEL`.

    Returns:
        The new model. Its ``tiedonnx.ties`` record names, for each tie, the
        one stored initializer and its dtype; ``tiedonnx.precision`` holds
        ``precision``.

    Raises:
        UsageError: unknown precision, ``per_channel`` without int8, or a model
            already stored at another reduced precision.
        ConversionError: the quantized tensors of a tie do not agree.

    Example:
        >>> small = to_precision(onnx.load("ae.onnx"), "int8")  # doctest: +SKIP
    """
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision. Received: precision={precision!r}. "
                         f"Use one of {', '.join(PRECISIONS)}.")
    if per_channel is not None and precision != "int8":
        raise UsageError(f"per_channel applies to int8 only. Received: per_channel={per_channel!r} "
                         f"with precision={precision!r}. Leave per_channel unset.")
    current = read_precision(model)
    if current not in ("fp32", precision):
        raise UsageError(f"The model is already stored as {current}; converting {current} to "
                         f"{precision} would compound rounding. Received: precision={precision!r}. "
                         "Convert the fp32 export instead.")
    tied, _ = retie(model)
    if current == precision and precision != "fp32":
        logger.info("model is already %s; returning it unchanged", precision)
        return tied
    if precision == "fp16":
        out = to_fp16(tied)
    elif precision == "int8":
        out = _to_int8(tied, per_channel=DEFAULT_PER_CHANNEL if per_channel is None else per_channel)
    else:
        out = tied
    write_metadata(out, {PRECISION_KEY: precision})
    return out


def _members(entry: dict) -> dict[str, tuple[int, ...]]:
    """Float names of one tie -> permutation of the stored tensor that gives them."""
    source = entry["initializer"]
    ndim = len(entry.get("shape") or []) or 2
    members = {source: tuple(range(ndim))}
    for use in entry.get("uses", []):
        if use.get("relation") == "transpose":
            members[use["output"]] = tuple(use["perm"])
    return members


def _untie(model: onnx.ModelProto, ties: list[dict]) -> onnx.ModelProto:
    """Working copy where every transposed use is an initializer of its own."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    graph = work.graph
    arrays = {i.name: i for i in graph.initializer}
    drop = set()
    for entry in ties:
        source = arrays.get(entry["initializer"])
        if source is None:
            raise ConversionError(f"The tie record names initializer {entry['initializer']!r}, "
                                  "which the graph does not have. Re-run retie on the fp32 model.")
        data = numpy_helper.to_array(source)
        for name, perm in _members(entry).items():
            if name != source.name:
                graph.initializer.append(numpy_helper.from_array(np.transpose(data, perm), name))
                drop.add(name)
    nodes = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in drop)]
    del graph.node[:]
    graph.node.extend(nodes)
    for i, node in enumerate(graph.node):
        node.name = node.name or f"tiedonnx_node_{i}"  # nodes_to_exclude matches by name
    return work


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _run_quantize_dynamic(work: onnx.ModelProto, *, per_channel: bool,
                          exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tiedonnx-q-") as tmp:
        out = Path(tmp) / "q.onnx"
        # quantize_dynamic warns through the root logger that shape-inference
        # pre-processing was not run; these graphs are fully shaped already.
        root = logging.getLogger()
        quiet = _DropMessage("pre-processing before quantization")
        root.addFilter(quiet)
        try:
            quantize_dynamic(work, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
        finally:
            root.removeFilter(quiet)
        return onnx.load(str(out))


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _to_int8(model: onnx.ModelProto, *, per_channel: bool) -> onnx.ModelProto:
    ties = read_ties(model)
    work = _untie(model, ties)
    # Per-channel: transposed uses are left to _fold_scales (see module docstring).
    exclude = []
    if per_channel:
        for entry in ties:
            for name in list(_members(entry))[1:]:
                exclude += [n.name for n in _consumers(work.graph, name)]
    quantized = _run_quantize_dynamic(work, per_channel=per_channel, exclude=exclude)
    new_ties = [_retie_quantized(quantized.graph, entry, model) for entry in ties]
    _prune_initializers(quantized.graph)
    write_metadata(quantized, {TIES_KEY: ties_json(new_ties)})
    # quantize_dynamic replaces producer_name; keep the record of the original.
    for prop in model.metadata_props:
        if prop.key not in (TIES_KEY, PRECISION_KEY):
            write_metadata(quantized, {prop.key: prop.value})
    return quantized


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


def _relative_perm(stored: tuple[int, ...], member: tuple[int, ...]) -> list[int]:
    """``perm`` with ``transpose(transpose(S, stored), perm) == transpose(S, member)``."""
    inverse = np.argsort(stored)
    return [int(inverse[axis]) for axis in member]


class _Tie:
    """One tie inside the quantized graph: its stored int8 tensor and how to reach it."""

    def __init__(self, graph: onnx.GraphProto, entry: dict, source: np.ndarray):
        self.graph, self.entry = graph, entry
        self.members = _members(entry)
        self.inits = {i.name: i for i in graph.initializer}
        quantized = [m for m in self.members if m + _QSUFFIX in self.inits]
        source_name = entry["initializer"]
        self.primary = source_name if source_name in quantized or not quantized else quantized[0]
        self.quantized = quantized
        self.new_nodes: list[onnx.NodeProto] = []
        self.uses: list[dict] = []
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
        return _relative_perm(self.members[self.primary], self.members[member])

    def add(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.new_nodes.append(helper.make_node(op, inputs, [output],
                                               name=f"tiedonnx_int8/{output}", **attrs))
        return output


def _retie_quantized(graph: onnx.GraphProto, entry: dict, original: onnx.ModelProto) -> dict:
    """Make every use of one tie read a single stored tensor; return its new tie record."""
    source = numpy_helper.to_array(next(i for i in original.graph.initializer
                                        if i.name == entry["initializer"]))
    tie = _Tie(graph, entry, source)
    if not tie.quantized:
        logger.warning("tie %r: no use of it is quantizable by onnxruntime; stored once in fp32",
                       entry["initializer"])
    for member in tie.members:
        if member != tie.primary and member in tie.quantized:
            _share_quantized(tie, member)
    for member in tie.members:
        if _consumers(graph, member) or member in {o.name for o in graph.output}:
            _float_use(tie, member)
    if tie.quantized and _consumers(graph, tie.name(_QSUFFIX)):
        tie.uses.insert(0, {"relation": "identity", "output": tie.name(_QSUFFIX), "kernel": "integer"})
    tie.remove |= {m for m in tie.members if m != tie.primary or tie.quantized}
    kept = [i for i in graph.initializer if i.name not in tie.remove]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = tie.new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return _record(tie, source)


def _share_quantized(tie: _Tie, member: str) -> None:
    """Replace ORT's int8 copy of a transposed use by a Transpose over the stored int8 tensor."""
    perm = tie.rel(member)
    mine = [numpy_helper.to_array(tie.inits[member + s]) for s in (_QSUFFIX, _SSUFFIX, _ZSUFFIX)]
    if not (np.array_equal(mine[0], np.transpose(tie.q, perm))
            and np.array_equal(mine[1], tie.scale) and np.array_equal(mine[2], tie.zp)):
        raise ConversionError(
            f"The int8 copy of tied use {member!r} is not the transpose of the int8 "
            f"{tie.primary!r} (scales {mine[1].ravel()[:3]} vs {tie.scale.ravel()[:3]}). "
            "This happens only with per-channel scales; use per_channel=False.")
    tie.add("Transpose", [tie.name(_QSUFFIX)], member + _QSUFFIX, perm=perm)
    renames = {member + _SSUFFIX: tie.name(_SSUFFIX), member + _ZSUFFIX: tie.name(_ZSUFFIX)}
    for node in tie.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    tie.remove |= {member + s for s in (_QSUFFIX, _SSUFFIX, _ZSUFFIX)}
    tie.uses.append({"relation": "transpose", "perm": perm, "output": member + _QSUFFIX,
                     "kernel": "integer"})


def _float_use(tie: _Tie, member: str) -> None:
    """A use still reading the float tensor: integer rewrite if a MatMul can take it, else dequantize."""
    if not tie.quantized:  # the fp32 tie as retie left it
        if member != tie.primary:
            tie.add("Transpose", [tie.primary], member, perm=tie.rel(member))
            tie.uses.append({"relation": "transpose", "perm": tie.rel(member), "output": member,
                             "kernel": "float"})
        return
    for node in _consumers(tie.graph, member):
        if _can_fold(tie, member, node):
            _fold_scales(tie, member, node)
    if not (_consumers(tie.graph, member) or member in {o.name for o in tie.graph.output}):
        return
    float_name = tie.name("_dequantized")
    if not any(n.output[0] == float_name for n in tie.new_nodes):
        attrs = {} if tie.axis is None else {"axis": tie.axis}
        tie.add("DequantizeLinear", [tie.name(_QSUFFIX), tie.name(_SSUFFIX), tie.name(_ZSUFFIX)],
                float_name, **attrs)
    tie.add("Transpose", [float_name], member, perm=tie.rel(member))
    logger.warning("tie %r: use %r cannot run as an integer kernel; it reads the int8 tensor "
                   "through DequantizeLinear (fp32 compute)", tie.entry["initializer"], member)
    tie.uses.append({"relation": "dequantize", "perm": tie.rel(member), "output": member,
                     "kernel": "float"})


def _can_fold(tie: _Tie, member: str, node: onnx.NodeProto) -> bool:
    return (node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] == member
            and node.input[0] != member and tie.q.ndim == 2 and tie.rel(member) == [1, 0]
            and tie.axis in (None, 1) and not np.any(tie.zp))


def _fold_scales(tie: _Tie, member: str, node: onnx.NodeProto) -> None:
    """``A @ (q * s)^T`` as ``(A * s) @ q^T`` with int8 ``q^T``: per-channel scales of W move to A."""
    base = f"{node.name or node.output[0]}"
    q_t = member + _QSUFFIX
    if not any(n.output[0] == q_t for n in tie.new_nodes):
        tie.add("Transpose", [tie.name(_QSUFFIX)], q_t, perm=[1, 0])
        tie.uses.append({"relation": "transpose", "perm": [1, 0], "output": q_t, "kernel": "integer"})
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
    nodes = list(tie.graph.node)
    at = nodes.index(node)
    nodes[at:at + 1] = pattern
    del tie.graph.node[:]
    tie.graph.node.extend(nodes)
    logger.info("tie %r: %s runs (A * s) @ q^T on the shared int8 tensor", tie.entry["initializer"],
                node.name)


def _record(tie: _Tie, source: np.ndarray) -> dict:
    entry = {k: v for k, v in tie.entry.items() if k == "keras"}
    if not tie.quantized:
        entry.update(initializer=tie.primary, dtype=str(source.dtype), shape=list(source.shape))
    else:
        entry.update(initializer=tie.name(_QSUFFIX), dtype=str(tie.q.dtype), shape=list(tie.q.shape),
                     scale=tie.name(_SSUFFIX), zero_point=tie.name(_ZSUFFIX), axis=tie.axis,
                     source=tie.entry["initializer"])
    entry["uses"] = tie.uses
    return entry


def _graph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node of ``graph`` or of its subgraphs."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _graph_inputs(sub)
    return names


def _prune_initializers(graph: onnx.GraphProto) -> None:
    used = _graph_inputs(graph) | {o.name for o in graph.output} | {i.name for i in graph.input}
    kept = [i for i in graph.initializer if i.name in used]
    if len(kept) != len(graph.initializer):
        logger.debug("dropped %d unused initializers", len(graph.initializer) - len(kept))
        del graph.initializer[:]
        graph.initializer.extend(kept)
