"""Benchmark tiedonnx.runtime against its targets (issues 4 and 17), all measured in this one run.

  python scripts/bench_runtime.py                 # CPU, with Keras (needs the convert extra)
  python scripts/bench_runtime.py --no-keras      # runtime only (hand-built ONNX)
  python scripts/bench_runtime.py --provider cuda --no-keras

Targets, each printed as a ratio of figures measured side by side here:
  batch 1:   >= 8x faster than a compiled tf.function Keras call, >= 200x than predict
  batch 1:   TiedModel.run / raw InferenceSession.run (same session) <= 1.05
             (all batch sizes: scripts/bench_overhead.py)
  batch 1024: >= 80% of numpy's sgemm GFLOP/s on the same matrix products
  memory:    lean session memory <= 0.6x fast for a 4096x2048 tie (CPU)
  memory:    fast RSS after session creation <= raw InferenceSession(path) + 2 MiB (4096x2048)
  .ort:      tiedonnx's .ort fp32/fp16/int8 <= 1.15x the same .onnx at batch 1 and 256
  lean int8: <= 1.5x fast int8 at batch 1

Timed comparisons between sessions settle between contenders and interleave
rounds (tiedonnx.runtime.timing); comparisons within one session alternate call by
call and take the median of paired ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from machine import describe  # noqa: E402  (scripts/ is on sys.path)

from tiedonnx.runtime import load  # noqa: E402
from tiedonnx.runtime.testing import tied_autoencoder  # noqa: E402
from tiedonnx.runtime._term import format_table  # noqa: E402
from tiedonnx.runtime.bench import bench_model, session_memory_mb  # noqa: E402

import bench_runtime_r2 as r2  # noqa: E402  (scripts/ is on sys.path)


def hand_built_ae(n_in: int, n_h: int, path: Path, seed: int = 0) -> str:
    """The graph export + retie produce for Dense/DenseTied: W once, Transpose(W) for the decoder."""
    onnx.save(tied_autoencoder(n_in, n_h, seed=seed, weight_scale=0.05, bias_scale=0.0,
                               input_name="pixels", output_name="out"), str(path))
    return str(path)


def keras_ae(folder: Path) -> tuple[str, str]:
    """The 784-256 tied AE in Keras, saved as .keras and exported by tiedonnx.converter.export."""
    import keras

    from tiedonnx.converter import DenseTied, export

    inputs = keras.Input((784,), name="pixels")
    enc = keras.layers.Dense(256, activation="sigmoid", name="enc")
    out = DenseTied(activation="sigmoid", tied_to=enc, name="dec")(enc(inputs))
    model = keras.Model(inputs, out, name="tied_ae_784_256")
    model.save(folder / "ae.keras")
    export(model, folder / "ae.onnx", verify=True)
    return str(folder / "ae.onnx"), str(folder / "ae.keras")


def wrapper_overhead(path: str, provider: str, *, calls: int = 20000) -> dict[str, float]:
    """Median seconds per batch-1 call, three ways interleaved call by call on one session.

    ``raw`` is that session's own ``InferenceSession.run``; ``tiedonnx`` is
    ``TiedModel.run`` with its default checks; ``no-finite-check`` is
    ``TiedModel.run(allow_nonfinite=True)``, to show what the NaN/inf check costs.
    Each call is timed alone; ``ratio`` and ``ratio_nf`` are the medians of the
    paired ratios (two calls of the same turn), robust to bursts of load.
    """
    model = load(path, providers=provider)
    x = np.random.default_rng(0).random((1, model.inputs[0].shape[1]), dtype=np.float32)
    session, feeds = model._session, {model.inputs[0].name: x}
    runners = [("raw", lambda: session.run(None, feeds)), ("tiedonnx", lambda: model.run(x)),
               ("no-finite-check", lambda: model.run(x, allow_nonfinite=True))]
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    clock = time.perf_counter
    for i in range(calls):
        for name, fn in (runners if i % 2 else runners[::-1]):  # alternate the order
            start = clock()
            fn()
            times[name].append(clock() - start)
    skip = calls // 10  # warm-up
    out = {name: statistics.median(t[skip:]) for name, t in times.items()}
    for key, name in (("ratio", "tiedonnx"), ("ratio_nf", "no-finite-check")):
        out[key] = statistics.median(a / b for a, b in zip(times[name][skip:], times["raw"][skip:]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras comparison")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timed figure")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds between sessions")
    args = parser.parse_args()
    print(describe())
    print(f"numpy {np.__version__}, onnx {onnx.__version__}; provider {args.provider}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.no_keras:
            onnx_path, keras_path = hand_built_ae(784, 256, folder / "ae.onnx"), None
        else:
            onnx_path, keras_path = keras_ae(folder)
        keras = None
        if keras_path is not None:
            from tiedonnx.converter.keras_bench import KerasTimer

            keras = KerasTimer(keras_path)
        report = bench_model(onnx_path, batch_sizes=[1, 64, 1024], keras=keras,
                             providers=args.provider, min_time=args.min_time)
        from tiedonnx.runtime.commands.bench import render

        print("\n784-256 tied AE")
        print(render(report))
        calls = wrapper_overhead(onnx_path, args.provider)
        big = hand_built_ae(4096, 2048, folder / "big.onnx")
        fast_mb = session_memory_mb(big, memory="fast", providers="cpu")
        lean_mb = session_memory_mb(big, memory="lean", providers="cpu")
        rss = r2.memory_table(folder)
        ort_ratios = r2.ort_vs_onnx(folder, threads=None, rounds=args.rounds)
        lean = r2.lean_int8(folder, threads=None, rounds=args.rounds)
    checks = _checks(report, keras_path is not None, calls, fast_mb, lean_mb, rss, ort_ratios, lean)
    _print_figures(calls, fast_mb, lean_mb, rss, lean)
    table = [(name, None if v is None else float(v), target,
              "n/a" if v is None else ("PASS" if ok(v) else "MISS")) for name, v, target, ok in checks]
    print(format_table(["target", "measured", "goal", ""], table))
    return 0


def _checks(report, with_keras: bool, calls, fast_mb, lean_mb, rss, ort_ratios, lean) -> list:
    """(name, measured, goal text, test) for each target."""
    rows = {r.batch: r for r in report.rows}
    keras_checks = [
        ("batch 1: x faster than compiled Keras call", rows[1].x_vs_call, ">= 8", lambda v: v >= 8),
        ("batch 1: x faster than Keras predict", rows[1].x_vs_predict, ">= 200", lambda v: v >= 200),
    ] if with_keras else []
    checks = [
        *keras_checks,
        ("batch 1: TiedModel.run / raw session.run", calls["ratio"], "<= 1.05", lambda v: v <= 1.05),
        ("  same, run(allow_nonfinite=True)", calls["ratio_nf"], "<= 1.05", lambda v: v <= 1.05),
        ("batch 1024: % of numpy sgemm GFLOP/s", rows[1024].pct_of_numpy, ">= 80", lambda v: v >= 80),
        ("4096x2048 tie: lean / fast session memory", lean_mb / fast_mb, "<= 0.6", lambda v: v <= 0.6),
        ("4096x2048 .onnx: fast - raw RSS MiB", rss[".onnx"]["fast"] - rss[".onnx"]["raw"], "<= 2",
         lambda v: v <= 2),
        ("  same, each after a first model", rss[".onnx"]["fast, warm"] - rss[".onnx"]["raw, warm"], "<= 2",
         lambda v: v <= 2),
        ("4096x2048 .ort: fast - raw RSS MiB", rss[".ort"]["fast"] - rss[".ort"]["raw"], "<= 2",
         lambda v: v <= 2),
        *[(f".ort / .onnx {p}, batch {b}", ort_ratios[p][b], "<= 1.15", lambda v: v <= 1.15)
          for p in ort_ratios for b in (1, 256)],
        ("batch 1: lean int8 / fast int8", lean["int8 lean / fast"], "<= 1.5", lambda v: v <= 1.5),
        ("  lean fp32 / fast fp32 (for reference)", lean["fp32 lean / fast"], "-", lambda v: True),
    ]
    return checks


def _print_figures(calls, fast_mb, lean_mb, rss, lean) -> None:
    ours, raw = calls["tiedonnx"], calls["raw"]
    print(f"\nbatch-1 call, median of 18,000 calls timed one by one, interleaved: raw session.run "
          f"{raw * 1e6:.1f} us, TiedModel.run {ours * 1e6:.1f} us, TiedModel.run(allow_nonfinite=True) "
          f"{calls['no-finite-check'] * 1e6:.1f} us")
    print(f"4096x2048 tie session memory (CPU, RSS growth over load and one run): fast {fast_mb:.1f} "
          f"MiB, lean {lean_mb:.1f} MiB")
    print("RSS growth over session creation, fresh process each, median of 3 (MiB): "
          + "; ".join(f"{kind} " + ", ".join(f"{m} {v:.1f}" for m, v in modes.items())
                      for kind, modes in rss.items()))
    print("batch 1 us (interleaved, settled): " + ", ".join(
        f"{k} {1e6 * v:.1f}" for k, v in lean.items() if "/" not in k))
    print()


if __name__ == "__main__":
    sys.exit(main())
