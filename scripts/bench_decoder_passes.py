"""What each generation-decoder pass buys: node count and decode tokens/s, side by side.

    python scripts/bench_decoder_passes.py                      # tiny GPT-2 (vocabulary 1000, hidden 64, 2 layers)
    python scripts/bench_decoder_passes.py --family opt --rounds 9

The same KerasHub model's cached decoder is exported with the passes
``export_generation`` runs switched on one by one (no pass; + stack-pick
folding; + layer-norm fusion; + shape-chain rewrites), then each file decodes ``--new`` tokens after a
``--prompt``-token prompt with onnxruntime (2 threads), the files interleaved
round by round; the figure is the median over rounds. Outputs of every variant
are compared with the first (max abs difference of the logits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

FAMILIES = {
    "gpt2": ("GPT2Backbone", "GPT2CausalLM", dict(num_heads=2, max_sequence_length=512)),
    "opt": ("OPTBackbone", "OPTCausalLM", dict(num_heads=2, max_sequence_length=512)),
}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _decode(session, prompt: int, new: int) -> tuple[float, np.ndarray]:
    """Tokens/s of ``new`` single-token steps after the prompt, and the last logits."""
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    heads, dim = past[0].shape[1], past[0].shape[3]
    mask = any(i.name == "attention_mask" for i in session.get_inputs())  # folders written before it have none

    def with_mask(feeds: dict, total: int) -> dict:
        return {**feeds, "attention_mask": np.ones((1, total), np.int64)} if mask else feeds

    feeds = with_mask({"input_ids": np.ones((1, prompt), np.int64),
                       **{i.name: np.zeros((1, heads, 0, dim), np.float32) for i in past}}, prompt)
    names = [o.name for o in session.get_outputs()]
    outs = session.run(None, feeds)
    start = time.perf_counter()
    for step in range(new):
        feeds = with_mask({"input_ids": np.ones((1, 1), np.int64),
                           **{n.replace("present", "past_key_values"): v for n, v in zip(names, outs)
                              if n != "logits"}}, prompt + step + 1)
        outs = session.run(None, feeds)
    return new / (time.perf_counter() - start), outs[names.index("logits")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="gpt2")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tiedonnx.converter.export import export
    from tiedonnx.converter.generation import GENERATION_OPSET, decoder_model
    from tiedonnx.runtime.graph.layer_norm import fuse_layer_norms
    from tiedonnx.runtime.graph.shape_chains import simplify_shape_chains
    from tiedonnx.runtime.graph.stack_pick import fold_stack_picks
    import keras
    import keras_hub
    import onnx

    keras.utils.set_random_seed(0)
    backbone, causal, extra = FAMILIES[args.family]
    lm = getattr(keras_hub.models, causal)(getattr(keras_hub.models, backbone)(
        vocabulary_size=1000, num_layers=2, hidden_dim=64, intermediate_dim=128, **extra), preprocessor=None)
    decoder = decoder_model(lm)
    variants = {"no pass": (), "+ stack picks": (fold_stack_picks,),
                "+ layer norms": (fold_stack_picks, fuse_layer_norms),
                "+ shape chains": (fold_stack_picks, fuse_layer_norms, simplify_shape_chains)}
    root = Path(tempfile.mkdtemp(prefix="bench-passes-"))
    sessions, nodes = {}, {}
    for name, passes in variants.items():
        path = root / f"{len(sessions)}.onnx"
        export(decoder, path, opset=GENERATION_OPSET, verify=False, graph_passes=passes)
        nodes[name] = len(onnx.load(str(path), load_external_data=False).graph.node)
        sessions[name] = _session(path)
    rates = {name: [] for name in variants}
    logits = {}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            rate, logits[name] = _decode(session, args.prompt, args.new)
            rates[name].append(rate)
    print(describe())
    print(f"{args.family} tiny (vocabulary 1000, hidden 64, 2 layers): {args.prompt}-token prompt, {args.new} "
          f"steps, 2 threads, median of {args.rounds} interleaved rounds")
    first = next(iter(variants))
    base = statistics.median(rates[first])
    for name in variants:
        median = statistics.median(rates[name])
        diff = float(np.abs(logits[name] - logits[first]).max())
        print(f"  {name:15} {nodes[name]:4d} nodes  {median:8.0f} tokens/s  {median / base:5.2f}x  "
              f"max |logits - no pass| {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
