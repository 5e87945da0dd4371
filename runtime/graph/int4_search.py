"""int4 blocks with searched scales: better rounding than round-to-nearest, same MatMulNBits layout.

onnxruntime's RTN kernel (:func:`.int4_blocks.quantize_blocks`) maps each
block's range, widened to include zero, onto the 16 codes. One outlier then
stretches the step for the whole block. What llama.cpp's k-quants and AWQ's
clip search do instead, and what this module does: per block, try a grid of
narrower ranges (the outlier is clipped, every other value gets a finer step)
and keep the one with the least error of the block's values: squared error
plus the squared summed error, which is what adds up when a block's inputs
share a sign (:data:`BIAS_WEIGHT`). Asymmetric
blocks drop the include-zero rule and also try the neighbouring zero points.
Everything stays in the format the graph already reads (codes, one scale and
a 4-bit zero point per block), so a tie is still one packed tensor and no
kernel changes. numpy only.

The cost is error bound, not a layout: clipped values can sit several steps
from their source, so :data:`SEARCH_STEPS` is the faithfulness bound a
searched tensor is checked against (a layout mistake is still caught: a wrong
orientation misses by whole value ranges, not a clipped tail).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..options import INT4_ROUNDINGS
from .int4_blocks import Blocks, quantize_blocks

__all__ = ["SEARCH_SHRINK", "SEARCH_STEPS", "quantize_rows", "search_blocks"]

#: Fractions of the block's full range tried (1.0 is the unclipped range); llama.cpp's make_qkx2
#: searches a similar span.
SEARCH_SHRINK = tuple(np.round(np.linspace(0.55, 1.0, 19), 3))
#: Weight of a block's summed error beside its squared errors. A use ``y = x . w`` over one block errs
#: by ``x . e``, whose mean square is ``sum(var(x_j) e_j^2) + mean(x)^2 (sum e_j)^2``: for inputs
#: that are not centred (sigmoid codes, pixels, ReLU/GELU outputs) the summed error is what adds up.
#: 0.25 stands for a mean half the spread. Measured (scripts/bench_quality.py) on the digits AE,
#: block 32: 0 gives +7.6% MSE, 0.25 +4.6%, 0.5 +4.7%; on the trained LM (centred inputs) the block-32
#: mean KL with the tie in int8 is 0.00122 at 0, 0.00151 at 0.25, 0.00147 at 0.5 (RTN: 0.00166).
BIAS_WEIGHT = 0.25
#: Largest distance from source, in steps, that the narrowest range can leave: the clipped tail of a
#: block spans (1 / 0.55 - 1) of its range, 15 steps wide (asymmetric) or 7.5 (symmetric),
#: plus the half step of rounding and float16 scales.
SEARCH_STEPS = 15 * (1 / min(SEARCH_SHRINK) - 1) + 1.0


def quantize_rows(rows: np.ndarray, *, block_size: int, symmetric: bool, rounding: str
                  ) -> tuple[Blocks, float | None]:
    """The 4-bit blocks of ``rows`` by ``rounding``, and the faithfulness bound in steps (None: the default)."""
    if rounding == "rtn":
        return quantize_blocks(rows, block_size=block_size, symmetric=symmetric), None
    if rounding == "search":
        return search_blocks(rows, block_size=block_size, symmetric=symmetric), SEARCH_STEPS
    raise UsageError(f"Unknown int4 rounding. Received: rounding={rounding!r}. "
                     f"Use one of {', '.join(INT4_ROUNDINGS)}.")


def search_blocks(rows: np.ndarray, *, block_size: int, symmetric: bool) -> Blocks:
    """Quantize ``rows`` (``[N, K]``, blocks along K) choosing each block's scale by least squares."""
    n, k = rows.shape
    count = -(-k // block_size)
    padded = np.zeros((n, count * block_size), np.float32)
    padded[:, :k] = rows
    values = padded.reshape(n * count, block_size).astype(np.float64)
    # Padding is zero: it must not count, or a short last block would be fit to zeros.
    weight = np.zeros((n, count * block_size))
    weight[:, :k] = 1.0
    weight = weight.reshape(n * count, block_size)
    best = None
    for shrink in SEARCH_SHRINK:
        for candidate in (_symmetric(values, shrink) if symmetric else _asymmetric(values, shrink)):
            codes, scale, zero = candidate
            error = _error(codes, scale, zero, values, weight)
            if best is None:
                best = [codes, scale, zero, error]
                continue
            better = error < best[3]
            for slot, new in enumerate((codes, scale, zero, error)):
                best[slot][better] = new[better]
    codes, scale, zero, _ = _refit(values, weight, *best)
    return _pack(codes.astype(np.uint8).reshape(n, count, block_size), scale.reshape(n, count).astype(np.float32),
                 None if symmetric else zero.astype(np.uint8).reshape(n, count), k)


def _error(codes, scale, zero, values, weight) -> np.ndarray:
    """Per block: squared errors plus :data:`BIAS_WEIGHT` times the squared summed error."""
    e = ((codes - zero[:, None]) * scale[:, None] - values) * weight
    return (e ** 2).sum(1) + BIAS_WEIGHT * e.sum(1) ** 2


def _refit(values, weight, codes, scale, zero, error, rounds: int = 2):
    """Least-squares scale for the chosen codes, then re-round; kept per block only where it helps."""
    for _ in range(rounds):
        centred = (codes - zero[:, None]) * weight
        denom = (centred ** 2).sum(1)
        new_scale = np.where(denom > 0, (centred * values).sum(1) / np.maximum(denom, 1e-30), scale)
        new_scale = np.where(new_scale == 0, scale, new_scale)
        new_codes = np.clip(np.round(values / new_scale[:, None]) + zero[:, None], 0, 15)
        new_error = _error(new_codes, new_scale, zero, values, weight)
        better = new_error < error
        codes[better], scale[better], error[better] = new_codes[better], new_scale[better], new_error[better]
    return codes, scale, zero, error


def _asymmetric(values: np.ndarray, shrink: float):
    low, high = values.min(1), values.max(1)
    scale = np.maximum((high - low) * shrink / 15.0, 1e-30)
    center = np.round(-(low + high) / 2 / scale + 7.5)  # the clipped range stays centred on the block
    for zero in (center - 1, center, center + 1):
        zero = np.clip(zero, 0, 15)
        codes = np.clip(np.round(values / scale[:, None]) + zero[:, None], 0, 15)
        yield codes, scale, zero


def _symmetric(values: np.ndarray, shrink: float):
    # As onnxruntime: the largest magnitude maps to code 0 (-8 steps), the zero point is 8.
    peak = values[np.arange(len(values)), np.abs(values).argmax(1)]
    scale = peak * shrink / -8.0
    scale = np.where(scale == 0, 1e-30, scale)
    zero = np.full(len(values), 8.0)
    yield np.clip(np.round(values / scale[:, None]) + 8, 0, 15), scale, zero


def _pack(codes: np.ndarray, scales: np.ndarray, zero: np.ndarray | None, k: int) -> Blocks:
    """Codes ``[N, blocks, block_size]`` and zero points ``[N, blocks]`` in MatMulNBits' packed layout."""
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    zero_points = None
    if zero is not None:
        n, count = zero.shape
        z = np.zeros((n, count + count % 2), np.uint8)
        z[:, :count] = zero
        zero_points = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
    return Blocks(packed, scales, zero_points, k)
