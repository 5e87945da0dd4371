"""Generation side by side, same weights everywhere: KerasHub, the forward-only loop, tiedonnx cached, peers.

    python scripts/bench_generate.py                   # tiny GPT-2 (vocabulary 1000, hidden 64, 2 layers)
    python scripts/bench_generate.py --config gpt2-small --precisions fp32,int8,int4
    python scripts/bench_generate.py --config qwen-tiny     # Qwen architecture: genai's builder runs it
    python scripts/bench_generate.py --config qwen-100m --precisions fp32,int4 --peers only
    python scripts/bench_generate.py --config qwen-100m --precisions int4 --no-loop --export-only --out DIR
    python scripts/bench_generate.py --config qwen-100m --precisions int4 --no-loop --reuse --peers no --out DIR
    python scripts/bench_generate.py --precisions fp32,fp32-traced,int4,int4-acc0,int4-sym --peers no   # variants

Rows (2 threads for every onnxruntime contender; KerasHub uses TensorFlow's own):

* KerasHub ``generate`` (TensorFlow, compiled; GreedySampler), timed after a warm-up call;
* today's forward-only loop: the plain ``tiedonnx export`` file run greedily, re-running the
  whole prefix for every new token (no cache);
* tiedonnx cached, per precision: the generation folder through ``tiedonnx.runtime.generate``;
* transformers.js 4.3.2 in node reading the same fp32 folder (Optimum's contract), when installed;
* Optimum (``optimum-onnx``, ``ORTModelForCausalLM``, fp32) and onnxruntime-genai's model builder
  (fp32, int4; Qwen only: it has no GPT-2) on the same weights, each in its own venv
  (``bash scripts/setup_peers.sh``; never CI): see scripts/bench_generate_peers.py. A peer that is
  not installed or fails is a row with its error in one line. ``--peers only`` leaves out the
  forward-only loop and tiedonnx's rows; ``--peers no`` the peers.

Columns: files' bytes; RSS growth over session creation and after the prompt plus ``--new``
tokens (fresh process each); time to first token for a ``--prompt``-token prompt; decode
tokens/s at batch 1 and 8; greedy tokens identical to KerasHub's (batch 1, the first prompt).
Decode rate = (new - 1) tokens over the time after the first token. Every contender gets
the same prompts. Figures are the median of ``--rounds`` rounds, each contender's rounds back to
back: for speed ratios on a noisy machine, scripts/bench_decode_ab.py alternates the contenders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate_peers import peer_rows, unused_token  # noqa: E402
from machine import describe  # noqa: E402
from tiedonnx.runtime.timing import settle  # noqa: E402

THREADS = 2
CONFIGS = {
    "tiny": dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
                 max_sequence_length=512),
    "gpt2-small": dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                       intermediate_dim=3072, max_sequence_length=1024),
    "qwen-tiny": dict(vocabulary_size=1000, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=64,
                      intermediate_dim=128, tie_word_embeddings=True),
    # 24.6 M embedding + 12 x 6.3 M (attention 1.6 M with 4 KV heads, SwiGLU 4.7 M): 100.1 M parameters.
    "qwen-100m": dict(vocabulary_size=32000, num_layers=12, num_query_heads=12, num_key_value_heads=4,
                      hidden_dim=768, intermediate_dim=2048, tie_word_embeddings=True),
}
# int8 per channel: the default per-tensor 7-bit int8 misses the parity bound on GPT-2 small's
# random weights (logits 0.068 against 0.05 x 1.25, measured with this script).
PRECISION_OPTIONS = {"int8": {"per_channel": True}}
#: Variants a --precisions entry may add after a dash: fp32-traced (the traced decoder where the fused one
#: applies), int4-acc0 (MatMulNBits with float activations instead of the generation default, 4), int4-sym
#: (symmetric blocks, no zero points).
VARIANTS = {"traced": {"decoder": "traced"}, "acc0": {"accuracy_level": 0}, "sym": {"symmetric": True}}


def _precision_options(entry: str) -> tuple[str, dict]:
    """``fp32``, ``int4-acc0``, ``fp32-traced``... -> (precision, export_generation options)."""
    precision, *variants = entry.split("-")
    options = dict(PRECISION_OPTIONS.get(precision, {}))
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r} in --precisions {entry!r}; use {', '.join(VARIANTS)}")
        options.update(VARIANTS[variant])
    return precision, options
TJS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiedonnx/transformers-js/node_modules"


def _rss_mib() -> float:
    from tiedonnx.runtime.rss import rss_bytes

    return rss_bytes() / 2**20


def _load_libraries() -> None:
    """Import onnx and onnxruntime and run onnx's checker once: their fixed costs (onnx's schema
    registry alone is about 7 MiB) are the libraries', not the model's, and are paid before measuring."""
    import ctypes

    import onnx
    import onnxruntime  # noqa: F401
    from onnx import TensorProto, helper

    from tiedonnx.runtime import session  # noqa: F401

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    onnx.checker.check_model(helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "warm", io[:1], io[1:])), full_check=True)
    ctypes.CDLL(None).malloc_trim(0)


def probe(folder: str, prompt: int, new: int, memory: str = "auto") -> None:
    """Child process: RSS growth over load_lm and after generating (printed as JSON).

    ``python scripts/bench_generate.py --probe DIR [--memory auto|fast|lean] [--prompt 128] [--new 128]``
    measures one folder: session MiB, its ratio to the decoder file's bytes, and MiB after the prompt
    and the new tokens (libraries loaded first, see :func:`_load_libraries`).
    """
    import numpy as np

    from tiedonnx.runtime.generate import load_lm

    _load_libraries()
    before = _rss_mib()
    lm = load_lm(folder, threads=THREADS, memory=memory)
    loaded = _rss_mib()
    ids = np.random.default_rng(0).integers(1, lm.config.vocabulary_size, prompt).tolist()
    lm.generate(ids, max_new_tokens=new, sampler="greedy", stop_token_ids=[])
    file_mib = lm.config.model_path(Path(folder)).stat().st_size / 2**20
    print(json.dumps({"memory": lm.model.memory, "session_mib": loaded - before,
                      "session_x_file": round((loaded - before) / file_mib, 3), "after_mib": _rss_mib() - before}))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _prompts(vocab: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(seed).integers(1, vocab, (batch, length)).tolist()


def keras_hub_row(lm, prompts, new: int, rounds: int) -> dict:
    import numpy as np

    lm.compile(sampler="greedy")

    def run(batch_prompts, n):
        ids = np.zeros((len(batch_prompts), len(batch_prompts[0]) + n), "int32")
        ids[:, :len(batch_prompts[0])] = batch_prompts
        mask = np.zeros(ids.shape, bool)
        mask[:, :len(batch_prompts[0])] = True
        start = time.perf_counter()
        out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
        return time.perf_counter() - start, np.asarray(out["token_ids"])[:, len(batch_prompts[0]):]

    row = {"name": "KerasHub generate (TF)"}
    for batch in (1, 8):
        p = prompts[:batch]
        run(p, 1), run(p, new)  # compile both shapes
        ones, fulls = [], []
        for _ in range(rounds):
            settle()
            ones.append(run(p, 1)[0])
            settle()
            seconds, tokens = run(p, new)
            fulls.append(seconds)
        t1, tn = statistics.median(ones), statistics.median(fulls)
        row[f"tps_b{batch}"] = (new - 1) / max(tn - t1, 1e-9)
        if batch == 1:
            row["ttft_ms"], row["tokens"] = t1 * 1e3, tokens[0].tolist()
        row[f"tokens_b{batch}"] = tokens.tolist()
    return row


def forward_loop_row(path: Path, prompts, new: int, rounds: int, batches=(1, 8)) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(p, n):
        ids = np.array(p, dtype=np.int32)
        start, first = time.perf_counter(), None
        for _ in range(n):
            feed = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
            logits = session.run(None, {k: feed[k] for k in names})[0]
            ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None].astype(np.int32)], axis=1)
            first = first or time.perf_counter()
        return first - start, time.perf_counter() - first, ids[:, len(p[0]):]

    row = {"name": "forward-only loop (no cache)", "bytes": path.stat().st_size}
    for batch in batches:
        results = []
        for _ in range(rounds):
            settle()
            results.append(run(prompts[:batch], new))
        row[f"tps_b{batch}"] = (new - 1) / statistics.median(r[1] for r in results)
        if batch == 1:
            row["ttft_ms"] = statistics.median(r[0] for r in results) * 1e3
            row["tokens"] = results[0][2][0].tolist()
    return row


def cached_row(folder: Path, precision: str, prompts, new: int, rounds: int) -> dict:
    from tiedonnx.runtime.generate import load_lm

    lm = load_lm(folder, threads=THREADS)
    row = {"name": f"tiedonnx cached {precision}", "bytes": _folder_bytes(folder / "onnx")}
    for batch in (1, 8):
        results = []
        lm.generate(prompts[:batch], max_new_tokens=4, sampler="greedy", stop_token_ids=[])  # warm-up
        for _ in range(rounds):
            settle()
            results.append(lm.generate(prompts[:batch], max_new_tokens=new, sampler="greedy", stop_token_ids=[]))
        row[f"tps_b{batch}"] = statistics.median(r.decode_tokens_per_s for r in results)
        if batch == 1:
            row["ttft_ms"] = statistics.median(r.time_to_first_token_s for r in results) * 1e3
            row["tokens"] = results[0].tokens[0]
    out = subprocess.run([sys.executable, __file__, "--probe", str(folder), "--prompt", str(len(prompts[0])),
                          "--new", str(new)], capture_output=True, text=True, check=False)
    try:
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        row["error"] = "RSS probe failed: " + out.stderr.strip().splitlines()[-1][:200] if out.stderr else "?"
    return row


def transformers_js_row(folder: Path, prompts, new: int) -> dict:
    node = shutil.which("node")
    if node is None or not (TJS / "@huggingface/transformers").is_dir():
        return {"name": "transformers.js (node)", "error": f"not installed (npm install --prefix {TJS.parent} "
                "--ignore-scripts @huggingface/transformers@4.3.2)"}
    if not (folder / "config.json").is_file():
        return {"name": "transformers.js (node)", "error": "not run: no config.json in the folder (tiedonnx writes "
                "transformers.js's files for the GPT-2 family only)"}
    script = f"""
