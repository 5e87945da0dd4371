"""What both peer drivers share: their steps (export, bench, probe), RSS, the settle pause, timing.

The drivers run in the peers' own virtual environments (scripts/setup_peers.sh), where tiedonnx is
not installed: RSS is read as :mod:`tiedonnx.runtime.rss` reads it (``VmRSS``) and the pause between
timed runs is :data:`tiedonnx.runtime.timing.SETTLE_S`, copied here.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

SETTLE_S = 0.15  # tiedonnx.runtime.timing.SETTLE_S


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def _arguments(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("step", choices=("export", "bench", "probe", "serve"))
    parser.add_argument("--hf", help="the Hugging Face folder written by KerasHub's export_to_transformers")
    parser.add_argument("--onnx", required=True, help="the peer's ONNX folder (written by step export)")
    parser.add_argument("--prompts", help="JSON file: a list of 8 prompts of token ids")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    return parser.parse_args()


def _load_prompts(path: str) -> list[list[int]]:
    with open(path) as fh:
        return json.load(fh)


def _probe(load, generator, folder: str, prompts, new: int, threads: int) -> dict:
    """RSS growth over loading the model and after the prompt plus ``new`` tokens (batch 1); the
    driver imported its libraries first and freed heap goes back, as bench_generate's probe does."""
    ctypes.CDLL(None).malloc_trim(0)
    before = rss_mib()
    model = load(folder, threads)
    loaded = rss_mib()
    generator(model)(prompts[:1], new)
    return {"session_mib": loaded - before, "after_mib": rss_mib() - before}


def main(doc: str, export, load, generator, libraries) -> None:
    """A driver's steps: ``export(hf, out, precision)``, ``load(folder, threads)`` -> model,
    ``generator(model)`` -> ``generate(prompts, n)`` -> (new tokens, first-token s, after-first s);
    ``libraries()`` imports what loading needs (before the probe's baseline)."""
    args = _arguments(doc)
    if args.step == "serve":
        serve(generator(load(args.onnx, args.threads)), args.threads)
        return
    if args.step == "export":
        result = export(args.hf, Path(args.onnx), args.precision)
    elif args.step == "bench":
        result = time_batches(generator(load(args.onnx, args.threads)), _load_prompts(args.prompts), args.new,
                              args.rounds)
    else:
        libraries()
        result = _probe(load, generator, args.onnx, _load_prompts(args.prompts), args.new, args.threads)
    print(json.dumps(result))
    sys.stdout.flush()


def serve(generate: Callable, threads: int) -> None:
    """Worker of scripts/bench_decode_ab.py: one JSON request per stdin line (``{"prompt": [ids],
    "new": n}``), one JSON answer per line (new tokens, first-token s, after-first s), until stdin ends."""
    print(json.dumps({"ready": True, "threads": threads}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        tokens, first, after = generate([request["prompt"]], request["new"])
        print(json.dumps({"tokens": [int(t) for t in tokens[0]], "first_s": first, "after_s": after}), flush=True)


def time_batches(generate: Callable, prompts, new: int, rounds: int) -> dict:
    """TTFT and decode rate at batch 1 and 8, median over rounds. ``generate(prompts, n)`` returns the
    new tokens, the seconds to the first one and the seconds after it (decode = (n - 1) tokens over
    those): tiedonnx's ``GenerationResult`` figures."""
    row: dict = {}
    for batch in (1, 8):
        p = prompts[:batch]
        generate(p, 2)  # warm-up
        runs = []
        for _ in range(rounds):
            time.sleep(SETTLE_S)
            runs.append(generate(p, new))
        row[f"tps_b{batch}"] = (new - 1) / statistics.median(r[2] for r in runs)
        if batch == 1:
            row["ttft_ms"] = statistics.median(r[1] for r in runs) * 1e3
            row["tokens"] = [int(t) for t in runs[0][0][0]]
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
