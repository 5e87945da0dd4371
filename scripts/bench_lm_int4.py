"""Tiny KerasHub LMs at fp32 and int4: file ratio, max abs logits vs Keras, next-token agreement.

GPT-2 and Llama with tied embeddings, built from their constructors (random
weights, seed 0), vocabulary 1000 and hidden 64 (``--small``: the tests' 97 and
16). int4 files get short tensor names by default; the fp32 file with short
names too (``fp32 short``) shows how much of the ratio is the weights alone.
Prints the weights that stay float32. Usage: python scripts/bench_lm_int4.py [--small]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import bench_tiny_lms  # noqa: E402
from bench_tiny_lms import agreement  # noqa: E402
from machine import describe  # noqa: E402


def lm(kind: str, vocab: int, hidden: int):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    m = keras_hub.models
    common = dict(vocabulary_size=vocab, num_layers=2, hidden_dim=hidden, intermediate_dim=2 * hidden)
    if kind == "gpt2":
        return m.GPT2CausalLM(m.GPT2Backbone(num_heads=2, max_sequence_length=64, **common),
                              preprocessor=None)
    return m.LlamaCausalLM(m.LlamaBackbone(num_query_heads=2, num_key_value_heads=1,
                                           tie_word_embeddings=True, **common), preprocessor=None)


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import tolerance, verify
    from tiedonnx.runtime.model_file import read_model

    vocab, hidden = (97, 16) if "--small" in sys.argv else (1000, 64)
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gpt2", "llama_tied"):
            model = lm(kind, vocab, hidden)
            bench_tiny_lms.VOCAB = vocab
            sizes = {}
            for label, precision, short in (("fp32", "fp32", False), ("fp32 short", "fp32", True),
                                            ("int4", "int4", None)):
                path = Path(tmp) / f"{kind}.{label.replace(' ', '_')}.onnx"
                export(model, path, precision=precision, short_names=short, verify=False)
                sizes[label] = path.stat().st_size
            proto = read_model(path).proto
            figures = verify(model, proto, precision="int4", atol=1e9)  # report, do not judge
            atol, _ = tolerance(model, "int4")
            floats = [(i.name, list(i.dims)) for i in proto.graph.initializer
                      if i.data_type == 1 and np.prod(i.dims) >= 256]
            print(f"{kind} vocab {vocab} hidden {hidden}: fp32 {sizes['fp32']:,} B, int4 "
                  f"{sizes['int4']:,} B, ratio {sizes['int4'] / sizes['fp32']:.3f} (vs fp32 with short "
                  f"names {sizes['fp32 short']:,} B: {sizes['int4'] / sizes['fp32 short']:.3f}); max abs logits "
                  f"{figures.max_abs:.3g} (int4 bound {atol}); next-token agreement "
                  f"{agreement(model, path):.3f}")
            print(f"   float32 weights of 256+ values left: {floats}")


if __name__ == "__main__":
    main()
