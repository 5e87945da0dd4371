"""What TiedModel.run's checks and wrapper cost over onnxruntime, per batch size (issue 17).

  python scripts/bench_overhead.py [--threads N] [--seconds 2]

One session per model; its own ``InferenceSession.run`` ("raw"), onnxruntime's
C binding under it (``InferenceSession._sess.run``: raw minus onnxruntime's
Python-side checks, the floor for any Python wrapper), ``TiedModel.run`` with
its default checks (every value checked for NaN/inf) and with
``allow_nonfinite=True``. The four are called in turn, call by call, in an
order that rotates every turn; a ratio is the median over turns of the two
calls' times in the same turn (load from other work on a shared machine comes
in bursts longer than a turn). The check alone (``all_finite``) is timed the
same way.

Models: the 784-256 tied AE and a 4096->2048 one (``tied_autoencoder``), plus
an Identity model with a 784-wide input: onnxruntime's per-call floor.

Targets: TiedModel.run / raw <= 1.05 at batch 1 and <= 1.03 at 64/256/1024.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from machine import describe  # scripts/ is on sys.path
from onnx import TensorProto, helper

from tiedonnx.runtime import load
from tiedonnx.runtime._term import format_table
from tiedonnx.runtime.inputs import all_finite
from tiedonnx.runtime.testing import tied_autoencoder

BATCHES = (1, 64, 256, 1024)
TARGETS = {1: 1.05, 64: 1.03, 256: 1.03, 1024: 1.03}


def identity_model(features: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def alternate(runners: dict, seconds: float, max_calls: int) -> dict[str, list[float]]:
    """Seconds of every call of each runner, called in turn (order rotating) for ``seconds``.

    Call ``i`` of every runner ran in the same turn, so ``times[a][i] / times[b][i]``
    compares two calls made within microseconds of each other.
    """
    names = list(runners)
    for fn in runners.values():  # warm-up: arenas, the per-thread I/O binding
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    deadline = clock() + seconds
    i = 0
    while (clock() < deadline or i < 20) and i < max_calls:
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = clock()
            runners[name]()
            times[name].append(clock() - start)
        i += 1
    return times


def paired(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over turns of ``num``'s call time over ``den``'s in the same turn."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def measure(path: Path, batch: int, *, threads: int | None, seconds: float) -> dict[str, list[float]]:
    model = load(path, providers="cpu", threads=threads)
    spec = model.inputs[0]
    x = np.random.default_rng(batch).random((batch, spec.shape[1]), dtype=np.float32)
    session, feeds, names = model._session, {spec.name: x}, model._output_names
    native = session._sess
    runners = {
        "raw": lambda: session.run(None, feeds),
        "C binding": lambda: native.run(names, feeds, None),
        "TiedModel.run": lambda: model.run(x),
        "allow_nonfinite": lambda: model.run(x, allow_nonfinite=True),
        "check alone": lambda: all_finite(x),
    }
    return alternate(runners, seconds, max_calls=200_000 // batch + 50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per model and batch size")
    args = parser.parse_args()
    print(describe())
    print(f"threads: {args.threads or 'onnxruntime default'}; figures: median us per call, "
          "the runners called in turn, call by call")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "Identity 784": identity_model(784),
            "784-256 AE": tied_autoencoder(784, 256, weight_scale=0.05, bias_scale=0.0),
            "4096-2048 AE": tied_autoencoder(4096, 2048, weight_scale=0.02, bias_scale=0.0),
        }
        for label, proto in models.items():
            path = Path(tmp) / f"{label.replace(' ', '_')}.onnx"
            onnx.save(proto, path)
            for batch in BATCHES:
                if label == "4096-2048 AE" and batch == 1024:
                    continue  # 17 GFLOP per call: minutes on 2 cores for a stable median
                times = measure(path, batch, threads=args.threads, seconds=args.seconds)
                us = {k: 1e6 * statistics.median(v) for k, v in times.items()}
                ours = paired(times, "TiedModel.run", "raw")
                target = None if label.startswith("Identity") else TARGETS[batch]  # a floor, no target
                rows.append([label, batch, len(times["raw"]), us["raw"], us["C binding"],
                             us["TiedModel.run"], us["allow_nonfinite"], ours,
                             paired(times, "allow_nonfinite", "raw"),
                             100 * paired(times, "check alone", "raw"),
                             "-" if target is None else f"<= {target}",
                             "" if target is None else "PASS" if ours <= target else "MISS"])
    print(format_table(["model", "batch", "turns", "raw us", "C binding us", "TiedModel.run us",
                        "allow_nonfinite us", "x raw", "allow_nonfinite x raw",
                        "check alone % of raw", "goal", ""], rows))
    print("us: median per call; 'x raw' and '%': median over turns of the ratio of the two calls "
          "made in the same turn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
