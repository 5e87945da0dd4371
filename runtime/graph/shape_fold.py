"""Fold ``Shape`` of an initializer into a constant, and drop weights only shapes read.

tf2onnx's einsum optimizer rewrites each ``EinsumDense`` (KerasHub attention
projections) into a ``Gemm`` over a re-laid-out copy of the kernel, and keeps
the kernel's original layout as an initializer that feeds nothing but a
``Shape`` node. The file then stores every attention kernel twice, once only to
say how big it is: 85 MB of GPT-2 base's 583 MB (scripts/bench_lm.py). The
shape of an initializer is known without its data, so ``Shape(W)`` becomes an
``int64`` initializer and ``W`` goes when nothing else reads it.

Outputs are unchanged bit for bit: ``Shape`` only reads dimensions.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .edit import attribute, remove_initializers, rename_uses, replace_repeated, used_names

logger = logging.getLogger(__name__)

__all__ = ["fold_initializer_shapes"]


def _shape_slice(node: onnx.NodeProto, dims: list[int]) -> np.ndarray:
    """``Shape``'s output for ``dims``: ONNX's ``start``/``end`` (opset 15) clamp like Python slices."""
    return np.array(dims[attribute(node, "start", 0):attribute(node, "end")], dtype=np.int64)


def fold_initializer_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Fold each ``Shape`` of an initializer of ``model`` (main graph), in place (a pass, :mod:`.passes`).

    Initializers that are also graph inputs (overridable at run time) are left
    alone: their shape is not fixed.

    Returns:
        ``(model, removed)``: the model and the initializers dropped because only shapes read them.
    """
    out = model
    graph = out.graph
    overridable = {i.name for i in graph.input}
    dims = {i.name: list(i.dims) for i in graph.initializer if i.name not in overridable}
    # Equal shapes become one constant (a copy would be a duplicate initializer).
    known = {(tuple(i.dims), i.raw_data or numpy_helper.to_array(i).tobytes()): i.name
             for i in graph.initializer if i.data_type == onnx.TensorProto.INT64 and i.name not in overridable}
    folded, kept, renames = [], [], {}
    for node in graph.node:
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] in dims:
            value = _shape_slice(node, dims[node.input[0]])
            key = (value.shape, value.tobytes())
            if key in known:
                renames[node.output[0]] = known[key]
            else:
                known[key] = node.output[0]
                folded.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    if not folded and not renames:
        return out, []
    replace_repeated(graph.node, kept)
    graph.initializer.extend(folded)
    rename_uses(graph, renames)
    read = used_names(graph)
    removed = sorted(n for n in dims if n not in read)
    remove_initializers(graph, set(removed))
    saved = sum(int(np.prod(dims[n])) for n in removed)
    logger.info("shape fold: %d Shape node(s) of initializers folded into %d constant(s); %d initializer(s) "
                "only shapes read dropped (%d elements)", len(folded) + len(renames), len(folded), len(removed),
                saved)
    return out, removed
