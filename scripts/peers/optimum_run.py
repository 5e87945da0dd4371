"""Optimum's peer row: export with optimum-onnx, run with ORTModelForCausalLM (in the optimum venv).

    ~/.cache/tiedonnx/peers/optimum/bin/python scripts/peers/optimum_run.py export --hf HF --onnx OUT
    ... bench --onnx OUT --prompts prompts.json --new 128 --rounds 3     # TTFT, tokens/s b1 and b8, tokens
    ... probe --onnx OUT --prompts prompts.json --new 128                # RSS, fresh process
    ... serve --onnx OUT --threads 2      # a worker of scripts/bench_decode_ab.py (JSON lines on stdin/stdout)

Each step prints one JSON line. Greedy, exactly ``--new`` tokens: ``eos_token_id=None`` (no stop; the
``min_new_tokens`` way adds logits processors that cost more than a GPT-2 small decode step here:
7 against 31 tokens/s, measured). onnxruntime's session gets ``intra_op_num_threads = --threads``,
torch (logits processing) as many (its default on this 2-core machine).
"""

from __future__ import annotations

import time
from pathlib import Path

from common import embedding_copies, main


def onnx_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if ".onnx" in p.name)


def export(hf: str, out: Path, precision: str) -> dict:
    import json

    from optimum.exporters.onnx import main_export

    start = time.perf_counter()
    main_export(hf, out, task="text-generation-with-past", do_validation=False)
    config = json.loads((Path(hf) / "config.json").read_text())
    hidden = config.get("hidden_size") or config["n_embd"]
    return {"export_s": time.perf_counter() - start, "bytes": onnx_bytes(out),
            "embedding_copies": embedding_copies(out, config["vocab_size"], hidden)}


def load(folder: str, threads: int):
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ORTModelForCausalLM.from_pretrained(folder, session_options=options, provider="CPUExecutionProvider")


def generator(model):
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """generate() hands the streamer the prompt, then each new token: the times of those calls."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            self.times.append(time.perf_counter())

    def generate(prompts: list[list[int]], n: int):
        ids, clock = torch.tensor(prompts, dtype=torch.int64), Clock()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 eos_token_id=None, do_sample=False, num_beams=1, pad_token_id=0, streamer=clock)
        first, last = clock.times[1], clock.times[-1]  # [0]: the prompt; [1]: the first new token
        return out[:, ids.shape[1]:].tolist(), first - start, last - first

    return generate


def libraries() -> None:
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    from optimum.onnxruntime import ORTModelForCausalLM  # noqa: F401  (lazy modules imported here)
    from transformers import GenerationMixin  # noqa: F401


if __name__ == "__main__":
    main(__doc__, export, load, generator, libraries)
