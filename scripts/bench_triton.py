"""Serving under load: a real Triton server (Python backend) vs direct TiedModel.run and Ray.

All on this machine, in one run, on the same rows of one tied autoencoder
(784 -> 256 -> 784, one initializer read through a Transpose, built with
onnx.helper: no TensorFlow):

* Reference: ``tiedonnx run`` (the CLI, 4096-row chunks, memory="fast").
* Triton: ``tiedonnx triton --backend python`` repository (memory="lean", as
  served by default), ``tritonserver`` 2.51 from PyPI's nvidia-pytriton on
  127.0.0.1; N concurrent gRPC clients (threads, one client each) send
  ``--requests`` requests of ``--rows-per-request`` rows; throughput,
  p50/p99 latency, failed requests; server memory (server + stub RSS) after
  warm-up and after the run; outputs against the reference.
* Direct: ``TiedModel.run`` in this process (memory="lean", the served
  model's threads), the same N threads and requests, no server.
* Ray: ``run_ray`` over the same rows as one .npy (4096-row chunks, 2 actors),
  start-up included: an offline job, for scale.

Usage:
    python scripts/bench_triton.py [--requests 20000] [--clients 16] [--rows-per-request 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx

from machine import describe
from tiedonnx.runtime import load
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.triton import write_model_repository
from tiedonnx.runtime.triton.local_server import PYTRITON_VERSION, LocalServer, fetch_server

FEATURES, HIDDEN = 784, 256
WARMUP_REQUESTS = 2000
#: The issue's targets.
MEMORY_GROWTH_LIMIT_KB = 5 * 1024
ATOL = 1e-6


def build_model(path: Path) -> Path:
    model = tied_autoencoder(FEATURES, HIDDEN, seed=0, batch="n", biases=False,
                             weight_scale=1 / np.sqrt(FEATURES), input_name="pixels",
                             output_name="out", code_name="code")
    onnx.save(model, path)
    return path


class Load:
    """``clients`` threads, each sending its share of the requests with ``call(rows)``.

    Request ``i`` carries rows ``[i * k, (i + 1) * k)``; client ``c`` sends
    requests ``c, c + clients, ...`` so every request is sent exactly once.
    """

    def __init__(self, x: np.ndarray, *, clients: int, rows_per_request: int):
        self.x, self.clients, self.k = x, clients, rows_per_request
        self.requests = len(x) // rows_per_request

    def run(self, make_call, requests: int | None = None) -> dict:
        requests = self.requests if requests is None else requests
        out = np.full((requests * self.k, FEATURES), np.nan, np.float32)
        latencies = np.zeros(requests)
        errors: list[str] = []

        def client(c: int) -> None:
            call = make_call()
            for i in range(c, requests, self.clients):
                rows = slice(i * self.k, (i + 1) * self.k)
                start = time.perf_counter()
                try:
                    out[rows] = call(self.x[rows])
                except Exception as exc:  # counted as a failed request
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                latencies[i] = time.perf_counter() - start

        threads = [threading.Thread(target=client, args=(c,)) for c in range(self.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=1800)
        wall = time.perf_counter() - start
        return {"requests": requests, "rows": requests * self.k, "wall": wall, "out": out,
                "p50": np.percentile(latencies, 50) * 1e3,
                "p99": np.percentile(latencies, 99) * 1e3, "errors": errors}


def grpc_call(url: str, model: str):
    def make():
        import tritonclient.grpc as grpc

        client = grpc.InferenceServerClient(url)

        def call(rows: np.ndarray) -> np.ndarray:
            tensor = grpc.InferInput("pixels", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            return client.infer(model, [tensor], client_timeout=60).as_numpy("out")
        return call
    return make


def reference(model: Path, x_path: Path, tmp: Path) -> tuple[np.ndarray, float]:
    """`tiedonnx run` (the CLI, in a subprocess) and its wall time, start-up included."""
    target = tmp / "ref.npy"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tiedonnx.runtime.cli", "run", str(model), "-i",
                    str(x_path), "-o", str(target), "--provider", "cpu"], check=True,
                   capture_output=True)
    return np.load(target), time.perf_counter() - start


def serve(args, model: Path, load_: Load, tmp: Path) -> dict:
    report = write_model_repository(model, tmp / "repo", backend="python",
                                    instances=args.instances, threads=args.threads)
    with LocalServer(fetch_server(), tmp / "repo") as server:
        server.wait_ready(timeout=300)
        call = grpc_call(server.grpc_url, report.name)
        warm = load_.run(call, requests=min(WARMUP_REQUESTS, load_.requests))
        after_warmup = server.memory_kb()
        result = load_.run(call)
        after_run = server.memory_kb()
        result["warmup_errors"] = len(warm["errors"])
    result["memory_kb"] = (sum(after_warmup.values()), sum(after_run.values()),
                           len(after_run))
    return result


def direct(args, model: Path, load_: Load) -> dict:
    served_like = load(model, providers="cpu", memory="lean", threads=args.threads)
    return load_.run(lambda: (lambda rows: served_like.run(rows)["out"]))


def ray(model: Path, x_path: Path, tmp: Path) -> tuple[np.ndarray, float]:
    from tiedonnx.runtime.distributed import run_ray

    start = time.perf_counter()
    run_ray(model, x_path, tmp / "ray.npy", batch_size=4096, num_workers=2)
    return np.load(tmp / "ray.npy"), time.perf_counter() - start


def compare(out: np.ndarray, ref: np.ndarray) -> str:
    done = ~np.isnan(out).any(axis=1)
    if not done.any():
        return "no rows"
    diff = np.abs(out[done] - ref[: len(out)][done]).max()
    same = np.array_equal(out[done], ref[: len(out)][done])
    return f"{'bit-identical' if same else f'max |diff| {diff:.1e}'}"


def print_table(args, rows: list[tuple], ref_wall: float) -> None:
    print(f"{'path':44} {'requests':>8} {'failed':>6} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
          "  outputs vs tiedonnx run")
    for label, result, versus in rows:
        if "requests" in result:
            print(f"{label:44} {result['requests']:8d} {len(result['errors']):6d} "
                  f"{result['rows'] / result['wall']:9.0f} {result['p50']:7.2f} "
                  f"{result['p99']:7.2f}  {versus}")
        else:
            print(f"{label:44} {'-':>8} {'-':>6} {result['rows'] / result['wall']:9.0f} "
                  f"{'-':>7} {'-':>7}  {versus}")
    print(f"reference `tiedonnx run` (subprocess, start-up included): {ref_wall:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads per served instance (and direct run)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    args = parser.parse_args()
    print(f"bench_triton on {describe()}")
    print(f"tritonserver from nvidia-pytriton {PYTRITON_VERSION} (Python backend), gRPC on "
          f"127.0.0.1; tied AE {FEATURES}-{HIDDEN}-{FEATURES}; {args.clients} clients x "
          f"{args.requests} requests of {args.rows_per_request} row(s); served memory=lean, "
          f"{args.instances} instance(s) x {args.threads} onnxruntime thread(s)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = build_model(tmp / "ae.onnx")
        x = np.random.default_rng(1).random((args.requests * args.rows_per_request, FEATURES),
                                            dtype=np.float32)
        np.save(tmp / "x.npy", x)
        load_ = Load(x, clients=args.clients, rows_per_request=args.rows_per_request)
        ref, ref_wall = reference(model, tmp / "x.npy", tmp)
        served = serve(args, model, load_, tmp)
        time.sleep(2)  # settle between contenders
        local = direct(args, model, load_)
        rows = [("Triton, Python backend (gRPC, loopback)", served, compare(served["out"], ref)),
                ("TiedModel.run in-process (same threads)", local, compare(local["out"], ref))]
        if not args.no_ray:
            ray_out, ray_wall = ray(model, tmp / "x.npy", tmp)
            rows.append(("tiedonnx run --ray (2 actors, start-up incl.)",
                         {"rows": len(x), "wall": ray_wall}, compare(ray_out, ref)))
    print_table(args, rows, ref_wall)
    return report_targets(served, ref)


def report_targets(served: dict, ref: np.ndarray) -> int:
    warm_kb, run_kb, processes = served["memory_kb"]
    growth = run_kb - warm_kb
    diff = np.abs(served["out"] - ref[: len(served["out"])])
    checks = {
        f"0 failed requests of {served['requests']}": not served["errors"],
        f"outputs within {ATOL:g} of tiedonnx run (max {np.nanmax(diff):.1e}, all rows answered)":
            not np.isnan(served["out"]).any() and np.nanmax(diff) <= ATOL,
        f"server memory (RSS of {processes} processes) {warm_kb / 1024:.1f} MB after warm-up, "
        f"{run_kb / 1024:.1f} MB after the run: {growth / 1024:+.2f} MB (limit 5 MB)":
            abs(growth) <= MEMORY_GROWTH_LIMIT_KB,
    }
    for text, ok in checks.items():
        print(f"[{'ok' if ok else 'MISSED'}] {text}")
    if served["errors"]:
        print("first errors:", served["errors"][:3])
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
