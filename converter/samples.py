"""Inputs that exercise a model: the cases parity runs and the arrays it feeds.

A language model checked only at sequence length 1, on token ids the
embedding never sees or with a padding mask of all ones, proves little. Here:

- every open non-batch axis (a sequence length) is tried at several sizes,
  :data:`DEFAULT_SEQUENCE_LENGTHS`, kept within any maximum the model
  declares (``max_sequence_length``, a position embedding's table);
- what an integer input *is* decides its values, not its name
  (:mod:`.index_inputs` follows it through the traced graph): token ids that
  index a weight table are drawn below its rows (the embedding that reads
  them, found through the functional graph first, nested models included);
  positions that index an activation along the sequence (a masked LM's
  ``mask_positions``) are drawn below the sequence length;
- other mask inputs (bool, or a name with ``mask`` that indexes nothing)
  hold real right padding: each row keeps at least one token, and every case
  longer than 1 pads some row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .signature import InputSignature, InputSpec, _leaves

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SEQUENCE_LENGTHS", "Case", "SamplePlan", "cases", "make_case_inputs",
           "max_sequence_length", "sample_plan", "vocabularies"]

#: Sizes tried for every open non-batch axis: 1 (a single token), 7 (odd, not a
#: power of two) and 33 (past 32, where kernels switch tiles and vector widths).
DEFAULT_SEQUENCE_LENGTHS = (1, 7, 33)
# Batch x length cases above this many tokens run at the shortest length only,
# so a batch of 64 does not multiply the cost of every length on a large model.
MAX_CASE_TOKENS = 256
# Vocabulary used when an integer input reaches no embedding we can see.
FALLBACK_VOCABULARY = 10


@dataclass(frozen=True)
class Case:
    """One parity run: a batch size and, for models with open axes, their size."""

    batch: int
    length: int | None = None

    def __str__(self) -> str:
        return f"batch {self.batch}" + ("" if self.length is None else f", length {self.length}")


def _layers(model) -> list:
    return list(model._flatten_layers(include_self=True, recursive=True))


def max_sequence_length(model) -> int | None:
    """The longest sequence the model declares it accepts, or None when it sets none."""
    found = []
    for layer in _layers(model):
        for attr in ("max_sequence_length", "sequence_length"):
            value = getattr(layer, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found.append(value)
    return min(found) if found else None


def cases(signature: InputSignature, model, batch_sizes, lengths=DEFAULT_SEQUENCE_LENGTHS) -> list[Case]:
    """The parity cases: each batch size at each sequence length (within the model's maximum).

    Long cases (batch x length over :data:`MAX_CASE_TOKENS`) run at the
    shortest length only; every batch size and every length still runs.
    """
    if not any(s.dynamic_axes for s in signature.specs):
        return [Case(b) for b in batch_sizes]
    limit = max_sequence_length(model)
    usable = sorted({min(n, limit) if limit else n for n in lengths})
    if limit and any(n > limit for n in lengths):
        logger.info("parity: the model accepts sequences up to %d; lengths %s", limit, usable)
    return [Case(b, n) for b in batch_sizes for n in usable
            if b * n <= MAX_CASE_TOKENS or n == usable[0]]


def is_mask(spec: InputSpec) -> bool:
    """Bool, or named like a mask (asked only of inputs the graph uses as no index)."""
    return spec.dtype == "bool" or "mask" in spec.name.lower()


@dataclass(frozen=True)
class SamplePlan:
    """What to draw for each integer input: ``vocab`` (name -> exclusive bound) and
    ``positions`` (name -> exclusive bound, None for "the sequence length")."""

    vocab: dict
    positions: dict


def _embedding_reading(model, tensor, depth: int = 0) -> int | None:
    """``input_dim`` of the embedding that reads ``tensor`` in a functional model, if any."""
    if depth > 8:
        return None
    for op in getattr(model, "operations", []) or []:
        for node in getattr(op, "_inbound_nodes", []) or []:
            inputs = list(getattr(node, "input_tensors", []) or [])
            position = next((i for i, t in enumerate(inputs) if t is tensor), None)
            if position is None:
                continue
            dim = getattr(op, "input_dim", None)
            if isinstance(dim, int):
                return dim
            inner = list(getattr(op, "inputs", None) or []) if hasattr(op, "operations") else []
            if len(inner) == len(inputs):  # a nested model called on its declared structure
                found = _embedding_reading(op, inner[position], depth + 1)
                if found:
                    return found
    return None


def sample_plan(model, signature: InputSignature) -> SamplePlan:
    """Token-id bounds and position inputs of ``model`` (see the module docstring).

    Token ids: the functional graph's embedding first, then the traced graph's
    table, else the smallest embedding of the model. Positions: integer inputs
    the traced graph uses to index an activation.
    """
    from .index_inputs import index_uses

    try:
        tensors = [leaf for _, leaf in _leaves(model.input)]
    except (AttributeError, ValueError):
        tensors = []
    sizes = [layer.input_dim for layer in _layers(model)
             if isinstance(getattr(layer, "input_dim", None), int)]
    fallback = min(sizes) if sizes else FALLBACK_VOCABULARY
    integers = [s for s in signature.specs if np.issubdtype(np.dtype(s.dtype), np.integer)]
    walked = {s.name: _embedding_reading(model, tensors[signature.specs.index(s)])
              if len(tensors) == len(signature.specs) else None for s in integers}
    traced = index_uses(model, signature, [n for n, v in walked.items() if not v])
    positions = {n: u.bound for n, u in traced.items() if u.kind == "position"}
    vocab = {}
    for spec in integers:
        use = traced.get(spec.name)
        if spec.name in positions or (use is None and is_mask(spec)):
            continue
        vocab[spec.name] = walked[spec.name] or (use.bound if use else None) or fallback
    if positions:
        logger.info("parity: %s index the sequence; drawn as positions below its length", sorted(positions))
    return SamplePlan(vocab, positions)


def vocabularies(model, signature: InputSignature) -> dict[str, int]:
    """Input name -> the exclusive upper bound for its values, for token-id inputs."""
    return sample_plan(model, signature).vocab


def _padding_mask(rng, batch: int, length: int, dtype: str) -> np.ndarray:
    """Right padding: row 0 full when batch > 1, some row padded whenever length > 1."""
    valid = rng.integers(1, length + 1, size=batch)
    if batch > 1:
        valid[0] = length
    if length > 1 and (valid == length).all():
        valid[-1] = max(1, length // 2)
    mask = np.arange(length)[None, :] < valid[:, None]
    return mask.astype(dtype)


def make_case_inputs(signature: InputSignature, case: Case, vocab: dict[str, int], *,
                     positions: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for one case, by input name (see the module docstring).

    Args:
        signature, case: the inputs and the batch size / sequence length.
        vocab: token-id input name -> exclusive bound (:func:`sample_plan`).
        positions: position input name -> exclusive bound, or None for the
            case's sequence length (:func:`sample_plan`).
        seed: the same seed and case give the same arrays.
    """
    rng = np.random.default_rng([seed, case.batch, case.length or 0])
    positions = positions or {}
    arrays = {}
    for spec in signature.specs:
        shape = (case.batch, *[(case.length or 1) if d is None else d for d in spec.shape[1:]])
        dtype = np.dtype(spec.dtype)
        if spec.name in positions:
            limit = positions[spec.name] or case.length or 1
            arrays[spec.name] = rng.integers(0, limit, size=shape).astype(dtype)
        elif spec.name in vocab and np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, vocab[spec.name], size=shape).astype(dtype)
        elif is_mask(spec) and len(shape) == 2:
            arrays[spec.name] = _padding_mask(rng, shape[0], shape[1], spec.dtype)
        elif is_mask(spec):
            arrays[spec.name] = (rng.random(shape) < 0.8).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            arrays[spec.name] = rng.integers(0, vocab.get(spec.name, FALLBACK_VOCABULARY), size=shape).astype(dtype)
        else:
            arrays[spec.name] = rng.random(shape).astype(dtype)
    return arrays
