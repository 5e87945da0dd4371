"""Decode speed side by side: each contender loaded once in its own process, rounds alternated, paired ratios.

    python scripts/bench_decode_ab.py genai:PEERS/genai-int4 tiedonnx:DIR/int4-sym tiedonnx:DIR/int4 --rounds 15
    python scripts/bench_decode_ab.py optimum:PEERS/optimum tiedonnx:DIR/fp32 --prompt 128 --new 128

scripts/bench_generate.py times each contender's rounds back to back, so on a noisy machine a load
change lands on whichever contender runs at that moment (the same contender has varied by 30%
between two runs here). This script keeps every contender's model loaded in a worker process of its
own (``tiedonnx:DIR``: a generation folder through ``tiedonnx.runtime.generate.load_lm`` in this
environment; ``genai:DIR`` / ``optimum:DIR``: the folder a peer driver exported, served by
``scripts/peers/*_run.py serve`` in that peer's venv, from ``bash scripts/setup_peers.sh``). Each
round runs every contender once on the same prompt, greedy, ``--new`` tokens, batch 1, the order
rotated each round, with the settle pause before each run. The first contender is the reference:
each round, each rate is divided by the reference's rate in that round, and the median of those
paired ratios (with their range, and the rounds at or above 1) is the comparison. A contender whose
worker will not start is one line, not a traceback. ``label=kind:DIR`` names a row.

Decode rate = (tokens - 1) / seconds after the first token, as in bench_generate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate_peers import DRIVERS, PEERS  # noqa: E402
from machine import describe  # noqa: E402

KINDS = ("tiedonnx", "genai", "optimum")


def _vocabulary(kind: str, folder: Path) -> int:
    if kind == "tiedonnx":
        return int(json.loads((folder / "tiedonnx.json").read_text())["vocabulary_size"])
    if kind == "genai":
        return int(json.loads((folder / "genai_config.json").read_text())["model"]["vocab_size"])
    return int(json.loads((folder / "config.json").read_text())["vocab_size"])


def _command(kind: str, folder: Path, threads: int) -> list[str]:
    if kind == "tiedonnx":
        return [sys.executable, __file__, "--worker", str(folder), "--threads", str(threads)]
    python = PEERS / kind / "bin/python"
    if not python.is_file():
        raise RuntimeError(f"no {kind} venv at {python.parent.parent} (bash scripts/setup_peers.sh {kind})")
    return [str(python), str(DRIVERS / f"{kind}_run.py"), "serve", "--onnx", str(folder), "--threads", str(threads)]


class Contender:
    """One worker process: ``run(prompt, new)`` -> (tokens, decode tokens/s)."""

    def __init__(self, spec: str, threads: int):
        self.label, _, rest = spec.rpartition("=")
        kind, _, folder = rest.partition(":")
        if kind not in KINDS or not folder:
            raise ValueError(f"contender {spec!r}: expected [label=]KIND:DIR with KIND one of {', '.join(KINDS)}")
        self.kind, self.folder = kind, Path(folder)
        self.label = self.label or f"{kind} {self.folder.name}"
        self.vocabulary = _vocabulary(kind, self.folder)
        self.proc = subprocess.Popen(_command(kind, self.folder, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._answer()  # {"ready": true} once the model is loaded

    def _answer(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read().strip().splitlines()
                raise RuntimeError(f"worker exited: {(err or ['no message'])[-1][:300]}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, prompt: list[int], new: int) -> tuple[list[int], float]:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "new": new}) + "\n")
        self.proc.stdin.flush()
        got = self._answer()
        return got["tokens"], (len(got["tokens"]) - 1) / max(got["after_s"], 1e-9)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def worker(folder: str, threads: int) -> None:
    """A tiedonnx folder behind the peers' ``serve`` protocol (scripts/peers/common.py)."""
    sys.path.insert(0, str(DRIVERS))
    from common import serve

    from tiedonnx.runtime.generate import load_lm

    lm = load_lm(folder, threads=threads)

    def generate(prompts: list[list[int]], n: int):
        result = lm.generate(prompts, max_new_tokens=n, sampler="greedy", stop_token_ids=[])
        return result.tokens, result.time_to_first_token_s, result.decode_seconds

    serve(generate, threads)


def interleave(contenders: list[Contender], prompt: list[int], new: int, rounds: int) -> dict[str, list]:
    """Every round runs each contender once, the order rotated by one each round; rates per label."""
    from tiedonnx.runtime.timing import settle

    for c in contenders:
        c.run(prompt, 8)  # warm-up
    rates: dict[str, list] = {c.label: [] for c in contenders}
    tokens: dict[str, list] = {}
    for r in range(rounds):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            settle()
            tokens[c.label], rate = c.run(prompt, new)
            rates[c.label].append(rate)
    return {"rates": rates, "tokens": tokens}


def report(contenders: list[Contender], got: dict) -> list[str]:
    """The table: median and range of each rate, the paired ratio to the first contender's rate."""
    ref = contenders[0].label
    base, ref_tokens = np.array(got["rates"][ref]), got["tokens"][ref]
    lines = ["| contender | tok/s median | tok/s min-max | / first, paired median | paired min-max | rounds >= 1 "
             "| tokens = first's |", "|---|---:|---:|---:|---:|---:|---|"]
    for c in contenders:
        rates = np.array(got["rates"][c.label])
        ratio = rates / base
        same = "yes" if got["tokens"][c.label] == ref_tokens else f"{_agree(got['tokens'][c.label], ref_tokens)}"
        lines.append(f"| {c.label} | {statistics.median(rates):.1f} | {rates.min():.1f}-{rates.max():.1f} | "
                     f"{statistics.median(ratio):.3f}x | {ratio.min():.3f}-{ratio.max():.3f} | "
                     f"{int((ratio >= 1).sum())}/{len(ratio)} | {same} |")
    return lines


def _agree(tokens: list[int], reference: list[int]) -> str:
    """How long the two greedy runs agree: 'first N of M'."""
    n = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    return f"first {n} of {len(reference)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("contenders", nargs="*", help="[label=]KIND:DIR, KIND one of " + ", ".join(KINDS))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--prompt", type=int, default=128, help="prompt length in tokens (random ids, seed 0)")
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads)
        return 0
    if len(args.contenders) < 2:
        parser.error("give at least two contenders: [label=]KIND:DIR ...")
    print(describe())
    contenders = []
    for spec in args.contenders:
        try:
            contenders.append(Contender(spec, args.threads))
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            print(f"{spec}: not run: {exc}")
    if len(contenders) < 2:
        print("fewer than two contenders started: nothing to compare")
        return 1
    vocab = min(c.vocabulary for c in contenders)
    prompt = np.random.default_rng(0).integers(3, vocab - 3, args.prompt).tolist()
    print(f"prompt {args.prompt} tokens, {args.new} new, batch 1, greedy, {args.threads} threads; "
          f"{args.rounds} rounds, order rotated each round; paired ratio = rate / first contender's rate that round")
    try:
        got = interleave(contenders, prompt, args.new, args.rounds)
    finally:
        for c in contenders:
            c.close()
    print("\n".join(report(contenders, got)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
