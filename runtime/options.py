"""Choices shared by the library and the CLI, kept import-free.

The CLI builds its parser from these without importing numpy or onnxruntime,
and :func:`tiedonnx.runtime.load` validates against the same tuples, so a flag
and its keyword cannot drift apart.
"""

from __future__ import annotations

#: ``providers=`` shorthands accepted by :func:`tiedonnx.runtime.load` and ``--provider``.
PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")

#: ``memory=`` modes: "fast" = onnxruntime's full optimizations; "lean" = one
#: in-memory copy per tied weight (see :mod:`tiedonnx.runtime.lean`).
MEMORY_MODES = ("fast", "lean")

#: Default chunk size of ``tiedonnx run`` so large (memory-mapped) inputs stream.
DEFAULT_RUN_BATCH = 4096

#: ``write_site(runtime=...)`` and ``tiedonnx web --runtime``: where the page loads
#: onnxruntime-web from (a local copy in the site, or jsDelivr with integrity hashes).
RUNTIME_MODES = ("local", "cdn")
#: ``serve(port=...)`` and ``tiedonnx web --serve --port`` default.
DEFAULT_PORT = 8000

#: Weight precisions of ``export(precision=...)``, ``--precision`` and ``quantize``.
PRECISIONS = ("fp32", "fp16", "int8", "int4")

#: int4 block sizes (``block_size=``, ``--block-size``): onnxruntime's MatMulNBits
#: and GatherBlockQuantized take powers of two from 16 up.
BLOCK_SIZES = (16, 32, 64, 128)
#: int4 default block size. On the digits-trained 784-256 tied AE
#: (scripts/bench_edge.py): block 16 139,957 B,
#: 32 124,275 B (MSE +1.48% vs fp32), 128 112,516 B (+2.66%).
DEFAULT_BLOCK_SIZE = 32
#: int4 rounding (``rounding=``, ``quantize --rounding``): onnxruntime's round-to-nearest, or a
#: per-block scale search (runtime/graph/int4_search.py; figures: scripts/bench_quality.py).
INT4_ROUNDINGS = ("rtn", "search")
#: int4 ``MatMulNBits`` accuracy levels offered: 0, float activations (onnxruntime's default), and 4,
#: activations quantized to int8 per block (onnxruntime's int8 kernels). Level 4 measured 3.1x the
#: decode tokens/s of level 0 on the 100M-parameter Qwen generation folder (220.7 against 70.9, 2-core
#: AVX2 host, onnxruntime 1.32; scripts/bench_generate.py --precisions int4,int4-acc0) and is what
#: generation folders use. It
#: needs the scales folded to an initializer before pre-packing, which constant folding does; with
#: it off (an ORT-format file) onnxruntime 1.32 computes wrong results, so ``ort`` refuses it.
ACCURACY_LEVELS = (0, 4)

# ONNX opset 15 is tf2onnx's own default (PREFERRED_OPSET) and runs on
# onnxruntime >= 1.10, TensorRT >= 8.2 and ORT Mobile builds from 2021 on;
# tied autoencoders need nothing newer (opset 17 adds LayerNormalization and
# DFT, which tf2onnx decomposes anyway). Edge runtimes lag, so we stay low.
#: ``export(opset=...)`` and ``--opset`` default.
DEFAULT_OPSET = 15
#: Opsets export accepts. 13: per-axis quantization ops; 18: tf2onnx 1.17's tested max.
SUPPORTED_OPSETS = range(13, 19)


def positive_int_problem(name: str, value: object, *, allow_none: bool = False) -> str | None:
    """What is wrong with ``value`` as a positive integer named ``name`` (None if nothing).

    Returns a message rather than raising, so a function can collect every
    problem and raise once. ``True``/``False`` are refused (``bool`` is an ``int``).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        return f"{name} must be a positive integer{extra}. Received: {name}={value!r}"
    return None


def precision_problem(precision: object) -> str | None:
    """What is wrong with ``precision`` (None if it is one of :data:`PRECISIONS`): the one wording."""
    if precision in PRECISIONS:
        return None
    return f"Unknown precision. Received: precision={precision!r}. Use one of {', '.join(PRECISIONS)}"


def check_precision(precision: object) -> None:
    """Raise :class:`~tiedonnx.runtime.errors.UsageError` unless ``precision`` is one of :data:`PRECISIONS`."""
    problem = precision_problem(precision)
    if problem:
        from .errors import UsageError

        raise UsageError(problem + ".")


def check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    """Raise :class:`~tiedonnx.runtime.errors.UsageError` unless ``value`` is a positive integer."""
    problem = positive_int_problem(name, value, allow_none=allow_none)
    if problem:
        from .errors import UsageError

        raise UsageError(problem + ".")

#: Metadata key of an int8 file quantized with full 8-bit weights (``reduce_range=False``):
#: written by :mod:`.graph.quantize`, read by :func:`tiedonnx.runtime.load` (which warns on
#: x86 CPUs without VNNI). Here, not in the quantizer, so loading never imports it.
FULL_RANGE_KEY = "tiedonnx.int8.full_range"
#: ``export --task generate --decoder`` / ``export_generation(decoder=)``: the fused graph where the
#: family allows it, else traced (auto); fused only; tf2onnx through call_with_cache only.
DECODER_KINDS = ("auto", "fused", "traced")