import path from "node:path";
const {{ env, AutoModelForCausalLM, Tensor }} = await import({json.dumps(str(TJS))} +
    "/@huggingface/transformers/dist/transformers.node.mjs");
env.allowRemoteModels = false; env.localModelPath = {json.dumps(str(folder.parent) + "/")};
const model = await AutoModelForCausalLM.from_pretrained({json.dumps(folder.name)},
    {{ dtype: "fp32", device: "cpu", session_options: {{ intraOpNumThreads: {THREADS} }} }});
const ids = {json.dumps(prompts[0])}.map(BigInt);
const input_ids = new Tensor("int64", BigInt64Array.from(ids), [1, ids.length]);
const gen = (n) => model.generate({{ input_ids, max_new_tokens: n, min_new_tokens: n, do_sample: false }});
await gen(2);
let t = performance.now(); await gen(1); const t1 = performance.now() - t;
t = performance.now(); const out = await gen({new}); const tn = performance.now() - t;
console.log(JSON.stringify({{ t1, tn, tokens: Array.from(out.data, Number).slice(ids.length) }}));
"""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.mjs").write_text(script)
        proc = subprocess.run([node, str(Path(tmp) / "bench.mjs")], capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"name": "transformers.js (node)", "error": proc.stderr.strip().splitlines()[-1][:200]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"name": "transformers.js (node), same fp32 folder", "ttft_ms": got["t1"],
            "tps_b1": (new - 1) / max((got["tn"] - got["t1"]) / 1e3, 1e-9), "tokens": got["tokens"]}


def _print(rows: list[dict], reference: list[int]) -> None:
    print("| contender | bytes | session MiB | after MiB | TTFT ms | tok/s b1 | tok/s b8 | = KerasHub |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r and "tps_b1" not in r:
            print(f"| {r['name']} | {r['error']} |")
            continue
        cell = lambda key, fmt: (fmt.format(r[key]) if key in r else "-")  # noqa: E731
        same = "-" if "tokens" not in r else ("yes" if r["tokens"] == reference else "NO")
        print(f"| {r['name']} | {cell('bytes', '{:,}')} | {cell('session_mib', '{:.1f}')} | "
              f"{cell('after_mib', '{:.1f}')} | {cell('ttft_ms', '{:.1f}')} | {cell('tps_b1', '{:.1f}')} | "
              f"{cell('tps_b8', '{:.1f}')} | {same} |")


def _summary(rows: list[dict], new: int) -> None:
    """Ratios under the table: decode against KerasHub, total against the forward-only loop, RSS per byte."""
    keras_tps = rows[0]["tps_b1"]
    loop = next((r for r in rows if r["name"].startswith("forward-only") and "tps_b1" in r), None)
    for r in rows[1:]:
        if "error" in r and "tps_b1" in r:
            print(f"{r['name']}: {r['error']}")
        if r is loop or "tps_b1" not in r:
            continue
        line = f"{r['name']}: decode {r['tps_b1'] / keras_tps:.2f}x KerasHub"
        if loop is not None:
            total_ms = r["ttft_ms"] + 1e3 * (new - 1) / r["tps_b1"]
            loop_ms = 1e3 * new / loop["tps_b1"] + loop["ttft_ms"]
            line += f"; prompt + {new} tokens {loop_ms / total_ms:.2f}x faster than the forward-only loop"
        if "session_mib" in r and r.get("bytes"):
            line += f"; session RSS {r['session_mib'] * 2**20 / r['bytes']:.2f}x file"
        if "embedding_copies" in r:
            line += f"; vocab x hidden initializers {r['embedding_copies']}; export {r['export_s']:.1f} s"
        print(line)


def build_lm(config: str):
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    if config.startswith("qwen"):
        lm = m.QwenCausalLM(m.QwenBackbone(**CONFIGS[config]), preprocessor=None)
        # KerasHub's Qwen layers draw key and value (and query and output) kernels from one seeded
        # initializer: equal arrays, which Optimum's export then stores once, a saving real weights
        # never give. Seeded N(0, 0.02) noise on every weight makes no two equal.
        rng = np.random.default_rng(0)
        for weight in lm.weights:
            weight.assign(weight.numpy() + rng.normal(0, 0.02, weight.shape).astype(weight.dtype))
        return "qwen", lm
    return "gpt2", m.GPT2CausalLM(m.GPT2Backbone(**CONFIGS[config]), preprocessor=None)


def tiedonnx_rows(lm, root: Path, prompts, args) -> list[dict]:
    """The forward-only loop and tiedonnx cached per precision (a precision failing parity is one row)."""
    from tiedonnx.converter.export import export
    from tiedonnx.converter.generation import export_generation
    from tiedonnx.runtime.errors import ParityError

    rows = []
    if not args.no_loop:
        start = time.perf_counter()
        if not (args.reuse and (root / "forward.onnx").is_file()):
            export(lm, root / "forward.onnx", force=True, verify=False)
            print(f"forward export {time.perf_counter() - start:.1f} s", flush=True)
        if not args.export_only:  # batch 8 re-runs 8 growing prefixes per token: minutes beyond tiny
            rows.append(forward_loop_row(root / "forward.onnx", prompts, args.new, args.rounds,
                                         batches=(1, 8) if args.config.endswith("tiny") else (1,)))
    for entry in args.precisions.split(","):
        start, folder = time.perf_counter(), root / entry
        precision, options = _precision_options(entry)
        if not (args.reuse and (folder / "tiedonnx.json").is_file()):
            try:
                report = export_generation(lm, folder, precision=precision, force=True, verify=not args.no_verify,
                                           **options)
            except ParityError as exc:  # a failed precision is a row with its reason, the rest still runs
                rows.append({"name": f"tiedonnx cached {entry}", "error": f"parity failed: {str(exc)[:160]}"})
                continue
            print(f"generation export {entry} {options or ''} ({report.decoder} decoder) "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        if not args.export_only:
            rows.append(cached_row(folder, entry, prompts, args.new, args.rounds))
    if "fp32" in args.precisions.split(",") and not args.export_only:
        rows.append(transformers_js_row(root / "fp32", prompts, args.new))
    return rows


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", choices=("yes", "no", "only"), default="yes",
                        help="only: KerasHub and the peers (no forward-only loop, no tiedonnx rows)")
    parser.add_argument("--no-loop", action="store_true", help="leave out the forward-only loop (its export "
                        "and minutes of cacheless decoding beyond the tiny configs)")
    parser.add_argument("--no-verify", action="store_true",
                        help="export the folders without their parity check against Keras (a quantized folder of "
                             "random weights at GPT-2 sizes can miss the bound; its row then still runs)")
    parser.add_argument("--export-only", action="store_true", help="only write the tiedonnx folders into --out "
                        "(a process of its own: less memory), for a later run with --reuse")
    parser.add_argument("--out", default=None, help="keep the folders here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing forward.onnx and "
                        "precision folders in --out")
    parser.add_argument("--probe", default=None, metavar="DIR",
                        help="only measure one folder's RSS (session, after --prompt + --new tokens), as JSON")
    parser.add_argument("--memory", default="auto", choices=("auto", "fast", "lean"), help="with --probe")
    args = parser.parse_args()
    if args.export_only and not args.out:
        parser.error("--export-only needs --out (the folder a later --reuse run reads)")
    return args


def main() -> int:
    args = _arguments()
    if args.probe:
        probe(args.probe, args.prompt, args.new, args.memory)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    print(describe())
    print(f"config {args.config}: {CONFIGS[args.config]}; prompt {args.prompt} tokens, {args.new} new; "
          f"{THREADS} threads; median of {args.rounds} rounds")
    family, lm = build_lm(args.config)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-generate-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        for row in tiedonnx_rows(lm, root, [], args):  # only failures are rows here: say them
            print(f"{row['name']}: {row['error']}")
        return 0
    prompts = _prompts(CONFIGS[args.config]["vocabulary_size"], 8, args.prompt)
    rows = [keras_hub_row(lm, prompts, args.new, args.rounds)]
    if args.peers != "only":
        rows += tiedonnx_rows(lm, root, prompts, args)
    if args.peers != "no":
        stop_id = unused_token(CONFIGS[args.config]["vocabulary_size"], rows[0]["tokens_b8"])
        rows += peer_rows(lm, family, root / "peers", prompts, args.new, args.rounds,
                          args.precisions.split(","), stop_id)
    _print(rows, rows[0]["tokens"])
    _summary(rows, args.new)
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
