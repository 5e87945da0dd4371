"""Where a decode step's time goes: onnxruntime's per-op profile of a decoder, and tiedonnx's loop around it.

    python scripts/profile_decode.py ops DIR/onnx/model_q4.onnx PEERS/genai-int4/model.onnx --head-dim 64
    python scripts/profile_decode.py loop DIR --rounds 5

``ops``: each decoder file with Optimum's contract and an ``attention_mask`` (a tiedonnx fused
decoder, onnxruntime-genai's ``model.onnx``) runs a 128-token prompt, then ``--steps`` one-token
steps with one buffer per layer bound as both past and present (genai's way and tiedonnx's
shared cache), onnxruntime's profiler on, 2 threads. Printed: the mean ``model_run`` of the
steps, the kernels' sum, and the time per op type per step. Profiling adds its own cost, so
compare files within one run of this script.

``loop``: a generation folder through :func:`tiedonnx.runtime.generate.load_lm`, greedy, 128-token
prompt and 128 new tokens; ``run_with_iobinding`` is timed per call, and what the decode step
spends outside it (binding, sampling, bookkeeping: the Python loop) is printed per step.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

PROMPT, THREADS = 128, 2


def _shared_cache_runner(session, steps: int, head_dim: int | None):
    """``run(ids, total)`` over one zeroed buffer per past input, bound as past and present."""
    import onnxruntime as ort

    inputs = {i.name: i for i in session.get_inputs()}
    past = [n for n in inputs if n.startswith("past_key_values")]
    heads, dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    if not isinstance(dim, int):  # genai names the head size ("kv_cache_dim")
        if head_dim is None:
            raise SystemExit(f"{past[0]}'s head size is symbolic ({dim!r}): give --head-dim")
        dim = head_dim
    buffers = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, PROMPT + steps + 1, dim), np.float32))
               for n in past}
    dtypes = {n: np.int64 if inputs[n].type == "tensor(int64)" else np.int32 for n in ("input_ids", "attention_mask")}
    io = session.io_binding()

    def run(ids: np.ndarray, total: int) -> None:
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        io.bind_cpu_input("input_ids", ids.astype(dtypes["input_ids"]))
        io.bind_cpu_input("attention_mask", np.ones((1, total), dtypes["attention_mask"]))
        for name, value in buffers.items():
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
        io.bind_output("logits", "cpu")
        session.run_with_iobinding(io)

    return run


def ops(path: str, steps: int, head_dim: int | None) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = _shared_cache_runner(session, steps, head_dim)
    run(np.arange(3, 3 + PROMPT)[None], PROMPT)
    for k in range(steps):
        run(np.array([[5]]), PROMPT + k + 1)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_prompt = runs[0]["ts"] + runs[0]["dur"]
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ts", 0) > after_prompt and e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    print(f"{path}: model_run {statistics.mean(r['dur'] for r in runs[1:]) / 1e3:.3f} ms per step; kernels "
          f"{sum(per_op.values()) / 1e3 / steps:.3f} ms; {sum(count.values()) // steps} nodes per step")
    for op, micros in per_op.most_common(10):
        print(f"  {op:34s} {micros / 1e3 / steps:7.3f} ms  x{count[op] // steps}")


def loop(folder: str, rounds: int) -> None:
    from tiedonnx.runtime.generate import load_lm

    lm = load_lm(folder, threads=THREADS)
    session, calls = lm._session, []
    plain = session.run_with_iobinding

    def timed(io, run_options=None):
        start = time.perf_counter()
        plain(io, run_options)
        calls.append(time.perf_counter() - start)

    session.run_with_iobinding = timed
    vocab = lm.config.vocabulary_size
    prompt = [3 + i % (vocab - 3) for i in range(PROMPT)]  # 3 .. 130 where the vocabulary allows
    lm.generate(prompt, max_new_tokens=8, sampler="greedy", stop_token_ids=[])
    outside, step = [], []
    for _ in range(rounds):
        calls.clear()
        result = lm.generate(prompt, max_new_tokens=128, sampler="greedy", stop_token_ids=[])
        # calls[0] is the prompt; the decode window holds the runs after the first token
        outside.append((result.decode_seconds - sum(calls[1:])) / result.decode_steps * 1e6)
        step.append(result.decode_seconds / result.decode_steps * 1e6)
    print(f"{folder}: decode step {statistics.median(step):.0f} us, of which outside run_with_iobinding "
          f"{statistics.median(outside):.1f} us (median of {rounds} generations)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("ops", "loop"))
    parser.add_argument("paths", nargs="+", help="ops: decoder .onnx files; loop: generation folders")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--head-dim", type=int, help="ops: the head size where a file leaves it symbolic (genai)")
    args = parser.parse_args()
    print(describe())
    for path in args.paths:
        if args.what == "ops":
            ops(path, args.steps, args.head_dim)
        else:
            loop(path, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
