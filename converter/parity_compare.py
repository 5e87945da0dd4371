"""Comparing two runs' outputs: per-output figures and typed mismatches.

Like optimum's ``ShapeError`` / ``AtolError`` / ``OutputMatchError``, every
mismatch carries its kind, so a caller (the precision hint of
:func:`~tiedonnx.converter.parity.verify`) decides by kind, never by matching
the message's text. Needs numpy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: Mismatch kinds: an output Keras has and the ONNX model lacks, one only the
#: ONNX model has, a different shape, a different dtype, values beyond the tolerance.
MISSING, EXTRA, SHAPE, DTYPE, VALUES = "missing", "extra", "shape", "dtype", "values"
KINDS = (MISSING, EXTRA, SHAPE, DTYPE, VALUES)


@dataclass
class OutputParity:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class Mismatch:
    """One output that missed, in one case.

    Attributes:
        kind: one of :data:`KINDS`.
        output: the output's name.
        detail: what differs, as a sentence fragment with the figures.
        case: the run it happened in ("batch 3, length 7"); empty for a bare comparison.
    """

    kind: str
    output: str
    detail: str
    case: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Mismatch kind must be one of {KINDS}. Received: kind={self.kind!r}.")

    def __str__(self) -> str:
        return f"{self.case}: {self.detail}" if self.case else self.detail

    def in_case(self, case) -> Mismatch:
        return dataclasses.replace(self, case=str(case))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
            atol: float, rtol: float) -> tuple[list[OutputParity], list[Mismatch]]:
    """Compare two output dicts (Keras's, ONNX's); return per-output figures and every mismatch.

    A value passes when ``|actual - expected| <= atol * max(1, peak) + rtol * |expected|``,
    ``peak`` being the output's largest finite ``|expected|``; NaN matches NaN.
    """
    figures: list[OutputParity] = []
    problems = [Mismatch(MISSING, n, f"output {n!r} is missing from the ONNX model (it has {sorted(actual)})")
                for n in sorted(set(expected) - set(actual))]
    problems += [Mismatch(EXTRA, n, f"ONNX output {n!r} has no Keras counterpart")
                 for n in sorted(set(actual) - set(expected))]
    for name in [n for n in expected if n in actual]:
        e, a = expected[name], actual[name]
        if e.shape != a.shape:
            problems.append(Mismatch(SHAPE, name, f"output {name!r}: shape {a.shape} in ONNX, {e.shape} in Keras"))
            continue
        if a.dtype != e.dtype:
            problems.append(Mismatch(DTYPE, name, f"output {name!r}: dtype {a.dtype} in ONNX, {e.dtype} in Keras"))
        figure, scale = _figure(name, e, a, atol=atol, rtol=rtol)
        figures.append(figure)
        if not figure.ok:
            problems.append(Mismatch(VALUES, name, (
                f"output {name!r}: max abs diff {figure.max_abs:.3g}, max rel diff {figure.max_rel:.3g} "
                f"exceeds atol={atol:g} x {scale:.3g} (peak), rtol={rtol:g}")))
    return figures, problems


def _figure(name: str, e: np.ndarray, a: np.ndarray, *, atol: float, rtol: float) -> tuple[OutputParity, float]:
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    diff = np.abs(a64 - e64)
    max_abs = float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(e64), 1e-12))) if max_abs else 0.0
    finite = np.abs(e64[np.isfinite(e64)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    ok = bool(np.all((diff <= atol * scale + rtol * np.abs(e64)) | (np.isnan(a64) & np.isnan(e64))))
    return OutputParity(name, tuple(e.shape), max_abs, max_rel, ok), scale


def keep_worst(worst: dict[str, OutputParity], figures: list[OutputParity]) -> None:
    """Fold one case's ``figures`` into ``worst`` (in place): per output, the largest max abs diff
    of all cases so far, and not ok if any case was not."""
    for f in figures:
        kept = worst.get(f.name)
        if kept is None or f.max_abs >= kept.max_abs:
            worst[f.name] = dataclasses.replace(f, ok=f.ok and (kept is None or kept.ok))
        elif not f.ok:
            worst[f.name] = dataclasses.replace(kept, ok=False)
