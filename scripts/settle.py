"""Fair side-by-side timing for the bench scripts: settle, interleave, compare within rounds.

Three ways a benchmark on a shared 2-core machine misleads, and what this does:

* a runtime timed right after another one shares the cores with the first
  one's threads, which keep spinning for a while after its last call
  (onnxruntime's intra-op pool spins by default; measured 1.7x slower next
  contender): :func:`settle` sleeps before each contender's window;
* load from other work comes in bursts: rounds are interleaved (every
  contender once per round, the order rotated each round), and each window's
  figure is the median of calls timed one by one;
* ratios are taken within a round (both figures under the same load), then
  the median over rounds: :func:`ratio`.

Scripts import it as ``from settle import interleaved, ratio`` (scripts/ is on
``sys.path`` when a script runs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

#: Seconds to sleep before each timed window: onnxruntime's spinning threads
#: go to sleep well within it, and LiteRT/OpenVINO pools too.
SETTLE_S = 0.15


def settle(seconds: float = SETTLE_S) -> None:
    """Let the previous contender's worker threads stop spinning."""
    time.sleep(seconds)


def window(fn: Callable[[], object], calls: int, warmup: int) -> float:
    """Median seconds of ``calls`` calls of ``fn`` timed one by one, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter
    times = []
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved(contenders: dict[str, Callable[[], object]], *, rounds: int = 5, calls: int = 300,
                warmup: int = 30, settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Per contender, one median per round; rounds rotate the order, each window settles first."""
    names = list(contenders)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            settle(settle_s)
            out[name].append(window(contenders[name], calls, warmup))
    return out


def ratio(rounds: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num / den`` measured in the same round."""
    return statistics.median(a / b for a, b in zip(rounds[num], rounds[den]))


def best(rounds: dict[str, list[float]], name: str) -> float:
    """The median over rounds (seconds per call)."""
    return statistics.median(rounds[name])
