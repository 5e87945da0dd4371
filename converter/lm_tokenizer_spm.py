"""A KerasHub SentencePiece tokenizer (Llama, Gemma, Mistral, Phi-3) as a Hugging Face ``tokenizers`` Tokenizer.

KerasHub's ``SentencePieceTokenizer`` holds the serialized SentencePiece model
proto; this reads it with the ``sentencepiece_model_pb2`` module that ships in
the ``sentencepiece`` wheel (a keras-hub dependency) and rebuilds the same
tokenizer from ``tokenizers`` parts, as transformers' ``convert_slow_tokenizer``
does for Llama and Gemma, from the proto's own settings rather than per family:

- the model: ``BPE`` (pieces in id order; a merge for every split of a piece
  into two pieces, ranked by the merged piece's id, which is SentencePiece's
  score order) or ``Unigram`` (the pieces' scores), with byte fallback
  (``<0x41>`` pieces) when the proto was trained with it, else the unknown piece;
- the normalizer: the proto's precompiled character map (e.g. ``nmt_nfkc``;
  none for Llama's and Gemma's ``identity``), extra whitespace removed when
  ``remove_extra_whitespaces``, the "▁" dummy prefix when ``add_dummy_prefix``
  (Llama: yes, Gemma: no), then spaces written as "▁";
- the decoder: "▁" back to spaces, byte pieces fused back into characters, the
  dummy prefix's space stripped;
- control pieces (``<s>``, ``</s>``, ``<bos>``, ...) are never matched in text
  (KerasHub encodes a typed ``<s>`` as ``<``, ``s``, ``>``; transformers would give
  the start token) and decode to nothing; user-defined pieces are added tokens.

Anything else (word or character models, whitespace as a suffix, a proto
with its own normalization rules) is refused with the reason, and the
folder then generates from token ids.
"""

from __future__ import annotations

import re

__all__ = ["NotConvertible", "spm_tokenizer"]

SPACE = "\u2581"  # "▁", SentencePiece's escaped space
UNIGRAM, BPE = 1, 2  # TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4  # ModelProto.SentencePiece.Type


class NotConvertible(Exception):
    """The tokenizer cannot be written as ``tokenizer.json``; the message says why (one line)."""


def _read_proto(proto: bytes):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    try:
        model.ParseFromString(bytes(proto))
    except Exception as exc:  # protobuf's DecodeError is not importable without protobuf internals
        raise NotConvertible(f"its SentencePiece proto does not parse ({exc})") from None
    return model


def _check(model) -> None:
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    if trainer.model_type not in (UNIGRAM, BPE):
        kind = {3: "word", 4: "char"}.get(trainer.model_type, str(trainer.model_type))
        raise NotConvertible(f"its SentencePiece model type is {kind!r} (only BPE and Unigram are converted)")
    if trainer.treat_whitespace_as_suffix:
        raise NotConvertible("its SentencePiece model treats whitespace as a suffix (not converted)")
    if not normalizer.escape_whitespaces:
        raise NotConvertible("its SentencePiece model does not escape whitespace as '\u2581' (not converted)")
    if normalizer.normalization_rule_tsv or model.denormalizer_spec.precompiled_charsmap:
        raise NotConvertible("its SentencePiece model has custom (de)normalization rules (not converted)")


def _model(model, tokenizers):
    pieces = [(p.piece, p.score) for p in model.pieces]
    trainer = model.trainer_spec
    if trainer.model_type == UNIGRAM:
        return tokenizers.models.Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    normal = [p.piece for p in model.pieces if p.type == NORMAL]
    return tokenizers.models.BPE(vocab, _merges(vocab, normal), unk_token=pieces[trainer.unk_id][0],
                                 fuse_unk=True, byte_fallback=trainer.byte_fallback)


def _merges(vocab: dict[str, int], normal: list[str]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two pieces, in the order SentencePiece's BPE applies them.

    SentencePiece merges the adjacent pair whose concatenation has the best
    score (the lowest id); ties between splits of one piece go by the left part's id.
    Control, unknown and byte pieces are never merged into, so ``<s>`` typed in
    a prompt stays ``<``, ``s``, ``>`` as in SentencePiece.
    """
    found = []
    for piece in normal:
        rank = vocab[piece]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((rank, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(found)]


def _normalizer(model, tokenizers):
    normalizers, spec = tokenizers.normalizers, model.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True),
                  normalizers.Replace(tokenizers.Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def _decoder(model, tokenizers):
    """Pieces back to text; control pieces decode to nothing and the unknown piece to its surface, as in
    SentencePiece (each ``Replace`` applies to one token at a time)."""
    decoders, Regex = tokenizers.decoders, tokenizers.Regex
    steps = [decoders.Replace(SPACE, " ")]
    for p in model.pieces:
        if p.type in (CONTROL, UNKNOWN):
            surface = model.trainer_spec.unk_surface if p.type == UNKNOWN else ""
            steps.append(decoders.Replace(Regex(f"^{re.escape(p.piece)}$"), surface))
    steps += [decoders.ByteFallback(), decoders.Fuse()]
    if model.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    return decoders.Sequence(steps)


def spm_tokenizer(proto: bytes, tokenizers):
    """A ``tokenizers.Tokenizer`` equal to SentencePiece's encoding of ``proto``.

    Args:
        proto: the serialized SentencePiece ``ModelProto`` (a KerasHub tokenizer's ``proto``).
        tokenizers: the loaded ``tokenizers`` module.

    Raises:
        NotConvertible: a kind of SentencePiece model this does not convert (the message says which).
    """
    model = _read_proto(proto)
    _check(model)
    hf = tokenizers.Tokenizer(_model(model, tokenizers))
    hf.normalizer = _normalizer(model, tokenizers)
    hf.decoder = _decoder(model, tokenizers)
    users = [p.piece for p in model.pieces if p.type == USER_DEFINED]
    hf.add_tokens([tokenizers.AddedToken(piece, special=False, normalized=False) for piece in users])
    return hf
