"""Next-token samplers with one random-number design that a browser can repeat exactly.

Greedy takes the first index of the largest logit (``numpy.argmax``, as
KerasHub's ``GreedySampler``). ``top_k`` and ``top_p`` divide the logits by
the temperature, keep the candidates (the ``k`` largest; or the smallest set
of most likely tokens whose probability reaches ``p``, the token crossing
``p`` included), order them by descending logit (ties: lower token id first),
and pick by inverse CDF with one uniform draw per row per step.

The draws come from :class:`Mulberry32`, a 32-bit generator written with
integer operations only, so the same seed gives the same uniform numbers in
Python and in JavaScript (``Math.imul``). What stays reproducible across the
two: the draws, the candidate set and its order, and therefore the token,
except when a draw falls within rounding distance of a boundary between two
candidates' cumulative probabilities (Python sums in float64, a page may use
float32 logits). Sampled tokens do not reproduce KerasHub's samplers, which
draw from TensorFlow's random generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError

__all__ = ["Mulberry32", "SamplerSettings", "sample"]

_MASK = 0xFFFFFFFF


class Mulberry32:
    """Tommy Ettinger's mulberry32: 32-bit state, uniform floats in [0, 1) with 32 random bits."""

    def __init__(self, seed: int):
        self.state = int(seed) & _MASK

    def random(self) -> float:
        self.state = (self.state + 0x6D2B79F5) & _MASK
        a = self.state
        t = ((a ^ (a >> 15)) * (a | 1)) & _MASK
        t = ((t + (((t ^ (t >> 7)) * (t | 61)) & _MASK)) & _MASK) ^ t
        return ((t ^ (t >> 14)) & _MASK) / 4294967296.0


@dataclass(frozen=True)
class SamplerSettings:
    """A checked sampler choice. Build it with :meth:`make`."""

    sampler: str = "greedy"
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9

    @classmethod
    def make(cls, sampler: str = "greedy", *, temperature=None, top_k=None, top_p=None,
             defaults: dict | None = None) -> SamplerSettings:
        """Validate the options (unset ones from ``defaults``, then this class's).

        Raises:
            UsageError: an unknown sampler or an option out of range.
        """
        defaults = defaults or {}
        if sampler not in ("greedy", "top_k", "top_p"):
            raise UsageError(f"Unknown sampler. Received: sampler={sampler!r}. Use 'greedy', 'top_k' or 'top_p'.")
        temperature = float(defaults.get("temperature", 1.0)) if temperature is None else temperature
        top_k = int(defaults.get("top_k", 50)) if top_k is None else top_k
        top_p = float(defaults.get("top_p", 0.9)) if top_p is None else top_p
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 < temperature < 1e6:
            raise UsageError(f"temperature must be a number > 0. Received: temperature={temperature!r}.")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise UsageError(f"top_k must be an integer >= 1. Received: top_k={top_k!r}.")
        if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1]. Received: top_p={top_p!r}.")
        return cls(sampler, float(temperature), top_k, float(top_p))


def _candidates(logits: np.ndarray, settings: SamplerSettings) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (descending logit, lower id first on ties) and their probabilities."""
    scaled = logits.astype(np.float64) / settings.temperature
    order = np.argsort(-scaled, kind="stable")
    if settings.sampler == "top_k":
        order = order[:settings.top_k]
    chosen = scaled[order]
    probs = np.exp(chosen - chosen[0])
    probs /= probs.sum()
    if settings.sampler == "top_p":
        keep = int(np.searchsorted(np.cumsum(probs), settings.top_p)) + 1
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return order, probs


def sample(logits: np.ndarray, settings: SamplerSettings, rng: Mulberry32 | None) -> np.ndarray:
    """One next token per row of ``logits [batch, vocabulary]``."""
    if settings.sampler == "greedy":
        return np.argmax(logits, axis=-1)
    out = np.empty(len(logits), dtype=np.int64)
    for row, values in enumerate(logits):
        ids, probs = _candidates(values, settings)
        u = rng.random()
        out[row] = ids[min(int(np.searchsorted(np.cumsum(probs), u, side="right")), len(ids) - 1)]
    return out
