"""int8 storage that keeps the tie: untie, onnxruntime's ``quantize_dynamic``, re-tie.

Why and how: :mod:`.quantize`'s docstring. :func:`to_int8` is the ``int8``
entry of :data:`.quantize.PRECISION_PASSES`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ConversionError
from ..options import FULL_RANGE_KEY
from .edit import copy_model, replace_repeated
from .int8_retie import merge_equal_parameters, per_channel_exclusions, prune_initializers, retie_quantized
from .metadata import TieRecord, read_ties, write_metadata, write_ties

logger = logging.getLogger(__name__)

__all__ = ["stacked_weight_matmuls", "to_int8"]


def _untie(model: onnx.ModelProto, ties: list[TieRecord]) -> onnx.ModelProto:
    """Working copy where every transposed use is an initializer of its own."""
    work = copy_model(model)
    graph = work.graph
    arrays = {i.name: i for i in graph.initializer}
    drop = set()
    for tie in ties:
        source = arrays.get(tie.initializer)
        if source is None:
            raise ConversionError(f"The tie record names initializer {tie.initializer!r}, "
                                  "which the graph does not have. Re-run retie on the fp32 model.")
        data = numpy_helper.to_array(source)
        for name, perm in tie.members().items():
            if name != source.name:
                graph.initializer.append(numpy_helper.from_array(np.transpose(data, perm), name))
                drop.add(name)
    replace_repeated(graph.node, [n for n in graph.node
                                  if not (n.op_type == "Transpose" and n.output[0] in drop)])
    for i, node in enumerate(graph.node):
        node.name = node.name or f"tiedonnx_node_{i}"  # nodes_to_exclude matches by name
    return work


def _run_quantize_dynamic(work: onnx.ModelProto, *, per_channel: bool, reduce_range: bool,
                          exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tiedonnx-q-") as tmp:
        out = Path(tmp) / "q.onnx"
        # quantize_dynamic warns through the root logger that shape-inference
        # pre-processing was not run; these graphs are fully shaped already.
        root = logging.getLogger()
        quiet = lambda record: "pre-processing before quantization" not in record.getMessage()  # noqa: E731
        root.addFilter(quiet)
        try:
            quantize_dynamic(work, out, per_channel=per_channel, weight_type=QuantType.QInt8,
                             reduce_range=reduce_range,
                             nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
        finally:
            root.removeFilter(quiet)
        return onnx.load(str(out))


def to_int8_ties(model: onnx.ModelProto, *, reduce_range: bool) -> onnx.ModelProto:
    """The int8 pass (per tensor) on the ties alone; every other weight stays float (see .int4_mixed)."""
    return to_int8(model, per_channel=False, reduce_range=reduce_range, ties_only=True)[0]


def to_int8(model: onnx.ModelProto, *, per_channel: bool, reduce_range: bool,
            ties_only: bool = False) -> tuple[onnx.ModelProto, list]:
    """int8 weights, ties kept (see :mod:`.quantize`'s docstring); a pass (:mod:`.passes`).

    ``model`` (ties folded and recorded) is consumed; onnxruntime's ``quantize_dynamic``
    writes a new model, which is returned with the new tie records. ``ties_only``: every
    node that reads no tie is left to the caller (:mod:`.int4_mixed`).
    """
    ties = read_ties(model)
    work = _untie(model, ties)
    # Per-channel: one use per tie is quantized by onnxruntime; the others are
    # rewritten around it by retie_quantized (see module docstring).
    exclude = per_channel_exclusions(work.graph, ties) + stacked_weight_matmuls(work.graph) if per_channel else []
    if ties_only:
        from .int4_mixed import nodes_off_ties

        exclude += nodes_off_ties(work.graph, ties)
    quantized = _run_quantize_dynamic(work, per_channel=per_channel, reduce_range=reduce_range,
                                      exclude=exclude)
    new_ties = [retie_quantized(quantized.graph, tie, model) for tie in ties]
    prune_initializers(quantized.graph)
    merged = merge_equal_parameters(quantized.graph, keep={i.name for i in model.graph.initializer})
    for tie in new_ties:  # a merged scale or zero point is read under the kept name
        tie.scale = merged.get(tie.scale, tie.scale)
        tie.zero_point = merged.get(tie.zero_point, tie.zero_point)
    write_ties(quantized, new_ties)
    write_metadata(quantized, {FULL_RANGE_KEY: None if reduce_range else "true"})
    # quantize_dynamic sets its own producer; the file is still ours.
    quantized.producer_name, quantized.producer_version = model.producer_name, model.producer_version
    return quantized, new_ties


def stacked_weights(graph: onnx.GraphProto) -> list[str]:
    """``MatMul`` nodes whose weight (an initializer) has rank 3 or more, without logging."""
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and ranks.get(n.input[1], 2) > 2]


def stacked_weight_matmuls(graph: onnx.GraphProto) -> list[str]:
    """``MatMul`` nodes whose weight has rank 3 or more: left float32 by per-channel int8 (logged once).

    A mixture-of-experts layer stacks its experts' kernels (``[experts, in, out]``)
    and multiplies by all of them in one ``MatMul``. ``quantize_dynamic`` gives
    such a weight per-channel zero points of shape ``[out]``, which onnxruntime's
    ``MatMulInteger`` refuses ("b zero point is not valid", onnxruntime 1.32).
    """
    names = stacked_weights(graph)
    if names:
        logger.info("int8 per-channel: %d MatMul(s) with stacked weights of rank 3+ (mixture-of-experts "
                    "experts) stay float32; onnxruntime's MatMulInteger takes per-channel zero points "
                    "for 2-D weights only", len(names))
    return names
