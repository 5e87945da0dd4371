"""A KerasHub causal LM's tokenizer as a Hugging Face ``tokenizer.json``, read without TensorFlow.

KerasHub's byte-pair tokenizers (GPT-2, OPT, Bloom, GPT-NeoX, Falcon, Qwen,
SmolLM3, ...) hold a vocabulary and a merge list and split text with GPT-2's
byte-level pattern; Hugging Face ``tokenizers`` (a Rust library with a
Python wheel and a JS port) reads the same two tables as a ``BPE`` model with
the ``ByteLevel`` pre-tokenizer and decoder, so the runtime encodes and
decodes without TensorFlow and without a hand-written BPE. Special tokens
(``<|endoftext|>``) are added as special tokens, so they are never split.

SentencePiece tokenizers (Llama, Gemma, Mistral, Phi-3: KerasHub's
``SentencePieceTokenizer`` and its subclasses) are rebuilt from their model
proto by :mod:`.lm_tokenizer_spm` (BPE and Unigram, with or without byte
fallback). Any other tokenizer, or a SentencePiece model of another kind, is
not converted: the folder then generates from token ids, and export says so
in one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .lm_tokenizer_spm import NotConvertible, spm_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["load_preset", "special_token_ids", "tokenizer_json", "write_tokenizer"]


def load_preset(path: Path):
    """A ``CausalLM`` from a KerasHub preset directory (``save_to_preset``), tokenizer included, offline.

    Raises:
        UsageError: the directory is not a KerasHub causal-LM preset, or keras-hub is missing.
    """
    from tiedonnx.runtime.errors import ModelFileError, UsageError

    if not (path / "config.json").is_file():
        raise ModelFileError(f"{str(path)!r} is a folder but not a KerasHub preset (no config.json). Pass a .keras "
                             "file, or a folder written by `CausalLM.save_to_preset`.")
    from tiedonnx.runtime.extras import KERAS_HUB

    keras_hub = KERAS_HUB.load("Loading a KerasHub preset")
    try:
        return keras_hub.models.CausalLM.from_preset(str(path))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise UsageError(f"Could not load the KerasHub preset {str(path)!r} as a CausalLM: {exc}".split("\n")[0]
                         ) from None


def _tokenizer(lm):
    preprocessor = getattr(lm, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)


def special_token_ids(tokenizer) -> dict:
    """``{"bos", "eos", "pad"}`` ids a KerasHub tokenizer declares (missing ones are left out)."""
    found = {}
    for key, attr in (("bos", "start_token_id"), ("pad", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            found[key] = value
    end = getattr(tokenizer, "end_token_id", None)
    if isinstance(end, int):
        found["eos"] = [end]
    return found


def tokenizer_json(tokenizer) -> str:
    """The ``tokenizer.json`` text for a KerasHub byte-pair or SentencePiece tokenizer.

    Raises:
        NotConvertible: another kind of tokenizer (the message says why, in one line).
    """
    from tiedonnx.runtime.extras import TOKENIZERS

    vocabulary = getattr(tokenizer, "vocabulary", None)
    merges = getattr(tokenizer, "merges", None)
    proto = getattr(tokenizer, "proto", None)
    if not isinstance(proto, bytes) and (not isinstance(vocabulary, dict) or merges is None):
        raise NotConvertible("it is neither a byte-pair nor a SentencePiece tokenizer")
    tokenizers = TOKENIZERS.load("Writing the tokenizer of a generation folder")
    if isinstance(proto, bytes):
        if getattr(tokenizer, "add_bos", False) or getattr(tokenizer, "add_eos", False):
            raise NotConvertible("it adds start/end tokens itself (add_bos/add_eos); the preprocessor adds them")
        return spm_tokenizer(proto, tokenizers).to_str(pretty=False)
    AddedToken, Tokenizer = tokenizers.AddedToken, tokenizers.Tokenizer
    decoders, models, pre_tokenizers = tokenizers.decoders, tokenizers.models, tokenizers.pre_tokenizers

    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    hf = Tokenizer(models.BPE(vocab={str(k): int(v) for k, v in vocabulary.items()}, merges=pairs))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    specials = [t for t in (getattr(tokenizer, "special_tokens", None) or []) if t in vocabulary]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(specials)])
    return hf.to_str(pretty=False)


def write_tokenizer(lm, folder: Path) -> dict:
    """Write ``folder/tokenizer.json`` when possible; return the special ids and whether it was written."""
    tokenizer = _tokenizer(lm)
    if tokenizer is None:
        logger.warning("the model has no preprocessor: no tokenizer in the folder; it generates from token ids "
                       "(export a model with its preprocessor, or a KerasHub preset folder, to include one)")
        return {}
    special = special_token_ids(tokenizer)
    # KerasHub's preprocessors put the start token before every prompt (add_start_token=True).
    special["add_bos"] = bool(getattr(lm.preprocessor, "add_start_token", False)) and "bos" in special
    try:
        text = tokenizer_json(tokenizer)
    except NotConvertible as exc:
        logger.warning("%s is not converted (%s): no tokenizer.json in the folder; it generates from token ids",
                       type(tokenizer).__name__, exc)
        return special
    (folder / "tokenizer.json").write_text(text)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30}
    for key, attr in (("bos_token", "start_token"), ("eos_token", "end_token"), ("pad_token", "pad_token")):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str):
            config[key] = value
    import json

    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {**special, "tokenizer": True}
