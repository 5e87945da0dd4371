"""Tiny KerasHub language models exported at every precision: file bytes, parity, next-token agreement.

The configurations of tests/test_keras_hub.py (2 layers, hidden 16, vocabulary
97, seeded random weights; nothing is downloaded): GPT-2, Qwen, Llama with
``tie_word_embeddings=True`` and Gemma, each as a ``CausalLM`` without a
preprocessor. Per model and precision: the file's bytes (plain tf2onnx's
beside them), the max abs logits difference against Keras over the parity
cases (batch 1/3/64 x sequence 1/7/33, right-padded), and next-token (argmax)
agreement with Keras on the unpadded positions of 3 padded rows at lengths 1,
7 and 33. int8 is shown three times: per-tensor 7-bit weights
(``--no-per-channel``), per-channel (the default for language models, what
``export(..., precision="int8")`` writes for them: the projection's scales per
row of the shared table, which the lookup applies to the rows it gathers), and
per-channel with full 8-bit weights (``--no-reduce-range``, for CPUs with VNNI
or ARM only).

    python scripts/bench_tiny_lms.py

Needs the [convert] extra and keras-hub; about 2 minutes on 2 cores.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VOCAB = 97
# (row label, precision, export options).
VARIANTS = (("fp32", "fp32", {}), ("fp16", "fp16", {}), ("int8", "int8", {"per_channel": False}),
            ("int8 per-channel", "int8", {"per_channel": True}),
            ("int8 per-channel full-range", "int8", {"per_channel": True, "reduce_range": False}))


def tiny_lm(kind: str):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    common = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, intermediate_dim=32)
    if kind == "GPT-2":
        return m.GPT2CausalLM(m.GPT2Backbone(num_heads=2, max_sequence_length=64, **common), preprocessor=None)
    if kind == "Qwen":
        return m.QwenCausalLM(m.QwenBackbone(num_query_heads=2, num_key_value_heads=1, **common), preprocessor=None)
    if kind == "Llama (tied)":
        return m.LlamaCausalLM(m.LlamaBackbone(num_query_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                               **common), preprocessor=None)
    return m.GemmaCausalLM(m.GemmaBackbone(num_query_heads=2, num_key_value_heads=1, head_dim=8, **common),
                           preprocessor=None)


def agreement(model, path: Path) -> float:
    """Lowest argmax agreement over lengths 1, 7, 33 (3 right-padded rows each)."""
    import numpy as np
    import onnxruntime as ort

    from tiedonnx.converter.samples import Case, make_case_inputs
    from tiedonnx.converter.signature import input_signature

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    signature = input_signature(model)
    worst = 1.0
    for length in (1, 7, 33):
        feed = make_case_inputs(signature, Case(3, length), {"token_ids": VOCAB}, seed=11)
        mask = feed["padding_mask"].astype(bool)
        got = session.run(None, feed)[0].argmax(-1)[mask]
        want = np.asarray(model(feed, training=False)).argmax(-1)[mask]
        worst = min(worst, float((got == want).mean()))
    return worst


def main() -> int:
    logging.disable(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message="You are using a softmax over axis")
    from tiedonnx.converter.errors import ParityError
    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import tolerance, verify
    from tiedonnx.runtime.model_file import read_model

    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe

    print(describe())
    print("| model | plain tf2onnx B | precision | tiedonnx B | logits max abs vs Keras | bound | argmax agreement |")
    print("|---|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tiedonnx-tiny-lm-") as tmp:
        for kind in ("GPT-2", "Qwen", "Llama (tied)", "Gemma"):
            model = tiny_lm(kind)
            plain = None
            for label, precision, options in VARIANTS:
                path = Path(tmp) / f"{kind}.{label}.onnx"
                plain = export(model, path, precision=precision, verify=False, **options).plain_bytes
                proto = read_model(path).proto
                figures = verify(model, proto, precision=precision, atol=1e9)  # the figure, whatever the bound
                atol, _ = tolerance(model, precision)
                try:
                    verify(model, proto, precision=precision)
                    verdict = "ok"
                except ParityError:  # reported, not hidden: the row says it missed
                    verdict = "MISSED"
                print(f"| {kind} | {plain:,} | {label} | {path.stat().st_size:,} | "
                      f"{figures.max_abs:.2g} | {atol:g} x max(1, peak): {verdict} | {agreement(model, path):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
