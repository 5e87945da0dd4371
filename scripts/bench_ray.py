"""Throughput of single-process scoring vs Ray Data with 2 actors, and Ray's overhead.

Everything is measured in one run on this machine and printed side by side:

* single process, 1 and 2 onnxruntime threads (``TiedModel.run`` streaming a
  memory-mapped ``.npy`` into a memory-mapped output, as ``tiedonnx run`` does);
* ``run_ray`` on a local Ray instance with 2 actors (1 thread each), twice on
  the same instance;
* Ray's overhead: starting Ray, the time each job takes until its first result
  reaches the driver (actor start-up + one chunk), and the rows/s after that
  point against the 2-thread single process.

The model is a tied autoencoder built with onnx.helper (784 -> 256 -> 784, one
initializer read by the decoder through a Transpose), so no TensorFlow is
needed. Results are checked to be bit-identical between the two paths.

Usage:
    python scripts/bench_ray.py [--rows 300000] [--batch-size 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from tiedonnx.runtime import load
from tiedonnx.runtime.distributed import run_ray
from tiedonnx.runtime.testing import tied_autoencoder

FEATURES, HIDDEN = 784, 256


def build_model(path: Path) -> Path:
    model = tied_autoencoder(FEATURES, HIDDEN, weight_scale=1 / np.sqrt(FEATURES), biases=False,
                             batch="n", input_name="pixels", output_name="out")
    onnx.save(model, path)
    return path


def single_process(model_path: Path, x: np.ndarray, out_path: Path, *, threads: int,
                   batch_size: int) -> float:
    """Seconds to score ``x`` into a memory-mapped .npy (model load excluded)."""
    model = load(model_path, providers="cpu", threads=threads)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=x.shape)
    start = time.perf_counter()
    model.run(x, batch_size=batch_size, out={"out": out})
    out.flush()
    seconds = time.perf_counter() - start
    del out
    return seconds


def best_of(repeats: int, fn) -> float:
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    # 4096 = the default chunk of `tiedonnx run` (and so of `tiedonnx run --ray`).
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="single-process repeats (best)")
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    print(describe())
    import ray

    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "ae.onnx")
        rng = np.random.default_rng(1)
        np.save(tmp / "x.npy", rng.random((args.rows, FEATURES), dtype=np.float32))
        x = np.load(tmp / "x.npy", mmap_mode="r")
        bs = args.batch_size

        single = {t: best_of(args.repeats, lambda t=t: single_process(
            model, x, tmp / f"y{t}.npy", threads=t, batch_size=bs)) for t in (1, 2)}
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        ray_init = time.perf_counter() - start
        try:
            jobs = []
            for i in range(2):
                start = time.perf_counter()
                report = run_ray(model, tmp / "x.npy", tmp / f"r{i}.npy", batch_size=bs,
                                 num_workers=2)
                jobs.append((time.perf_counter() - start, report))
        finally:
            ray.shutdown()

        same = np.array_equal(np.load(tmp / "r0.npy", mmap_mode="r"),
                              np.load(tmp / "y1.npy", mmap_mode="r"))
        report_table(args, single=single, ray_init=ray_init, jobs=jobs, same=same)


def report_table(args, *, single, ray_init, jobs, same) -> None:
    rows, mb = args.rows, args.rows * FEATURES * 4 / 1e6
    chunks = jobs[0][1].chunks
    print(f"bench_ray: {rows} rows x {FEATURES} float32 ({mb:.0f} MB .npy, memory-mapped), "
          f"tied AE {FEATURES}-{HIDDEN}-{FEATURES}, batch {args.batch_size} "
          f"({chunks} chunks), os.cpu_count()={os.cpu_count()}")
    print(f"{'path':40} {'wall s':>8} {'rows/s':>9} {'vs 1 thread':>12}")
    base = single[1]
    lines = [("single process, 1 thread", single[1]), ("single process, 2 threads", single[2])]
    lines += [(f"run_ray, 2 actors x 1 thread (job {i + 1})", wall)
              for i, (wall, _) in enumerate(jobs)]
    for label, seconds in lines:
        print(f"{label:40} {seconds:8.3f} {rows / seconds:9.0f} {base / seconds:11.2f}x")
    print("Ray overhead:")
    print(f"  ray.init of the local instance (once per process): {ray_init:.2f} s")
    for i, (wall, report) in enumerate(jobs):
        # After the first result the pool is up: the rest is the steady state.
        first = report.first_result_seconds
        rest = wall - first
        steady = (rows - args.batch_size) / rest if rest > 0 else float("nan")
        print(f"  job {i + 1}: {first:.2f} s until the first chunk's result (actor start-up "
              f"+ 1 chunk); then {steady:.0f} rows/s over {rest:.2f} s "
              f"(single process, 2 threads: {rows / single[2]:.0f} rows/s)")
    print(f"  Ray output == single-process output (bitwise): {same}")


if __name__ == "__main__":
    main()
