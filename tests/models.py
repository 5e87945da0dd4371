"""Small reference models for tests: every kind of tie the converter must handle."""

from __future__ import annotations

import numpy as np

import keras
from tiedonnx.converter import Conv2DTransposeTied, DenseTied


def question_sequential():
    """The question's model, verbatim: Sequential without Input, built by a call."""
    encoded1 = keras.layers.Dense(2, activation="sigmoid")
    decoded1 = DenseTied(4, activation="sigmoid", tied_to=encoded1)
    model = keras.Sequential([encoded1, decoded1])
    model(np.zeros((1, 4), "float32"))
    return model


def dense_ae(features=64, hidden=16, activation="sigmoid", use_bias=True):
    inputs = keras.Input((features,), name="pixels")
    enc = keras.layers.Dense(hidden, activation=activation, name="enc", use_bias=use_bias,
                             bias_initializer="random_normal")
    dec = DenseTied(activation="sigmoid", tied_to=enc, name="dec", use_bias=use_bias,
                    bias_initializer="random_normal")
    return keras.Model(inputs, dec(enc(inputs)), name="dense_ae")


def stacked_ae(sizes=(48, 24, 12, 6)):
    inputs = keras.Input((sizes[0],), name="pixels")
    x, encoders = inputs, []
    for i, size in enumerate(sizes[1:]):
        enc = keras.layers.Dense(size, activation="relu", name=f"enc{i}", bias_initializer="random_normal")
        encoders.append(enc)
        x = enc(x)
    for i, enc in reversed(list(enumerate(encoders))):
        x = DenseTied(activation="sigmoid" if i == 0 else "relu", tied_to=enc, name=f"dec{i}",
                      bias_initializer="random_normal")(x)
    return keras.Model(inputs, x, name="stacked_ae")


def conv_ae():
    inputs = keras.Input((8, 8, 3), name="image")
    c1 = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1",
                             bias_initializer="random_normal")
    c2 = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c2",
                             bias_initializer="random_normal")
    x = c2(c1(inputs))
    x = Conv2DTransposeTied(tied_to=c2, activation="relu", name="d2")(x)
    x = Conv2DTransposeTied(tied_to=c1, activation="sigmoid", name="d1")(x)
    return keras.Model(inputs, x, name="conv_ae")


def text_model(vocab=50, dim=8, length=6):
    """Tied input/output embeddings (Keras 3's ReversibleEmbedding)."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    emb = keras.layers.ReversibleEmbedding(vocab, dim, tie_weights=True, name="emb")
    x = emb(tokens)
    x = keras.layers.Dense(dim, activation="gelu", name="mix")(x)
    logits = emb(x, reverse=True)
    return keras.Model(tokens, logits, name="text")


def mixed_model():
    """Tied and untied layers with Dropout and BatchNormalization between them."""
    inputs = keras.Input((20,), name="x")
    enc = keras.layers.Dense(10, activation="relu", name="enc", bias_initializer="random_normal")
    h = keras.layers.Dropout(0.3)(enc(inputs))
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(10, activation="tanh", name="untied")(h)
    out = DenseTied(activation="sigmoid", tied_to=enc, name="dec")(h)
    model = keras.Model(inputs, out, name="mixed")
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(size=10).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2, size=10).astype("float32"))
    return model


def untied_model():
    inputs = keras.Input((12,), name="x")
    x = keras.layers.Dense(6, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(12)(x), name="untied")


class SubclassedAE(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enc = keras.layers.Dense(5, activation="relu", name="enc")
        self.dec = DenseTied(10, activation="sigmoid", tied_to=self.enc, name="dec")

    def call(self, x):
        return self.dec(self.enc(x))


def subclassed():
    model = SubclassedAE(name="subclassed")
    model(np.zeros((1, 10), "float32"))
    return model


def activations_model(activation: str):
    inputs = keras.Input((12,), name="x")
    enc = keras.layers.Dense(6, activation=activation, name="enc")
    return keras.Model(inputs, DenseTied(activation=activation, tied_to=enc, name="dec")(enc(inputs)))


MODELS = {
    "question_sequential": question_sequential,
    "dense_ae": dense_ae,
    "dense_ae_no_bias": lambda: dense_ae(use_bias=False),
    "stacked_ae": stacked_ae,
    "conv_ae": conv_ae,
    "text_reversible_embedding": text_model,
    "mixed_dropout_batchnorm": mixed_model,
    "no_ties": untied_model,
    "subclassed": subclassed,
}


# Tiny KerasHub causal LMs (2 layers), built from their constructors with seeded random weights.
CAUSAL_LMS = ("gpt2", "qwen", "llama_tied", "gemma", "opt", "qwen3", "gpt_neox")


def causal_lm(kind: str, *, vocabulary: int = 97, hidden: int = 16, max_length: int = 128, seed: int = 0,
              preprocessor=None):
    """A tiny KerasHub ``CausalLM`` of family ``kind`` (its tied token embedding is the logits layer)."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    m = keras_hub.models
    common = dict(vocabulary_size=vocabulary, num_layers=2, hidden_dim=hidden, intermediate_dim=2 * hidden)
    gqa = dict(num_query_heads=2, num_key_value_heads=1)
    builders = {
        "gpt2": lambda: (m.GPT2CausalLM, m.GPT2Backbone(num_heads=2, max_sequence_length=max_length, **common)),
        "qwen": lambda: (m.QwenCausalLM, m.QwenBackbone(**gqa, **common)),
        "llama_tied": lambda: (m.LlamaCausalLM, m.LlamaBackbone(**gqa, tie_word_embeddings=True, **common)),
        "gemma": lambda: (m.GemmaCausalLM, m.GemmaBackbone(**gqa, head_dim=hidden // 2, **common)),
        "opt": lambda: (m.OPTCausalLM, m.OPTBackbone(num_heads=2, max_sequence_length=max_length, **common)),
        "qwen3": lambda: (m.Qwen3CausalLM, m.Qwen3Backbone(**gqa, head_dim=hidden // 2, **common)),
        "gpt_neox": lambda: (m.GPTNeoXCausalLM, m.GPTNeoXBackbone(num_heads=2, max_sequence_length=max_length,
                                                                   **common)),
    }
    task, backbone = builders[kind]()
    return task(backbone, preprocessor=preprocessor)


def tiny_bpe():
    """A byte-level BPE trained here on a few sentences, as KerasHub's GPT2Tokenizer."""
    import json

    import keras_hub
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers

    hf = Tokenizer(tmodels.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    text = ["The tie that breaks in eager mode.", "Tied weights are stored once, with the transpose as a graph op.",
            "Generation runs the prompt once; each new token is one step."] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(text, trainer)
    spec = json.loads(hf.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["merges"]]
    return keras_hub.models.GPT2Tokenizer(vocabulary=spec["vocab"], merges=merges)
