"""int4 accuracy by KerasHub family, against GPT-2 at the same block size.

Tiny configurations (2 layers, hidden 16, vocabulary 101, random weights from
seeds 0, 1 and 2; nothing is downloaded), exported at fp32 and quantized to
int4 (block 32, asymmetric: the defaults). Per family and seed: the relative
logits error ``rms(int4 - keras) / rms(keras)`` and the next-token (argmax)
agreement with Keras, over 3 right-padded rows at lengths 7 and 33 (masked
LMs: at their drawn mask positions). Random weights give nearly flat logits,
so agreement is a noisy figure; the relative error is the steadier one.

    python scripts/int4_families.py [--block-size 32]

Needs the [convert] extra and keras-hub; about 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VOCAB, HIDDEN = 101, 16


def _families() -> dict:
    import keras_hub

    m = keras_hub.models
    base = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=HIDDEN, intermediate_dim=32)
    bert = dict(num_heads=2, max_sequence_length=64, **base)
    return {
        "GPT-2": lambda: m.GPT2CausalLM(m.GPT2Backbone(num_heads=2, max_sequence_length=64, **base),
                                        preprocessor=None),
        "GPT-NeoX": lambda: m.GPTNeoXCausalLM(m.GPTNeoXBackbone(num_heads=2, max_sequence_length=64, **base),
                                              preprocessor=None),
        "OPT": lambda: m.OPTCausalLM(m.OPTBackbone(num_heads=2, max_sequence_length=64, **base), preprocessor=None),
        "Bloom": lambda: m.BloomCausalLM(m.BloomBackbone(num_heads=2, **base), preprocessor=None),
        "Qwen3": lambda: m.Qwen3CausalLM(m.Qwen3Backbone(num_query_heads=2, num_key_value_heads=1, head_dim=8,
                                                         **base), preprocessor=None),
        "BERT": lambda: m.BertMaskedLM(m.BertBackbone(**bert), preprocessor=None),
        "RoBERTa": lambda: m.RobertaMaskedLM(m.RobertaBackbone(**bert), preprocessor=None),
        "DeBERTaV3": lambda: m.DebertaV3MaskedLM(m.DebertaV3Backbone(bucket_size=8, **bert), preprocessor=None),
        "ALBERT": lambda: m.AlbertMaskedLM(m.AlbertBackbone(embedding_dim=8, **bert), preprocessor=None),
    }


def _measure(model, proto) -> tuple[float, float]:
    import numpy as np
    import onnxruntime as ort

    from tiedonnx.converter.samples import Case, make_case_inputs, sample_plan
    from tiedonnx.converter.signature import input_signature

    signature = input_signature(model)
    plan = sample_plan(model, signature)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    diffs, refs, agree = [], [], []
    for length in (7, 33):
        feed = make_case_inputs(signature, Case(3, length), plan.vocab, positions=plan.positions, seed=5)
        got = session.run(None, feed)[0]
        want = np.asarray(model(signature.pack(feed), training=False))
        keep = feed["padding_mask"].astype(bool) if got.shape[1] == length and "padding_mask" in feed \
            else np.ones(got.shape[:2], bool)
        diffs.append((got - want)[keep].ravel())
        refs.append(want[keep].ravel())
        agree.append((got.argmax(-1) == want.argmax(-1))[keep].ravel())
    diff, ref = np.concatenate(diffs), np.concatenate(refs)
    return float(np.sqrt((diff**2).mean() / (ref**2).mean())), float(np.concatenate(agree).mean())


def main() -> None:
    import keras
    import onnx

    from tiedonnx.converter.export import export
    from tiedonnx.runtime.graph.quantize import to_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-size", type=int, default=32)
    args = parser.parse_args()
    print(f"int4 block {args.block_size}: relative logits error (rms) and next-token agreement, seeds 0/1/2")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in _families().items():
            errors, agreements = [], []
            for seed in (0, 1, 2):
                keras.utils.set_random_seed(seed)
                model = build()
                path = Path(tmp) / "m.onnx"
                export(model, path, verify=False, force=True)
                q = to_precision(onnx.load(path), "int4", block_size=args.block_size)
                error, agreement = _measure(model, q)
                errors.append(error)
                agreements.append(agreement)
            print(f"{name:10} rel. error {' '.join(f'{e:.3f}' for e in errors)} (mean {sum(errors) / 3:.3f}); "
                  f"agreement {' '.join(f'{a:.2f}' for a in agreements)} (mean {sum(agreements) / 3:.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
