"""SentencePiece tokenizers (KerasHub's Llama and Gemma tokenizers) written as a Hugging Face tokenizer.json.

Each SentencePiece model is trained here, offline, on generated text (a few
seconds); KerasHub's own tokenizer (TensorFlow Text's SentencePiece op) gives
the expected ids and text.
"""

from __future__ import annotations

import io
import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install -e '.[hub]')")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install -e '.[text]')")
spm = pytest.importorskip("sentencepiece")

from tiedonnx.converter.generation import export_generation  # noqa: E402
from tiedonnx.converter.lm_tokenizer import NotConvertible, tokenizer_json, write_tokenizer  # noqa: E402
from tiedonnx.runtime.generate import load_lm  # noqa: E402

from . import models  # noqa: E402
from .test_generate import _keras_hub_greedy  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

WORDS = ("the tie breaks in eager mode a model weight shared once encoder decoder token text export graph onnx "
         "keras layer value run naïve café über 日本 語 12 345 2024 x1 hello, world. Ünïcödé").split()
LLAMA = dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity", split_digits=True,
             remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, vocab_size=400)
GEMMA = dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity", split_by_whitespace=False,
             remove_extra_whitespaces=False, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
             pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", vocab_size=400)
# Unigram with SentencePiece's defaults (nmt_nfkc normalization, extra whitespace removed, unknown piece).
UNIGRAM = dict(model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, vocab_size=70)
UNIGRAM_BYTES = dict(UNIGRAM, byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                     vocab_size=330)
KINDS = {"llama_bpe": (LLAMA, "LlamaTokenizer"), "gemma_bpe": (GEMMA, "GemmaTokenizer"),
         "unigram": (UNIGRAM, "LlamaTokenizer"), "unigram_bytes": (UNIGRAM_BYTES, "LlamaTokenizer")}
TEXTS = ["Hello world", "the tie breaks in eager mode", "encoderdecoder tokentext", "  two leading spaces",
         "trailing spaces   ", "a  b   c    d", "tab\there", "new\nline\n\nand two", " \t \n ", "", " ", "x",
         "12345 3.14 2024-01-02", "x1x2x3", "naïve café über", "Ünïcödé", "ÅÉÎ ŒØ ß", "日本語のテキスト",
         "emoji 🤖 and 👍🏽!", "zzzz qqq", "hello, world. hello,world.", "ｆｕｌｌｗｉｄｔｈ", "e\u0301 composed é",
         "don't won't", "(brackets) [and] {braces}", "\u2581 already a meta space", "mixed 日本 and tie 12",
         "a" * 40, "x\u200bzero width", "ends with a space "]
# SentencePiece never matches control pieces in text; the BPE conversion does the same, the Unigram one
# matches them (its lattice holds every piece), so these are checked on BPE models only.
CONTROL_TEXTS = ["<s>", "</s> after", "<bos>x<eos>", "<pad>", "<unk> typed"]


def _lines(words=WORDS, count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def _proto(options: dict, words=WORDS) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines(words)), model_writer=out, minloglevel=2,
                                   **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def trained():
    """kind -> (KerasHub tokenizer, converted tokenizers.Tokenizer), trained once per kind on first use."""
    made = {}

    def get(kind: str):
        if kind not in made:
            options, cls = KINDS[kind]
            keras_tokenizer = getattr(keras_hub.models, cls)(proto=_proto(options))
            made[kind] = keras_tokenizer, tokenizers.Tokenizer.from_str(tokenizer_json(keras_tokenizer))
        return made[kind]

    return get


def _keras_text(tokenizer, ids: list[int]) -> str:
    text = tokenizer.detokenize(np.asarray(ids, "int32"))
    return text.numpy().decode() if hasattr(text, "numpy") else str(text)


@pytest.mark.parametrize("kind", list(KINDS))
def test_encoding_equals_keras_hub_and_decoding_round_trips(trained, kind):
    keras_tokenizer, hf = trained(kind)
    texts = TEXTS + (CONTROL_TEXTS if kind.endswith("_bpe") else [])
    fell_back = 0
    for text in texts:
        expected = np.asarray(keras_tokenizer(text)).tolist()
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == expected, text
        decoded = hf.decode(ids, skip_special_tokens=True)
        assert decoded == _keras_text(keras_tokenizer, expected), text
        if kind != "unigram":  # identity normalization, byte fallback: the text comes back whole (a typed
            assert decoded == text.replace("\u2581", " ")  # "▁" is SentencePiece's space: it comes back as one)
        fell_back += any(hf.id_to_token(i).startswith("<0x") for i in ids)
    if "bytes" in kind or kind.endswith("_bpe"):
        assert fell_back >= 3  # emoji, kana, full-width letters are outside the trained vocabulary


