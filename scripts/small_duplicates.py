"""Chance-equal small constants in quantized tiny KerasHub files: the figure behind MIN_DUPLICATE_BYTES.

Exports tiny KerasHub models (2 layers, hidden 16-32, vocabulary 97-101,
seeded random weights; nothing is downloaded) at fp32, derives fp16, int8,
int8 per-channel full-range and int4 files, and lists every pair of equal
initializers with no size threshold. Any pair left in a finished file is not a
tie (ties are stored once), so the largest such pair bounds the threshold
from below; the smallest real tie in the tests and README (a 4x2 float32
kernel, 32 bytes) bounds it from above.

    python scripts/small_duplicates.py

Needs the [convert] extra and keras-hub; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _models() -> dict:
    import keras_hub

    m = keras_hub.models
    moe = dict(vocabulary_size=97, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=32,
               intermediate_dim=32, moe_intermediate_dim=32, num_experts=4, top_k=2)
    bert = dict(vocabulary_size=101, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                max_sequence_length=64)
    return {
        "QwenMoe (tied)": lambda: m.QwenMoeCausalLM(m.QwenMoeBackbone(
            shared_expert_intermediate_dim=16, tie_word_embeddings=True, **moe), preprocessor=None),
        "QwenMoe": lambda: m.QwenMoeCausalLM(m.QwenMoeBackbone(shared_expert_intermediate_dim=16, **moe),
                                             preprocessor=None),
        "Qwen3Moe (tied)": lambda: m.Qwen3MoeCausalLM(m.Qwen3MoeBackbone(
            head_dim=8, tie_word_embeddings=True, **moe), preprocessor=None),
        "GPT-2": lambda: m.GPT2CausalLM(m.GPT2Backbone(
            vocabulary_size=97, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
            max_sequence_length=64), preprocessor=None),
        "BERT": lambda: m.BertMaskedLM(m.BertBackbone(**bert), preprocessor=None),
        "DeBERTaV3": lambda: m.DebertaV3MaskedLM(m.DebertaV3Backbone(bucket_size=8, **bert), preprocessor=None),
    }


def main() -> None:
    import keras
    import onnx

    from tiedonnx.converter.export import export
    from tiedonnx.runtime.graph.duplicates import MIN_DUPLICATE_BYTES, find_duplicates, initializer_arrays
    from tiedonnx.runtime.graph.quantize import to_precision

    variants = [("fp16", {}), ("int8", {}), ("int8 per-channel full-range",
                                             dict(per_channel=True, reduce_range=False)), ("int4", {})]
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in _models().items():
            keras.utils.set_random_seed(0)
            path = Path(tmp) / "m.onnx"
            export(build(), path, verify=False, force=True)
            base = onnx.load(path)
            for label, options in [("fp32", {})] + variants:
                proto = base if label == "fp32" else to_precision(base, label.split()[0], **options)
                arrays = initializer_arrays(proto.graph)
                pairs = [(d.copy, d.source, arrays[d.copy].dtype.name, arrays[d.copy].shape, arrays[d.copy].nbytes)
                         for d in find_duplicates(arrays, min_bytes=0)]
                worst = max([worst] + [p[-1] for p in pairs])
                print(f"{name:16} {label:28} equal pairs: {pairs or 'none'}")
    print(f"largest chance-equal pair: {worst} bytes; MIN_DUPLICATE_BYTES = {MIN_DUPLICATE_BYTES}")


if __name__ == "__main__":
    main()
