"""Side-by-side timing that survives a busy machine: the one helper ``bench``, ``demo`` and scripts use.

Three ways a timing on a shared machine misleads, and what this module does:

* load from other work comes in bursts of seconds: contenders are
  *interleaved*, every contender once per round, the order rotated each round
  (:func:`interleave`), so a burst lands on all of them rather than on one;
* a contender timed right after another shares the cores with the first one's
  threads, which keep spinning for a while after its last call (onnxruntime's
  intra-op pool spins by default; measured 1.7x slower next contender): each
  window starts after :func:`settle`;
* a ratio of two medians mixes rounds measured under different load: ratios
  are taken within a round, then the median over rounds (:meth:`Rounds.ratio`).

Each figure is the median over rounds, reported with its spread (slowest
round / fastest round). When a contender's rounds disagree by more than
:data:`NOISY_FACTOR` the machine was busy while it ran: :meth:`Rounds.warning`
says so in one line, for the caller to print beside the figures.

Example:
    >>> rounds = interleave({"a": timed(f, min_time=0.05), "b": timed(g, min_time=0.05)})  # doctest: +SKIP
    >>> rounds.median("a"), rounds.spread("a"), rounds.ratio("a", "b")  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .options import check_positive_int

#: Seconds to sleep before each timed window: onnxruntime's spinning threads
#: go to sleep well within it, and LiteRT/OpenVINO pools too.
SETTLE_S = 0.15

#: A contender whose slowest round is more than this many times its fastest
#: was timed on a busy machine. On this project's shared 2-core machine at load
#: average 7, the 784-256 autoencoder's rounds at batch 256 spread 3.0x on one
#: thread and 9-17x on two (scripts/bench_timing_noise.py); bench_peers's rounds
#: read 1.08-1.78x at load 4-7. (No idle machine was at hand to measure its floor.)
NOISY_FACTOR = 1.5

#: Many short rounds beat a few long ones: at load average 7, two equal models'
#: within-round ratio over 7 rounds of 50 ms windows read 0.64-1.49 across 18 runs,
#: over 25 rounds of 10 ms windows 0.98-1.03 across 12 (scripts/bench_timing_noise.py).
DEFAULT_ROUNDS = 15


def settle(seconds: float = SETTLE_S) -> None:
    """Let the previous contender's worker threads stop spinning."""
    if seconds > 0:
        time.sleep(seconds)


def window(fn: Callable[[], object], *, min_time: float = 0.0, min_calls: int = 5,
           max_calls: int = 20000, warmup: int = 1) -> float:
    """Median seconds of calls of ``fn`` timed one by one.

    Args:
        fn: the call to time.
        min_time: time calls for at least this many seconds...
        min_calls: ...and at least this many calls (``min_time=0``: exactly this many).
        max_calls: stop here even if ``min_time`` has not passed.
        warmup: untimed calls first (arenas, tracing, caches).
    """
    for _ in range(warmup):
        fn()
    clock = time.perf_counter
    times: list[float] = []
    deadline = clock() + min_time
    while len(times) < min_calls or (clock() < deadline and len(times) < max_calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def timed(fn: Callable[[], object], **options) -> Callable[[], float]:
    """A timer for :func:`interleave`: each call times one :func:`window` of ``fn``."""
    return lambda: window(fn, **options)


@dataclass(frozen=True)
class Rounds:
    """Per contender, one figure per round (seconds per call), measured interleaved.

    Attributes:
        seconds: contender -> its figure in each round, in round order.
        factor: rounds that disagree by more than this make :attr:`noisy`.
    """

    seconds: Mapping[str, tuple[float, ...]]
    factor: float = NOISY_FACTOR

    def median(self, name: str) -> float:
        """The median over rounds (seconds per call)."""
        return statistics.median(self.seconds[name])

    def low_high(self, name: str) -> tuple[float, float]:
        """The fastest and the slowest round."""
        return min(self.seconds[name]), max(self.seconds[name])

    def spread(self, name: str) -> float:
        """Slowest round / fastest round (1.0: every round agreed)."""
        low, high = self.low_high(name)
        return high / low if low > 0 else float("inf")

    def ratio(self, num: str, den: str) -> float:
        """Median over rounds of ``num / den``, both measured in the same round."""
        return statistics.median(a / b for a, b in zip(self.seconds[num], self.seconds[den]))

    @property
    def noisy(self) -> dict[str, float]:
        """Contenders whose rounds disagree by more than :attr:`factor`, with their spread."""
        return {n: round(self.spread(n), 2) for n in self.seconds if self.spread(n) > self.factor}

    def warning(self) -> str | None:
        """One line for people when the machine was busy, else None."""
        noisy = self.noisy
        if not noisy:
            return None
        worst = max(noisy, key=noisy.get)
        rounds = len(self.seconds[worst])
        return (f"noisy machine: the rounds of {len(noisy)} contender(s) disagree by more than "
                f"{self.factor:g}x (worst: {worst}, {noisy[worst]:.1f}x across {rounds} rounds); "
                "medians and within-round ratios are shown, absolute speeds are unreliable")

    def as_dict(self) -> dict:
        return {"seconds": {k: list(v) for k, v in self.seconds.items()}, "factor": self.factor,
                "noisy": self.noisy}


def interleave(timers: Mapping[str, Callable[[], float]], *, rounds: int = DEFAULT_ROUNDS,
               settle_s: float = SETTLE_S, factor: float = NOISY_FACTOR) -> Rounds:
    """Time every contender once per round, the order rotated each round.

    Args:
        timers: contender -> a call that times one window and returns seconds
            per call (:func:`timed` makes one from a plain function; a timer
            may also measure elsewhere, e.g. in a subprocess).
        rounds: how many rounds; at least as many as contenders gives each
            one every slot of the order once.
        settle_s: sleep before each window (:func:`settle`).
        factor: see :attr:`Rounds.factor`.

    Returns:
        The :class:`Rounds`.
    """
    check_positive_int("rounds", rounds)
    names = list(timers)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            settle(settle_s)
            out[name].append(float(timers[name]()))
    return Rounds({name: tuple(values) for name, values in out.items()}, factor=factor)
