"""Issue 17's measurements for scripts/bench_runtime.py: session memory, .ort vs .onnx, lean int8.

Kept apart so bench_runtime.py stays one screen of targets; run through it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from tiedonnx.runtime import load
from tiedonnx.runtime.graph.ort_format import save_ort
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.timing import interleave, timed

# RSS growth of a fresh process over session creation alone (no run), every
# import done before the baseline. ", warm": the process loaded a tiny model
# first, the same way: the figure then leaves out what the first session of a
# process builds once (onnxruntime's environment and thread pools). fast no
# longer runs onnx.checker, which built onnx's operator-schema registry (6.8
# MiB) in the first load; lean still does (it also runs onnx shape inference).
_RSS_PROBE = r"""
import gc, json, sys
import numpy as np, onnx, onnx.checker, onnxruntime as ort
import tiedonnx.runtime.session, tiedonnx.runtime.lean, tiedonnx.runtime.model_file
import tiedonnx.runtime.graph.ort_format
from tiedonnx.runtime.rss import rss_bytes as rss
path, mode, tiny = sys.argv[1:4]
if mode == "fast, warm":
    tiedonnx.runtime.session.load(tiny, providers="cpu")
if mode == "raw, warm":
    ort.InferenceSession(tiny, providers=["CPUExecutionProvider"])
gc.collect()
before = rss()
if mode.startswith("raw"):
    kept = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
else:
    kept = tiedonnx.runtime.session.load(path, providers="cpu", memory=mode.split(",")[0])
print(json.dumps({"bytes": rss() - before}))
"""

MEMORY_MODES = ("raw", "fast", "raw, warm", "fast, warm", "lean")


def session_rss_mib(path: Path, mode: str, tiny: Path, repeats: int = 3) -> float:
    """Median over ``repeats`` fresh processes of the RSS growth over session creation (MiB)."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), mode, str(tiny)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1])["bytes"] / 2**20)
    return statistics.median(runs)


def memory_table(folder: Path) -> dict[str, dict[str, float]]:
    """RSS growth per mode for the 4096x2048 tie as .onnx (and raw vs fast for its .ort)."""
    big = folder / "big.onnx"
    onnx.save(tied_autoencoder(4096, 2048, weight_scale=0.02, bias_scale=0.0), big)
    tiny = folder / "tiny.onnx"
    onnx.save(tied_autoencoder(8, 3), tiny)
    big_ort = folder / "big.ort"
    save_ort(big, big_ort)
    table = {".onnx": {m: session_rss_mib(big, m, tiny) for m in MEMORY_MODES}}
    table[".ort"] = {m: session_rss_mib(big_ort, m, tiny) for m in ("raw", "fast")}
    return table


def ort_vs_onnx(folder: Path, *, threads: int | None, rounds: int) -> dict[str, dict[int, float]]:
    """``.ort`` time / ``.onnx`` time per precision and batch, both loaded by tiedonnx."""
    base = tied_autoencoder(784, 256, weight_scale=0.05, bias_scale=0.0)
    out: dict[str, dict[int, float]] = {}
    models = {}
    for precision in ("fp32", "fp16", "int8"):
        path = folder / f"ae_{precision}.onnx"
        onnx.save(to_precision(base, precision), path)
        save_ort(path, folder / f"ae_{precision}.ort", force=True)
        models[precision] = {kind: load(folder / f"ae_{precision}{kind}", providers="cpu", threads=threads)
                             for kind in (".onnx", ".ort")}
    for batch in (1, 256):
        x = np.random.default_rng(batch).random((batch, 784), dtype=np.float32)
        runners = {f"{p} {kind}": (lambda m=m: m.run(x)) for p, pair in models.items()
                   for kind, m in pair.items()}
        calls = max(5, 2000 // batch)
        times = interleave({n: timed(fn, min_calls=calls, warmup=20) for n, fn in runners.items()},
                           rounds=rounds)
        for precision in models:
            out.setdefault(precision, {})[batch] = times.ratio(f"{precision} .ort", f"{precision} .onnx")
    return out


def lean_int8(folder: Path, *, threads: int | None, rounds: int) -> dict[str, float]:
    """Batch-1 seconds of int8 fast and lean and fp32 fast and lean, and lean / fast ratios."""
    base = tied_autoencoder(784, 256, weight_scale=0.05, bias_scale=0.0)
    runners = {}
    x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    for precision in ("fp32", "int8"):
        path = folder / f"lean_{precision}.onnx"
        onnx.save(to_precision(base, precision), path)
        for memory in ("fast", "lean"):
            model = load(path, providers="cpu", memory=memory, threads=threads)
            runners[f"{precision} {memory}"] = lambda m=model: m.run(x)
    times = interleave({n: timed(fn, min_calls=2000, warmup=50) for n, fn in runners.items()},
                       rounds=rounds)
    out = {name: times.median(name) for name in runners}
    for precision in ("fp32", "int8"):
        out[f"{precision} lean / fast"] = times.ratio(f"{precision} lean", f"{precision} fast")
    return out
