"""onnxruntime-genai's peer row: its model builder, then og.Generator (in the genai venv).

    ~/.cache/tiedonnx/peers/genai/bin/python scripts/peers/genai_run.py export --hf HF --onnx OUT --precision int4
    ... bench --onnx OUT --prompts prompts.json --new 128 --rounds 3     # TTFT, tokens/s b1 and b8, tokens
    ... probe --onnx OUT --prompts prompts.json --new 128                # RSS, fresh process
    ... serve --onnx OUT --threads 2      # a worker of scripts/bench_decode_ab.py (JSON lines on stdin/stdout)

Each step prints one JSON line. The builder (``python -m onnxruntime_genai.models.builder -p fp32|int4
-e cpu``) adds its tokenizer's end-of-turn id to ``eos_token_id``; export writes the Hugging Face
config's own ids back into genai_config.json, so no id the greedy choice can pick stops a run.
Greedy (``do_sample=False``), exactly ``--new`` tokens; ``max_length`` = prompt + new (the KV buffer);
the session gets ``intra_op_num_threads = --threads`` through ``og.Config.overlay``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import embedding_copies, main


def export(hf: str, out: Path, precision: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o", str(out),
                           "-p", precision, "-e", "cpu", "-c", str(out.parent / f"{out.name}-cache")],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError("builder failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    seconds = time.perf_counter() - start
    config = json.loads((Path(hf) / "config.json").read_text())
    genai = json.loads((out / "genai_config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        genai["model"][key] = config[key]
    (out / "genai_config.json").write_text(json.dumps(genai, indent=4))
    files = [p for p in out.iterdir() if p.name.startswith("model.onnx")]
    return {"export_s": seconds, "bytes": sum(p.stat().st_size for p in files),
            "embedding_copies": embedding_copies(out, config["vocab_size"], config["hidden_size"])}


def load(folder: str, threads: int):
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.clear_providers()  # CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def generator(model):
    import numpy as np
    import onnxruntime_genai as og

    def generate(prompts: list[list[int]], n: int):
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompts[0]) + n, batch_size=len(prompts))
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(prompts, dtype=np.int32))  # runs the prompt
        gen.generate_next_token()
        first = time.perf_counter()
        for _ in range(n - 1):
            if gen.is_done():
                break
            gen.generate_next_token()
        last = time.perf_counter()
        return [list(gen.get_sequence(i))[len(prompts[0]):] for i in range(len(prompts))], first - start, last - first

    return generate


def libraries() -> None:
    import numpy  # noqa: F401
    import onnxruntime_genai  # noqa: F401


if __name__ == "__main__":
    main(__doc__, export, load, generator, libraries)