def test_typed_control_pieces_stay_text_even_when_one_merge_would_make_them():
    # Trained on "a<s", "b</s", "c<unk", "d>", ..., the vocabulary holds "<s", "</s", "<unk" (one merge from a
    # control or unknown piece); SentencePiece never merges into those, nor must the conversion.
    words = [f"{c}{w}" for c in "abcdefgh" for w in ("<s", "</s", "<unk", ">")]
    options = dict(LLAMA, vocab_size=284, split_by_unicode_script=False)  # else "<" and "s" never merge
    keras_tokenizer = keras_hub.models.LlamaTokenizer(proto=_proto(options, words=words))
    hf = tokenizers.Tokenizer.from_str(tokenizer_json(keras_tokenizer))
    assert {"<s", "</s", "<unk"} <= set(hf.get_vocab())
    for text in ("a<s>", "b</s>", "c<unk>", "a<s> b</s>x"):
        assert hf.encode(text, add_special_tokens=False).ids == np.asarray(keras_tokenizer(text)).tolist(), text


def test_control_pieces_decode_to_nothing(trained):
    keras_tokenizer, hf = trained("llama_bpe")
    ids = np.asarray(keras_tokenizer("the tie")).tolist()
    with_controls = [keras_tokenizer.start_token_id, *ids, keras_tokenizer.end_token_id]
    assert hf.decode(with_controls, skip_special_tokens=True) == "the tie"
    assert _keras_text(keras_tokenizer, with_controls) == "the tie"


def test_other_sentencepiece_kinds_are_refused_in_one_line(tmp_path, caplog):
    word = keras_hub.tokenizers.SentencePieceTokenizer(proto=_proto(dict(model_type="word", vocab_size=30)))
    with pytest.raises(NotConvertible, match="'word'"):
        tokenizer_json(word)
    lm = SimpleNamespace(preprocessor=SimpleNamespace(tokenizer=word, add_start_token=False))
    with caplog.at_level(logging.WARNING):
        assert "tokenizer" not in write_tokenizer(lm, tmp_path)
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "model type is 'word'" in caplog.records[0].getMessage()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama_tied", "gemma"])
def test_folder_generates_from_text_like_from_ids(tmp_path, trained, family):
    keras_tokenizer, _ = trained("gemma_bpe" if family == "gemma" else "llama_bpe")
    preprocessor_cls = (keras_hub.models.GemmaCausalLMPreprocessor if family == "gemma"
                        else keras_hub.models.LlamaCausalLMPreprocessor)
    preprocessor = preprocessor_cls(keras_tokenizer, sequence_length=64)
    keras_lm = models.causal_lm(family, vocabulary=keras_tokenizer.vocabulary_size(), preprocessor=preprocessor)
    assert export_generation(keras_lm, tmp_path / "lm").tokenizer == "tokenizer.json"
    config = json.loads((tmp_path / "lm" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == keras_tokenizer.start_token
    lm = load_lm(tmp_path / "lm")
    assert lm.config.add_bos_token and lm.config.bos_token_id == keras_tokenizer.start_token_id
    prompt = "the tie breaks 日本 🤖"
    ids = lm.encode(prompt)
    assert ids == np.asarray(preprocessor.generate_preprocess([prompt])["token_ids"])[0][:len(ids)].tolist()
    assert ids[0] == keras_tokenizer.start_token_id and ids.count(ids[0]) == 1
    from_text = lm.generate(prompt, max_new_tokens=4, sampler="greedy", stop_token_ids=[])
    from_ids = lm.generate(ids, max_new_tokens=4, sampler="greedy", stop_token_ids=[])
    assert from_text.tokens == from_ids.tokens and len(from_text.tokens[0]) == 4
    assert from_text.text[0] == lm.decode(from_ids.tokens[0])
    ids_only = type(keras_lm)(keras_lm.backbone, preprocessor=None)  # same weights, token ids in and out
    assert from_ids.tokens == _keras_hub_greedy(ids_only, [ids], 4)
    assert lm.decode(ids) == prompt
