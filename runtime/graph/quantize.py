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

Per-tensor is the default, per-channel for language models (a tie read by a
lookup); see :func:`default_per_channel` and ``REDUCE_RANGE`` for the measured
reasons.

The int8 steps are in :mod:`.int8`; ``"int4"`` (4-bit block-wise weights, one tensor per tie) is
in :mod:`.int4`. The passes of each precision, in order, are :data:`PRECISION_PASSES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from ..errors import UsageError
from ..options import (ACCURACY_LEVELS, BLOCK_SIZES, DEFAULT_BLOCK_SIZE, FULL_RANGE_KEY,  # the one list,
                       INT4_ROUNDINGS, PRECISIONS, precision_problem)  # shared with the CLI
from .edit import transpose_perm
from .fp16 import to_fp16
from .passes import GraphPass, run_passes
from .metadata import PRECISION_KEY, TieRecord, TieUse, read_precision, read_ties, write_metadata, write_ties
from .retie import retie

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "PRECISION_KEY", "PRECISION_PASSES", "DEFAULT_PER_CHANNEL", "FULL_RANGE_KEY", "REDUCE_RANGE",
           "PrecisionOptions", "apply_precision",
           "check_precision_options", "default_per_channel",
           "read_precision", "ties_in_graph", "to_precision"]


# Per-tensor for most models, per-channel for language models (default_per_channel).
# The autoencoder: on the 784-256 sigmoid AE trained 5 epochs on scikit-learn
# digits (upscaled to 28x28), 297 held-out images, vs Keras fp32: per-tensor
# max abs 0.023, per-channel 0.015; reconstruction MSE within 0.05% of fp32's
# for both. Reconstruction is the same, so the simpler graph wins there:
# per-channel costs an extra activation-side Mul per transposed use and 2 KiB
# of scales. Language models are another matter once trained: on the committed
# Shakespeare LM (assets/tiny_lm, scripts/bench_quality.py, 16,384 held-out
# tokens) per-tensor int8 keeps the perplexity (ratio 0.9996) but picks Keras'
# top token only 96.72% of the time, mean KL 0.00039; per-channel 98.69%, KL
# 0.00009, at +1% bytes. The tiny random-weight KerasHub LMs
# (scripts/bench_tiny_lms.py) agree in direction: logits max abs per-tensor /
# per-channel GPT-2 0.0029 / 0.0023, Qwen and Llama-tied 0.0043 / 0.0029;
# Gemma 0.14 / 0.13 against its bound of 0.077 (per-channel does not rescue
# Gemma: its error comes from the 7-bit weights, REDUCE_RANGE). A model whose
# MatMuls read stacked 3-D weights (mixture-of-experts experts) stays
# per-tensor: per-channel leaves those experts float32 (int8.stacked_weight_matmuls).
DEFAULT_PER_CHANNEL = False  # the default where default_per_channel() does not choose per-channel

# 7-bit weight magnitudes in int8 storage. On x86 CPUs without VNNI (AVX2
# only), onnxruntime's u8s8 kernels sum pairs of uint8 x int8 products in
# int16, which saturates with full-range weights: measured max abs 0.069 on
# the model above (AMD EPYC, AVX2) against 0.023 with reduce_range. The file
# does not know which CPU it will run on, so it is safe everywhere by default;
# reduce_range=False (CLI: --no-reduce-range) is for files that will run on
# CPUs with VNNI (AVX512-VNNI, AVX-VNNI) or on ARM, and is recorded in the
# file's metadata under FULL_RANGE_KEY.
REDUCE_RANGE = True


def check_precision_options(precision: str, *, per_channel: bool | None = None,
                            block_size: int | None = None, symmetric: bool | None = None,
                            reduce_range: bool | None = None, short_names: bool | None = None,
                            rounding: str | None = None, int8_ties: bool | None = None,
                            accuracy_level: int | None = None) -> None:
    """Raise one :class:`UsageError` listing every problem with these options (None = default).

    ``export`` calls it before converting, so a bad option fails before any work.
    """
    problems = []
    if precision_problem(precision):
        problems.append(precision_problem(precision) + ".")
    for name, value in (("per_channel", per_channel), ("reduce_range", reduce_range)):
        if value is not None and precision != "int8":
            problems.append(f"{name} applies to int8 only. Received: {name}={value!r} with "
                            f"precision={precision!r}. Leave {name} unset.")
    for name, value in (("block_size", block_size), ("symmetric", symmetric), ("rounding", rounding),
                        ("int8_ties", int8_ties), ("accuracy_level", accuracy_level)):
        if value is not None and precision != "int4":
            problems.append(f"{name} applies to int4 only. Received: {name}={value!r} with "
                            f"precision={precision!r}. Leave {name} unset.")
    if block_size is not None and (isinstance(block_size, bool) or block_size not in BLOCK_SIZES):
        problems.append(f"Unsupported int4 block size. Received: block_size={block_size!r}. Use one of "
                        f"{', '.join(map(str, BLOCK_SIZES))} (default {DEFAULT_BLOCK_SIZE}).")
    if accuracy_level is not None and (isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS):
        problems.append(f"Unsupported int4 accuracy level. Received: accuracy_level={accuracy_level!r}. Use 0 "
                        "(float activations, the default) or 4 (int8 activations).")
    if rounding is not None and rounding not in INT4_ROUNDINGS:
        problems.append(f"Unknown int4 rounding. Received: rounding={rounding!r}. Use one of "
                        f"{', '.join(INT4_ROUNDINGS)} (default rtn).")
    for name, value in (("symmetric", symmetric), ("per_channel", per_channel), ("reduce_range", reduce_range),
                        ("short_names", short_names), ("int8_ties", int8_ties)):
        if value is not None and not isinstance(value, bool):
            problems.append(f"{name} must be True or False. Received: {name}={value!r}.")
    if problems:
        raise UsageError(" ".join(problems))


def _refuse_compounding(current: str, precision: str) -> None:
    """A model already at a reduced precision converts only to itself (rounding twice loses accuracy)."""
    if current not in ("fp32", precision):
        raise UsageError(f"The model is already stored as {current}; converting {current} to "
                         f"{precision} would compound rounding. Received: precision={precision!r}. "
                         "Convert the fp32 export instead.")


def to_precision(model: onnx.ModelProto, precision: str, *, per_channel: bool | None = None,
                 block_size: int | None = None, symmetric: bool | None = None,
                 short_names: bool | None = None, reduce_range: bool | None = None,
                 rounding: str | None = None, int8_ties: bool | None = None,
                 accuracy_level: int | None = None) -> onnx.ModelProto:
    """Return a copy of ``model`` with its weights stored at ``precision``, ties kept.

    Args:
        model: an fp32 model (ties already folded or not: ``retie`` runs first).
            Not modified.
        precision: ``"fp32"`` (retie only), ``"fp16"`` (weights stored as
            float16, computed and exposed as float32), ``"int8"`` (weights
            int8, activations quantized at run time) or ``"int4"`` (weights
            4-bit in blocks, see :mod:`.int4`).
        per_channel: int8 only; per-channel weight scales instead of one per
            tensor. ``None``: :func:`default_per_channel` (per channel for a
            language model, per tensor otherwise).
        reduce_range: int8 only; 7-bit weight magnitudes, safe on every CPU
            (``None``: True). False gives full 8-bit weights, more accurate,
            for CPUs with VNNI or ARM only (see :data:`REDUCE_RANGE`).
        block_size: int4 only; values per scale, one of
            :data:`~tiedonnx.runtime.options.BLOCK_SIZES` (``None``: 32).
        symmetric: int4 only; no zero points (``None``: asymmetric).
        rounding: int4 only; ``"rtn"`` (``None``, onnxruntime's round-to-nearest) or
            ``"search"`` (per-block scale search, :mod:`.int4_search`).
        int8_ties: int4 only; keep each tie (a language model's embedding and
            head) in int8, per tensor, the rest in int4 (:mod:`.int4_mixed`).
        accuracy_level: int4 only; ``MatMulNBits``' ``accuracy_level``: 0 (``None``: float
            activations) or 4 (activations quantized to int8 per block: about 3x the decode
            speed on AVX2, see :data:`tiedonnx.runtime.options.ACCURACY_LEVELS`).
        short_names: rename internal tensors to short names and clear node
            names (:mod:`.names`; the inputs and outputs keep theirs).
            ``None``: only for int4, whose small files are mostly names.

    Returns:
        The new model. Its ``tiedonnx.ties`` record names, for each tie, the
        one stored initializer and its dtype; ``tiedonnx.precision`` holds
        ``precision``.

    Raises:
        UsageError: unknown precision, an option of another precision, a
            block size not supported, or a model already stored at another
            reduced precision.
        ConversionError: the quantized tensors of a tie do not agree.

    Example:
        >>> small = to_precision(onnx.load("ae.onnx"), "int8")  # doctest: +SKIP
    """
    check_precision_options(precision, per_channel=per_channel, block_size=block_size,
                            symmetric=symmetric, reduce_range=reduce_range, short_names=short_names,
                            rounding=rounding, int8_ties=int8_ties, accuracy_level=accuracy_level)
    current = read_precision(model)
    _refuse_compounding(current, precision)
    tied, _ = retie(model, measure=False)  # the pipeline's one copy: every pass after it edits this one
    if current == precision and precision != "fp32":
        ties = ties_in_graph(tied)
        if ties:
            write_ties(tied, ties)
        logger.info("model is already %s; returning it unchanged", precision)
        return tied
    return apply_precision(tied, precision, per_channel=per_channel, block_size=block_size, symmetric=symmetric,
                           short_names=short_names, reduce_range=reduce_range, rounding=rounding,
                           int8_ties=int8_ties, accuracy_level=accuracy_level)


def apply_precision(tied: onnx.ModelProto, precision: str, *, per_channel: bool | None = None,
                    block_size: int | None = None, symmetric: bool | None = None,
                    short_names: bool | None = None, reduce_range: bool | None = None,
                    rounding: str | None = None, int8_ties: bool | None = None,
                    accuracy_level: int | None = None) -> onnx.ModelProto:
    """:func:`to_precision`'s passes without its checks and ``retie``, for a pipeline that ran them.

    ``tied`` must be an fp32 model whose ties are folded (``retie`` ran); it is
    consumed (the export hands over its own copy: no second copy, no second
    search for duplicates over every weight). Options as :func:`to_precision`.
    """
    ties = ties_in_graph(tied)
    if ties:
        write_ties(tied, ties)
    from .int4 import DEFAULT_SYMMETRIC

    if per_channel is None and precision == "int8":
        per_channel = default_per_channel(tied, ties)
    options = PrecisionOptions(
        per_channel=DEFAULT_PER_CHANNEL if per_channel is None else per_channel,
        reduce_range=REDUCE_RANGE if reduce_range is None else reduce_range,
        block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
        symmetric=DEFAULT_SYMMETRIC if symmetric is None else symmetric,
        rounding=rounding or "rtn", int8_ties=bool(int8_ties), accuracy_level=accuracy_level or 0)
    passes = list(PRECISION_PASSES[precision])
    if (precision == "int4") if short_names is None else short_names:
        passes.append(SHORT_NAMES)
    out, _ = run_passes(tied, passes, options, pipeline=precision)
    write_metadata(out, {PRECISION_KEY: precision})
    return out


def default_per_channel(model: onnx.ModelProto, ties: list[TieRecord]) -> bool:
    """int8 scales when none were asked for: per channel for a language model, else per tensor.

    A language model is a graph whose tie is read by a lookup (``Gather``: the
    token embedding tied to the output projection) and whose ``MatMul`` weights
    are all 2-D (per-channel int8 leaves stacked mixture-of-experts kernels in
    float32). The measurements behind it are at :data:`DEFAULT_PER_CHANNEL`.
    """
    from .int8 import stacked_weights

    tied = {t.initializer for t in ties}
    looked_up = any(n.op_type == "Gather" and n.input and n.input[0] in tied for n in model.graph.node)
    if not looked_up or stacked_weights(model.graph):
        return DEFAULT_PER_CHANNEL
    logger.info("int8: one scale per output channel (a language model: its tie is read by a lookup); "
                "per_channel=False (CLI: --no-per-channel) for one scale per tensor")
    return True


@dataclass(frozen=True)


class PrecisionOptions:
    """Every precision option, defaults resolved: what each pass of :data:`PRECISION_PASSES` receives."""

    per_channel: bool
    reduce_range: bool
    block_size: int
    symmetric: bool
    rounding: str = "rtn"  # int4: "rtn" or "search" (.int4_search)
    int8_ties: bool = False  # int4: ties in int8, the rest in int4 (.int4_mixed)
    accuracy_level: int = 0  # int4: MatMulNBits' accuracy_level (ACCURACY_LEVELS)


def _fp16_pass(model: onnx.ModelProto, options: PrecisionOptions):
    return to_fp16(model)


def _int8_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .int8 import to_int8

    return to_int8(model, per_channel=options.per_channel, reduce_range=options.reduce_range)


def _lookup_axis_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .lookup_axis import gather_transposed_columns

    return gather_transposed_columns(model)


def _tie_input_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .lookup_axis import leave_tie_unpacked

    return leave_tie_unpacked(model)


def _int4_views_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .int4_views import flatten_weight_reshapes

    return flatten_weight_reshapes(model)


def _int4_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .int4 import to_int4
    from .int4_mixed import to_int4_int8_ties

    int4 = dict(block_size=options.block_size, symmetric=options.symmetric, rounding=options.rounding,
                accuracy_level=options.accuracy_level)
    if options.int8_ties:
        return to_int4_int8_ties(model, reduce_range=options.reduce_range, **int4)
    return to_int4(model, **int4)


def _short_names_pass(model: onnx.ModelProto, options: PrecisionOptions):
    from .names import shorten_names

    return shorten_names(model)


#: After the quantizing pass of int8, and of int4 (whose --int8-ties stores the tie as int8; a 4-bit tie
#: is read by GatherBlockQuantized and left alone by both).
LOOKUP_AXIS = GraphPass("lookup_axis", _lookup_axis_pass, "after the quantizing pass: the lookup reads the "
                        "Transpose that re-tying put over the int8 tie stored in the projection's layout")
TIE_INPUT = GraphPass("tie_input", _tie_input_pass, "after lookup_axis: the int8 tie must be read directly by "
                      "its lookup and its integer projection, with no Transpose left to fold")

#: The passes of each precision, in order, after ``retie`` (which :func:`to_precision` runs first,
#: on its one copy of the model: every pass reads one initializer per tie). Each entry says what
#: its place depends on. A new precision or option step is one more entry here.
PRECISION_PASSES: dict[str, tuple[GraphPass, ...]] = {
    "fp32": (),
    "fp16": (GraphPass("fp16", _fp16_pass, "after retie: a tie is one float32 initializer, cast once"),),
    "int8": (GraphPass("int8", _int8_pass, "after retie: ties_in_graph's record says which uses to re-tie "
                       "after quantize_dynamic"),
             LOOKUP_AXIS, TIE_INPUT),
    "int4": (GraphPass("int4_views", _int4_views_pass, "before int4: a rank-3+ weight must be a 2-D view "
                       "for MatMulNBits; ties are left alone (the record must be complete, so after retie)"),
             GraphPass("int4", _int4_pass, "after int4_views: quantizes the 2-D weights it made"),
             LOOKUP_AXIS, TIE_INPUT),
}
#: Optional last pass (``short_names``): it renames what every earlier pass made, and the tie record.
SHORT_NAMES = GraphPass("short_names", _short_names_pass, "last: renames the tensors every earlier pass "
                        "made and rewrites the tie record to match")


def ties_in_graph(model: onnx.ModelProto) -> list[TieRecord]:
    """The tie record, plus any ``Transpose`` of an initializer it does not list.

    A graph tied by hand (or by another tool) has the structure but no record;
    it must be handled the same way, or quantize_dynamic would split it.
    """
    ties = read_ties(model)
    by_init = {t.initializer: t for t in ties}
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Transpose" or not node.input or node.input[0] not in inits:
            continue
        source = inits[node.input[0]]
        if source.name not in by_init:
            by_init[source.name] = TieRecord(initializer=source.name, shape=list(source.dims))
            ties.append(by_init[source.name])
        tie = by_init[source.name]
        if not any(u.output == node.output[0] for u in tie.uses):
            tie.uses.append(TieUse(relation="transpose", output=node.output[0],
                                   perm=transpose_perm(node, len(source.dims))))
    return ties
