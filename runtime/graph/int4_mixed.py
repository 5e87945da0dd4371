"""int4 body, int8 ties: the language model's tied embedding/head kept at 8 bits, one tensor per tie.

The field's answer to int4 losing too much on small language models:
onnxruntime-genai's int4 builder keeps the embedding and the LM head at a
higher precision (its ``*_last`` options), llama.cpp's Q4_K_M stores the
output tensor as Q6_K. The tied embedding is the head: every next-token
logit is a dot product with one of its rows, and it is the one matrix whose
error is not averaged by later layers.

How (:func:`to_int4_int8_ties`), reusing both passes unchanged:

1. int8 on the ties alone: :func:`.int8.to_int8_ties` runs the int8 pass with
   every node that does not read a tie excluded from ``quantize_dynamic``, then
   re-ties as usual (one int8 tensor per tie, shared scale).
2. int4 on the rest: :func:`.int4.to_int4` skips ties that are no longer
   float (logged) and stores every other float matrix in 4-bit blocks.
"""

from __future__ import annotations

import onnx

from .metadata import TieRecord

__all__ = ["nodes_off_ties", "to_int4_int8_ties"]


def nodes_off_ties(graph: onnx.GraphProto, ties: list[TieRecord]) -> list[str]:
    """Names of the nodes that read no tie member (what ``quantize_dynamic`` must leave alone)."""
    members = {m for t in ties for m in (t.initializer, *t.members())}
    return [n.name for n in graph.node if not members.intersection(n.input)]


def to_int4_int8_ties(model: onnx.ModelProto, *, block_size: int, symmetric: bool, rounding: str,
                      reduce_range: bool, accuracy_level: int = 0) -> tuple[onnx.ModelProto, list[str]]:
    """int8 ties and int4 other matrices (``model``, ties folded and recorded, is consumed; a pass)."""
    from .int4 import to_int4
    from .int8 import to_int8_ties

    return to_int4(to_int8_ties(model, reduce_range=reduce_range), block_size=block_size, symmetric=symmetric,
                   rounding=rounding, accuracy_level=accuracy_level)
