"""How steady is a ratio of two equal models on a busy machine, at 2 threads and at 1?

  python scripts/bench_timing_noise.py [--runs 3] [--batch 256] [--rounds 7]

The 784-256 tied autoencoder stored once (tiedonnx) and twice (as plain
tf2onnx stores it): the same matrix products, so every ratio should read 1.00.
Each run times both with :func:`tiedonnx.runtime.timing.interleave` (the
demo's settings: 7 rounds of 50 ms windows) and prints the within-round ratio
and the worst spread, for onnxruntime's default threads and for one thread.
Run it beside other work (or ``yes > /dev/null &`` twice) to see why the demo
times onnxruntime on one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from machine import describe  # noqa: E402  (scripts/ is on sys.path)

from tiedonnx.runtime import load
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.timing import interleave, timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--window", type=float, default=0.05, help="seconds per window")
    parser.add_argument("--settle", type=float, default=0.05, help="sleep before each window")
    args = parser.parse_args()
    print(f"{describe()}; load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds of "
          f"{args.window} s windows, {args.settle} s settle")
    x = np.random.default_rng(0).random((args.batch, 784), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, untied in (("tied", False), ("untied", True)):
            paths[name] = Path(tmp) / f"{name}.onnx"
            onnx.save(tied_autoencoder(784, 256, weight_scale=0.05, untied=untied), paths[name])
        for threads in (None, 1):
            ratios, spreads = [], []
            for _ in range(args.runs):
                sessions = {n: load(p, providers="cpu", threads=threads) for n, p in paths.items()}
                rounds = interleave({n: timed(lambda s=s: s.run(x), min_time=args.window)
                                     for n, s in sessions.items()}, rounds=args.rounds,
                                    settle_s=args.settle)
                ratios.append(rounds.ratio("untied", "tied"))
                spreads.append(max(rounds.spread(n) for n in sessions))
            label = "default threads" if threads is None else f"{threads} thread"
            print(f"batch {args.batch}, {label}: tied / untied speed per run "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; worst spread "
                  f"{', '.join(f'{s:.1f}x' for s in spreads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
