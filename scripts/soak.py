"""Soak test: tens of thousands of inferences on one loaded model; resident memory growth.

    python scripts/soak.py                       # 50,000 batch-1 calls, hand-built 784-128-784 tied AE
    python scripts/soak.py --calls 200000 --model ae.onnx --memory lean --threads 1

The model is loaded once with ``tiedonnx.runtime.load``. After a warm-up
(lazy imports, onnxruntime's arenas and thread pools, numpy caches), resident
memory (VmRSS) is read, then ``--calls`` calls of ``TiedModel.run`` follow on
inputs cycled from a pool of distinct arrays. RSS is sampled along the way and
at the end; the growth after warm-up is the figure that matters (target under
5 MB). Every 1,000th call's output is compared with the first output for the
same input, so a run that stays small but goes wrong does not pass. Linux only.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_MB = 5.0
MB = 1024 * 1024


def rss_bytes() -> int:
    from tiedonnx.runtime.rss import rss_bytes as read

    return read()


def build_tied_ae(path: Path, *, features: int = 784, hidden: int = 128) -> Path:
    """A tied autoencoder as tiedonnx exports it: one kernel, its transpose as a graph op."""
    import onnx

    from tiedonnx.runtime.testing import tied_autoencoder

    model = tied_autoencoder(features, hidden, weight_scale=0.05, bias_scale=0.1, activation="Relu",
                             input_name="pixels")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def soak(model, *, calls: int, warmup: int, pool_size: int, samples: int, seed: int) -> dict:
    specs = model.inputs
    rng = np.random.default_rng(seed)

    def make_input():
        return {s.name: rng.random((1, *s.shape[1:]), dtype=np.float32).astype(s.dtype) for s in specs}

    pool = [make_input() for _ in range(pool_size)]
    reference = [model.run(feeds) for feeds in pool]
    for i in range(warmup):
        model.run(pool[i % pool_size])
    gc.collect()
    after_warmup = rss_bytes()
    trace = [(0, after_warmup)]
    every = max(1, calls // samples)
    mismatches = 0
    start = time.perf_counter()
    for i in range(1, calls + 1):
        out = model.run(pool[i % pool_size])
        if i % 1000 == 0:
            expected = reference[i % pool_size]
            mismatches += any(not np.array_equal(out[k], expected[k]) for k in expected)
        if i % every == 0:
            trace.append((i, rss_bytes()))
    elapsed = time.perf_counter() - start
    del out
    gc.collect()
    end = rss_bytes()
    return {"after_warmup": after_warmup, "end": end, "trace": trace, "elapsed": elapsed,
            "mismatches": mismatches, "checked": calls // 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="inferences after warm-up (default 50,000)")
    parser.add_argument("--warmup", type=int, default=2_000,
                        help="calls before the baseline RSS (default 2,000)")
    parser.add_argument("--model", type=Path, default=None,
                        help=".onnx to soak (default: a hand-built 784-128-784 tied autoencoder)")
    parser.add_argument("--memory", choices=("fast", "lean"), default="fast")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--pool", type=int, default=64, help="distinct inputs cycled (default 64)")
    parser.add_argument("--samples", type=int, default=10, help="RSS samples during the run (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tiedonnx.runtime import load

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or build_tied_ae(Path(tmp) / "tied_ae.onnx")
        before_load = rss_bytes()
        model = load(path, providers="cpu", memory=args.memory, threads=args.threads)
        loaded = rss_bytes()
        result = soak(model, calls=args.calls, warmup=args.warmup, pool_size=args.pool,
                      samples=args.samples, seed=args.seed)
    growth = (result["end"] - result["after_warmup"]) / MB
    shape = ", ".join(f"{s.name} {s.shape_text()}" for s in model.inputs)
    print(f"soak: {path.name if args.model else 'hand-built tied AE 784-128-784'} ({shape}), "
          f"memory={args.memory}, threads={args.threads}, {model.providers[0]}")
    print(f"  RSS before load {before_load / MB:.1f} MB, after load {loaded / MB:.1f} MB, "
          f"after {args.warmup:,} warm-up calls {result['after_warmup'] / MB:.1f} MB")
    print(f"  {args.calls:,} batch-1 calls in {result['elapsed']:.1f} s "
          f"({args.calls / result['elapsed']:,.0f} calls/s)")
    print("  RSS trace (calls: MB): " + ", ".join(f"{i:,}: {b / MB:.1f}" for i, b in result["trace"]))
    print(f"  RSS at end {result['end'] / MB:.1f} MB; growth after warm-up {growth:+.2f} MB "
          f"(target < {TARGET_MB:g} MB): {'OK' if growth < TARGET_MB else 'OVER TARGET'}")
    print(f"  outputs re-checked against the first run: {result['checked']}, "
          f"mismatches: {result['mismatches']}")
    return 0 if growth < TARGET_MB and not result["mismatches"] else 1


if __name__ == "__main__":
    sys.exit(main())
