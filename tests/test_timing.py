"""runtime/timing.py: interleaved rounds, medians, spreads, within-round ratios, the noisy flag.

The timers here return set figures (no clock): what is tested is the
bookkeeping, not the machine. Real timings are printed by the bench scripts.
"""

from __future__ import annotations

import pytest

from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.timing import Rounds, interleave, timed, window


def _scripted(figures: dict[str, list[float]], calls: list[str]):
    """Timers that return ``figures[name]`` one by one and log the order they ran in."""
    iters = {name: iter(values) for name, values in figures.items()}

    def timer(name):
        def call():
            calls.append(name)
            return next(iters[name])
        return call

    return {name: timer(name) for name in figures}


def test_order_rotates_each_round():
    calls: list[str] = []
    interleave(_scripted({"a": [1] * 3, "b": [1] * 3, "c": [1] * 3}, calls), rounds=3, settle_s=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_a_ratio_is_taken_within_rounds_and_survives_a_burst():
    # Round 2 and 4 ran under load that made both contenders 10x slower.
    calls: list[str] = []
    rounds = interleave(_scripted({"fast": [1, 10, 1, 10, 1], "slow": [2, 20, 2, 20, 2]}, calls),
                        rounds=5, settle_s=0)
    assert rounds.ratio("slow", "fast") == 2.0
    assert rounds.median("fast") == 1 and rounds.low_high("slow") == (2, 20)
    assert rounds.spread("fast") == 10.0
    assert rounds.noisy == {"fast": 10.0, "slow": 10.0}
    line = rounds.warning()
    assert line.startswith("noisy machine:") and "2 contender(s)" in line and "10.0x" in line


def test_rounds_within_the_factor_are_not_noisy():
    rounds = Rounds({"a": (1.0, 1.2, 1.4), "b": (2.0, 2.1, 2.2)}, factor=1.5)
    assert rounds.noisy == {} and rounds.warning() is None
    assert Rounds({"a": (1.0, 1.6)}, factor=1.5).noisy == {"a": 1.6}


def test_as_dict_holds_every_round():
    rounds = Rounds({"a": (1.0, 3.0)}, factor=2.0)
    assert rounds.as_dict() == {"seconds": {"a": [1.0, 3.0]}, "factor": 2.0, "noisy": {"a": 3.0}}


def test_window_calls_warmup_then_at_least_min_calls():
    calls = []
    seconds = window(lambda: calls.append(1), min_time=0, min_calls=7, warmup=2)
    assert len(calls) == 9 and seconds >= 0
    calls.clear()
    timed(lambda: calls.append(1), min_calls=3, warmup=0)()
    assert len(calls) == 3


def test_rounds_must_be_positive():
    with pytest.raises(UsageError, match="Received: rounds=0"):
        interleave({"a": lambda: 1.0}, rounds=0)

