"""fp16 weight storage that keeps the tie: each float32 initializer stored once as float16.

Each float32 initializer ``W`` becomes a float16 initializer ``W__fp16`` plus a
``Cast`` back to float32 whose output keeps the name ``W``, so every consumer,
the tie's ``Transpose`` included, is untouched and reads the one fp16 tensor.
Inputs, outputs and arithmetic stay float32: callers pass and receive float32,
and onnxruntime's CPU provider (which has few float16 kernels and would
otherwise insert casts around every node) folds the ``Cast`` once at session
load and runs its fp32 kernels. Only the weights' rounding changes results.

This is a weight-storage conversion, deliberately not
``onnxruntime.transformers.float16.convert_float_to_float16``: that one moves
the arithmetic to float16 too (slower on CPU, larger error through sigmoid
activations).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .edit import FP16_MAX, prepend_nodes, replace_repeated
from .metadata import KEPT_FP32_KEY, TieUse, read_ties, write_metadata, write_ties

logger = logging.getLogger(__name__)

__all__ = ["FP16_SUFFIX", "KEPT_FP32_KEY", "to_fp16"]

FP16_SUFFIX = "__fp16"
#: Metadata key: JSON list of the float32 initializers left in float32 (out of float16 range).


def _key(half: np.ndarray) -> tuple:
    """Shape and a digest of the bits: equal keys are equal tensors (SHA-256)."""
    return half.shape, hashlib.sha256(np.ascontiguousarray(half).view(np.uint16).tobytes()).digest()


def _fits(data: np.ndarray) -> bool:
    """Whether every finite value keeps a finite float16 (infinities and NaN stay what they are)."""
    finite = data[np.isfinite(data)]
    return not finite.size or float(np.abs(finite).max()) <= FP16_MAX


def to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Store ``model``'s float32 initializers as float16, in place (a pass, :mod:`.passes`).

    Run :func:`~tiedonnx.runtime.graph.retie` first (``to_precision`` does):
    a tie folded into one initializer stays one fp16 initializer.

    Initializers with a finite value beyond float16's range (|w| > 65504:
    attention-mask constants such as KerasHub's -1e9, large biases) stay
    float32, since float16 would turn them into infinities (and ``inf * 0``
    into NaN). They are logged and listed under the :data:`KEPT_FP32_KEY`
    metadata key, so the file says what was not converted.

    Args:
        model: the model. Initializers that are also graph inputs
            (overridable at run time) are left in float32.

    Returns:
        ``(model, converted)``: the model, its ``tiedonnx.ties`` record naming
        the fp16 initializers, and float32 name -> float16 initializer name.
    """
    out = model
    graph = out.graph
    overridable = {i.name for i in graph.input}
    casts, converted, kept, too_large = [], {}, [], []
    underflow = 0
    # Mixed-precision graphs already hold float16 constants (a scalar 0, a 0.5);
    # a converted tensor equal to one of them reuses it instead of storing a copy.
    existing = {_key(numpy_helper.to_array(i)): i.name for i in graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT16}
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name in overridable:
            kept.append(init)
            continue
        data = numpy_helper.to_array(init)
        if not _fits(data):
            too_large.append(init.name)
            kept.append(init)
            logger.info("fp16: %r kept in float32: largest |value| %g is over float16's %g",
                        init.name, float(np.abs(data[np.isfinite(data)]).max()), FP16_MAX)
            continue
        half = data.astype(np.float16)
        underflow += int(np.count_nonzero((half == 0) & (data != 0)))
        key = _key(half)
        name = existing.get(key)
        if name is None:
            name = existing[key] = init.name + FP16_SUFFIX
            kept.append(numpy_helper.from_array(half, name))
        casts.append(helper.make_node("Cast", [name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=f"tiedonnx_fp16/{init.name}"))
        converted[init.name] = name
    replace_repeated(graph.initializer, kept)
    prepend_nodes(graph, casts)  # the casts read only initializers
    if underflow:
        logger.info("fp16: %d nonzero weights rounded to 0 (|w| < 6e-8)", underflow)
    logger.info("fp16: %d initializers stored as float16, %d kept in float32", len(converted),
                len(too_large))
    write_metadata(out, {KEPT_FP32_KEY: json.dumps(too_large) if too_large else None})
    _record_fp16_ties(out, converted)
    return out, converted


def _record_fp16_ties(out: onnx.ModelProto, converted: dict[str, str]) -> None:
    ties = read_ties(out)
    for tie in ties:
        name = tie.initializer
        if name in converted:
            tie.initializer, tie.dtype, tie.source = converted[name], "float16", name
            tie.uses.insert(0, TieUse(relation="cast", output=name, to="float32"))
    if ties:
        write_ties(out, ties)
