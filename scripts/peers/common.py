"""What both peer drivers share: arguments, RSS, the settle pause, timing and the one JSON line.

The drivers run in the peers' own virtual environments (scripts/setup_peers.sh), where tiedonnx is
not installed: RSS is read as :mod:`tiedonnx.runtime.rss` reads it (``VmRSS``) and the pause between
timed runs is :data:`tiedonnx.runtime.timing.SETTLE_S`, copied here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

SETTLE_S = 0.15  # tiedonnx.runtime.timing.SETTLE_S


def trim() -> None:
    """Hand freed heap back to the system before a baseline, as bench_generate's probe does."""
    import ctypes

    ctypes.CDLL(None).malloc_trim(0)


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def arguments(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("step", choices=("export", "bench", "probe"))
    parser.add_argument("--hf", help="the Hugging Face folder written by KerasHub's export_to_transformers")
    parser.add_argument("--onnx", required=True, help="the peer's ONNX folder (written by step export)")
    parser.add_argument("--prompts", help="JSON file: a list of 8 prompts of token ids")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    return parser.parse_args()


def load_prompts(path: str) -> list[list[int]]:
    with open(path) as fh:
        return json.load(fh)


def time_batches(generate: Callable[[list[list[int]], int], list[list[int]]], prompts, new: int,
                 rounds: int) -> dict:
    """TTFT and decode rate at batch 1 and 8 as bench_generate times KerasHub: one-token runs and
    ``new``-token runs, median over rounds, decode = (new - 1) tokens over the difference."""
    row: dict = {}
    for batch in (1, 8):
        p = prompts[:batch]
        generate(p, 2)  # warm-up
        ones, fulls, tokens = [], [], None
        for _ in range(rounds):
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            generate(p, 1)
            ones.append(time.perf_counter() - start)
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            out = generate(p, new)
            fulls.append(time.perf_counter() - start)
            tokens = tokens or out
        t1, tn = statistics.median(ones), statistics.median(fulls)
        row[f"tps_b{batch}"] = (new - 1) / max(tn - t1, 1e-9)
        if batch == 1:
            row["ttft_ms"], row["tokens"] = t1 * 1e3, [int(t) for t in tokens[0]]
    return row


def embedding_copies(folder, vocab: int, hidden: int) -> int:
    """Initializers of the folder's .onnx files holding vocab x hidden values (float) or half as many
    bytes (int4 packed): 1 = the tie kept once."""
    import math

    import onnx

    sizes, count = {vocab * hidden, vocab * hidden // 2}, 0
    for path in sorted(folder.glob("*.onnx")):
        graph = onnx.load(str(path), load_external_data=False).graph
        count += sum(1 for t in graph.initializer if math.prod(t.dims) in sizes)
    return count


def emit(result: dict) -> None:
    print(json.dumps(result))
    sys.stdout.flush()
