"""generate() on a hand-built generation folder: the loop and the cache, with no TensorFlow at all."""

from __future__ import annotations

import numpy as np
import pytest

from tiedonnx.runtime.generate import load_lm
from tests.graphs import tiny_decoder_folder


def _reference_greedy(emb: np.ndarray, prompt: list[int], new: int) -> list[int]:
    """The hand-built decoder's maths: the next token is argmax(E[last] @ E^T); no attention."""
    last, out = prompt[-1], []
    for _ in range(new):
        last = int(np.argmax(emb[last] @ emb.T))
        out.append(last)
    return out


@pytest.mark.parametrize("memory", ["fast", "lean", "auto"])
def test_greedy_follows_the_decoder_and_the_cache_grows(tmp_path, memory):
    emb = tiny_decoder_folder(tmp_path / "gen")
    lm = load_lm(tmp_path / "gen", providers="cpu", memory=memory)
    assert lm.model.memory == ("lean" if memory == "auto" else memory)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    out = lm.generate(prompts, max_new_tokens=6, sampler="greedy")
    assert out.tokens == [_reference_greedy(emb, p, 6) for p in prompts]
    assert out.prompt_tokens == [3, 1, 5] and out.finish_reasons == ["length"] * 3


def test_the_cache_holds_every_position(tmp_path):
    emb = tiny_decoder_folder(tmp_path / "gen")
    lm = load_lm(tmp_path / "gen", providers="cpu")
    from tiedonnx.runtime.generate import _Run
    from tiedonnx.runtime.sampling import Mulberry32, SamplerSettings

    run = _Run(lm, [[1, 2]], 3, SamplerSettings(), Mulberry32(0), set(), None, decode=False)
    _, past = run._step(np.array([[1, 2]]), run._empty_past(), 2)
    _, past = run._step(np.array([[7]]), past, 3)
    key = past[0].numpy()  # [batch, heads, 3 positions, dim]: the embeddings of 1, 2, 7
    assert key.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(key[0].transpose(1, 0, 2).reshape(3, 6), emb[[1, 2, 7]])


def test_prompt_longer_than_the_maximum_is_refused(tmp_path):
    from tiedonnx.runtime.errors import InputError

    tiny_decoder_folder(tmp_path / "gen", max_length=16)
    lm = load_lm(tmp_path / "gen", providers="cpu")
    with pytest.raises(InputError, match="exceeds the model's maximum length 16; shorten the prompt to at most 15"):
        lm.generate([[1] * 16], max_new_tokens=1)


def _byte_level_tokenizer(text: str):
    """A GPT-2-style byte-level BPE trained on ``text``: every byte is a token, few merges."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def _stream(tmp_path, tok, ids):
    """Emit ``ids`` as one row's generated tokens; the callback's pieces, in order."""
    from tiedonnx.runtime.generate import _Run
    from tiedonnx.runtime.sampling import Mulberry32, SamplerSettings

    tiny_decoder_folder(tmp_path / "gen", vocab=300)
    lm = load_lm(tmp_path / "gen", providers="cpu")
    lm._tokenizer = tok
    pieces = []
    run = _Run(lm, [[1]], len(ids), SamplerSettings(), Mulberry32(0), set(),
               lambda row, token, piece: pieces.append(piece), decode=True)
    for position, token in enumerate(ids, start=1):
        run._emit(0, token, position)
    return run, pieces


def test_streamed_pieces_add_up_to_the_text_and_wait_for_cut_characters(tmp_path):
    """The callback's pieces come from one incremental decoder per row: their concatenation is
    the decoded text, and a character whose bytes span two tokens appears once both arrived."""
    tok = _byte_level_tokenizer("hello world")
    text = "h\u00e9llo w\u00f6rld \u2603"  # é and ö are 2 bytes, the snowman 3: none is a token of its own
    ids = tok.encode(text).ids
    assert len(ids) > len(text)  # some characters are cut between tokens
    run, pieces = _stream(tmp_path, tok, ids)
    assert "".join(pieces) == text == tok.decode(ids)
    assert "" in pieces  # a token that ends mid-character shows nothing yet
    assert all("\ufffd" not in p for p in pieces)


def test_a_character_cut_by_the_last_token_is_streamed_when_the_row_ends(tmp_path):
    """A row that ends between a character's bytes: the stream never completes it, so the
    last callback carries what the final decode shows (the replacement character), and the
    pieces still add up to the row's text."""
    tok = _byte_level_tokenizer("ab")
    ids = tok.encode("a\u2603").ids[:-1]  # "a", then the snowman's first two bytes of three
    run, pieces = _stream(tmp_path, tok, ids)
    assert run.done[0] == "length"
    assert "".join(pieces) == tok.decode(ids) and pieces[0] == "a" and pieces[-1] != ""


def _edit_config(folder, **fields):
    import json

    path = folder / "tiedonnx.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_a_shared_buffer_folder_needs_the_mask_input(tmp_path):
    """past_present_share_buffer: the lengths come from attention_mask; a decoder without it is refused."""
    from tiedonnx.runtime.errors import ModelFileError

    tiny_decoder_folder(tmp_path / "gen")
    _edit_config(tmp_path / "gen", past_present_share_buffer=True)
    with pytest.raises(ModelFileError, match=r"'onnx/model.onnx' is not the decoder tiedonnx.json describes: .*"
                                             r"expected input_ids, attention_mask and past_key_values"):
        load_lm(tmp_path / "gen", providers="cpu")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_past_present_share_buffer_must_be_a_boolean(tmp_path, value):
    from tiedonnx.runtime.errors import ModelFileError

    tiny_decoder_folder(tmp_path / "gen")
    _edit_config(tmp_path / "gen", past_present_share_buffer=value)
    with pytest.raises(ModelFileError, match=r"field 'past_present_share_buffer' must be true or false. "
                                             rf"Received: {value!r}"):
        load_lm(tmp_path / "gen", providers="cpu")
