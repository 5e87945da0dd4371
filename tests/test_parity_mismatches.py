"""Parity mismatches are typed (kind, output, case): each kind is reported, the worst case is
kept, and the precision hint is chosen by kind. Outputs are hand-made arrays: no Keras model runs."""

from __future__ import annotations

import numpy as np
import pytest

from tiedonnx.converter.parity_compare import (DTYPE, EXTRA, MISSING, SHAPE, VALUES, Mismatch, OutputParity,
                                               compare, keep_worst)
from tiedonnx.converter.parity import precision_hint

ONES = np.ones((2, 3), np.float32)


def _kinds(expected, actual, atol=1e-5, rtol=0.0):
    return [(m.kind, m.output) for m in compare(expected, actual, atol=atol, rtol=rtol)[1]]


def test_matching_outputs_have_no_mismatch():
    assert _kinds({"y": ONES}, {"y": ONES.copy()}) == []


def test_a_dtype_mismatch_is_reported_even_when_the_values_agree():
    assert _kinds({"y": ONES}, {"y": ONES.astype(np.float64)}) == [(DTYPE, "y")]


def test_an_extra_onnx_output_is_reported():
    assert _kinds({"y": ONES}, {"y": ONES, "z": ONES}) == [(EXTRA, "z")]


def test_a_missing_output_and_a_shape_are_reported():
    assert _kinds({"y": ONES, "w": ONES}, {"y": ONES[:1]}) == [(MISSING, "w"), (SHAPE, "y")]


def test_values_beyond_the_tolerance_are_reported_with_their_figures():
    # |1.001 - 1| = 1e-3 > atol 1e-5 x peak 1; the figure is computed here by hand.
    actual = ONES.copy()
    actual[1, 2] = 1.001
    figures, problems = compare({"y": ONES}, {"y": actual}, atol=1e-5, rtol=0.0)
    assert [(m.kind, m.output) for m in problems] == [(VALUES, "y")]
    assert figures[0].max_abs == pytest.approx(1e-3, rel=1e-3) and not figures[0].ok
    assert "max abs diff 0.001" in str(problems[0])


def test_the_case_prefixes_the_message():
    mismatch = Mismatch(DTYPE, "y", "output 'y': dtype float64 in ONNX, float32 in Keras").in_case("batch 3")
    assert str(mismatch) == "batch 3: output 'y': dtype float64 in ONNX, float32 in Keras"
    assert mismatch.as_dict()["case"] == "batch 3"
    with pytest.raises(ValueError, match="kind must be one of"):
        Mismatch("nearly", "y", "")


def test_the_worst_case_is_kept_per_output():
    worst: dict[str, OutputParity] = {}
    for max_abs, ok in ((0.1, True), (0.5, False), (0.2, True)):
        keep_worst(worst, [OutputParity("y", (2,), max_abs, max_abs, ok)])
    assert worst["y"].max_abs == 0.5 and not worst["y"].ok


def test_a_failed_case_with_a_smaller_difference_still_marks_the_output_failed():
    # rtol makes a small difference on a small value fail while a larger one passes.
    worst: dict[str, OutputParity] = {}
    keep_worst(worst, [OutputParity("y", (2,), 0.5, 0.01, True)])
    keep_worst(worst, [OutputParity("y", (2,), 0.1, 0.9, False)])
    assert worst["y"].max_abs == 0.5 and not worst["y"].ok


def test_the_precision_hint_is_given_only_when_every_mismatch_is_of_values():
    values = Mismatch(VALUES, "y", "output 'y': max abs diff 0.3 exceeds atol=0.05 x 1 (peak), rtol=0")
    dtype = Mismatch(DTYPE, "y", "output 'y': dtype float64 in ONNX, float32 in Keras")
    assert "per_channel=True" in precision_hint("int8", [values])
    assert precision_hint("int8", [values, dtype]) == ""
    # chosen by kind, not by the message's words:
    assert precision_hint("int8", [Mismatch(EXTRA, "z", "exceeds atol (a name)")]) == ""
    assert precision_hint("fp32", [values]) == ""
