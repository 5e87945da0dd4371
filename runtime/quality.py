"""How much a lower-precision model loses against its float reference: llama.cpp's scoreboard columns.

For a language model scored teacher-forced on held-out tokens, against the
reference's logits at the same positions (llama.cpp ``tools/perplexity`` with
``--kl-divergence``): perplexity and its ratio to the reference's, the mean
KL divergence ``KL(reference || model)`` of the next-token distribution, its
99th percentile (the worst 1% of tokens start there), and how often both
pick the same top token. numpy only; the scripts and tests feed it logits.

Example:
    >>> scores = TokenScores()  # doctest: +SKIP
    >>> scores.add(reference_logits, logits, targets)  # [batch, seq, vocab], [batch, seq]
    >>> scores.summary().as_dict()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["LMQuality", "TokenScores", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities over the last axis."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class LMQuality:
    """One model's scores; ``ratio`` is its perplexity over the reference's."""

    tokens: int
    perplexity: float
    reference_perplexity: float
    mean_kl: float
    kl_p99: float
    same_top: float

    @property
    def ratio(self) -> float:
        return self.perplexity / self.reference_perplexity

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class TokenScores:
    """Per-token figures accumulated batch by batch (logits of a whole held-out set need not fit in memory)."""

    nll: list[np.ndarray] = field(default_factory=list)
    reference_nll: list[np.ndarray] = field(default_factory=list)
    kl: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)

    def add(self, reference_logits: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        """Score one batch: logits ``[..., vocab]`` of both models at the same positions, targets ``[...]``."""
        if reference_logits.shape != logits.shape or logits.shape[:-1] != targets.shape:
            raise ValueError(f"shapes differ: reference {reference_logits.shape}, model {logits.shape}, "
                             f"targets {targets.shape}; pass logits [..., vocab] and targets [...]")
        ref, got = log_softmax(reference_logits), log_softmax(logits)
        pick = targets[..., None].astype(np.int64)
        self.reference_nll.append(-np.take_along_axis(ref, pick, -1)[..., 0].ravel())
        self.nll.append(-np.take_along_axis(got, pick, -1)[..., 0].ravel())
        self.kl.append((np.exp(ref) * (ref - got)).sum(-1).ravel())
        self.same_top.append((ref.argmax(-1) == got.argmax(-1)).ravel())

    def summary(self) -> LMQuality:
        kl = np.concatenate(self.kl)
        return LMQuality(tokens=int(kl.size), perplexity=float(np.exp(np.concatenate(self.nll).mean())),
                         reference_perplexity=float(np.exp(np.concatenate(self.reference_nll).mean())),
                         mean_kl=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                         same_top=float(np.concatenate(self.same_top).mean()))
