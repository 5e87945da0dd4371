"""What a quantized file loses against its source, measured on the caller's own inputs.

``tiedonnx quantize --input X.npy|X.npz`` runs the source file and the
quantized one on the same rows and reports, per output, the largest and the
relative RMS difference and how often both pick the same largest entry along
the last axis (the same class, or the same next token for a language model's
logits). Random inputs understate quantization error (the demo's int4 file:
max abs 0.0009 on random rows, 0.124 on held-out digits), so no figure is
given without the caller's data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OutputLoss", "loss_on_inputs"]


@dataclass
class OutputLoss:
    """One output's difference, quantized file vs its source, on the given inputs."""

    name: str
    max_abs: float
    relative_rmse: float  # RMS of the difference over the RMS of the source's output
    same_argmax: float | None  # share of rows (all but the last axis) with the same argmax; None for 1-D

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        same = "" if self.same_argmax is None else f", same argmax {self.same_argmax:.2%}"
        return f"{self.name}: max abs {self.max_abs:.3g}, relative RMSE {self.relative_rmse:.3g}{same}"


def loss_on_inputs(source: str | os.PathLike, quantized: str | os.PathLike, input_path: str | os.PathLike, *,
                   batch_size: int = 256) -> list[OutputLoss]:
    """Run both files on ``input_path`` (``.npy``, or ``.npz`` by input name) and compare every float output."""
    from ..inputs import load_array_file, match_archive
    from ..session import load

    inputs = load_array_file(input_path)
    before, after = load(source, providers="cpu"), load(quantized, providers="cpu")
    if isinstance(inputs, dict):
        inputs = match_archive(inputs, before.inputs)
    want = before.run(inputs, batch_size=batch_size)
    got = after.run(inputs, batch_size=batch_size)
    losses = []
    for name, ref in want.items():
        if not np.issubdtype(ref.dtype, np.floating) or name not in got:
            continue
        ref64, diff = ref.astype(np.float64), got[name].astype(np.float64) - ref
        rms = float(np.sqrt(np.mean(ref64 ** 2))) or 1.0
        same = None if ref.ndim < 2 else float(np.mean(ref.argmax(-1) == got[name].argmax(-1)))
        losses.append(OutputLoss(name, float(np.abs(diff).max(initial=0.0)),
                                 float(np.sqrt(np.mean(diff ** 2))) / rms, same))
    return losses
