"""KerasHub task models beyond tests/test_keras_hub.py: every masked LM the installed keras-hub builds,
more causal LM families, and encoder-decoder (Seq2SeqLM) models.

Each model is built from its constructor with a tiny configuration (2 layers,
hidden 16, vocabulary 101) and seeded random weights: nothing is downloaded.
A masked LM takes ``mask_positions``, integer positions into the sequence: the
default export must draw them below the sequence length (it once fed a padding
mask there, and onnxruntime's gather refused index 1 of a 1-token sequence).
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install 'keras-hub>=0.32')")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiedonnx.converter.errors import ConversionError  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.converter.parity import verify  # noqa: E402
from tiedonnx.converter.samples import cases, make_case_inputs, sample_plan  # noqa: E402
from tiedonnx.converter.signature import input_signature  # noqa: E402
from tiedonnx.runtime.graph import find_duplicates, read_ties  # noqa: E402
from tiedonnx.runtime.graph.duplicates import initializer_arrays  # noqa: E402
from tiedonnx.runtime.graph.inspect import inspect_model  # noqa: E402
from tiedonnx.runtime.graph.int4_blocks import find_4bit_copies  # noqa: E402
from tiedonnx.runtime.graph.quantize import to_precision  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

VOCAB, HIDDEN = 101, 16


def _embedding_ties(proto) -> list:
    """Ties recorded with the token embedding's Keras variable (``.../token_embedding/embeddings``)."""
    return [t for t in read_ties(proto) if t.keras and t.keras["variable"].endswith("token_embedding/embeddings")]


def _masked_lm(kind: str):
    """A tiny MaskedLM (preprocessor=None: it takes token ids, masks and mask_positions)."""
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    common = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=HIDDEN, intermediate_dim=32)
    bert_like = dict(num_heads=2, max_sequence_length=64, **common)
    builders = {
        "bert": lambda: m.BertMaskedLM(m.BertBackbone(**bert_like), preprocessor=None),
        "distil_bert": lambda: m.DistilBertMaskedLM(m.DistilBertBackbone(**bert_like), preprocessor=None),
        "roberta": lambda: m.RobertaMaskedLM(m.RobertaBackbone(**bert_like), preprocessor=None),
        "xlm_roberta": lambda: m.XLMRobertaMaskedLM(m.XLMRobertaBackbone(**bert_like), preprocessor=None),
        "albert": lambda: m.AlbertMaskedLM(m.AlbertBackbone(embedding_dim=8, **bert_like), preprocessor=None),
        "deberta_v3": lambda: m.DebertaV3MaskedLM(m.DebertaV3Backbone(bucket_size=8, **bert_like),
                                                  preprocessor=None),
        "roformer_v2": lambda: m.RoformerV2MaskedLM(m.RoformerV2Backbone(num_heads=2, head_size=8, **common),
                                                    preprocessor=None),
        "f_net": lambda: m.FNetMaskedLM(m.FNetBackbone(max_sequence_length=64, **common), preprocessor=None),
    }
    return builders[kind]()


EXPORTED = ["bert", "distil_bert", "roberta", "xlm_roberta", "albert", "deberta_v3", "roformer_v2"]


def _generative(kind: str):
    """A tiny CausalLM or Seq2SeqLM with a tied token embedding (or, for mistral/phi3, untied)."""
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    base = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=HIDDEN, intermediate_dim=32)
    gqa = dict(num_query_heads=2, num_key_value_heads=1, **base)
    side = dict(hidden_dim=HIDDEN, intermediate_dim=32, num_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, layer_types=["full_attention"])
    builders = {
        "gpt_neox": lambda: m.GPTNeoXCausalLM(m.GPTNeoXBackbone(num_heads=2, max_sequence_length=64, **base),
                                              preprocessor=None),
        "opt": lambda: m.OPTCausalLM(m.OPTBackbone(num_heads=2, max_sequence_length=64, **base),
                                     preprocessor=None),
        "bloom": lambda: m.BloomCausalLM(m.BloomBackbone(num_heads=2, **base), preprocessor=None),
        "falcon": lambda: m.FalconCausalLM(m.FalconBackbone(num_attention_heads=2, **base), preprocessor=None),
        "qwen3": lambda: m.Qwen3CausalLM(m.Qwen3Backbone(head_dim=8, **gqa), preprocessor=None),
        "bart": lambda: m.BartSeq2SeqLM(m.BartBackbone(num_heads=2, max_sequence_length=64, **base),
                                        preprocessor=None),
        "t5gemma": lambda: m.T5GemmaSeq2SeqLM(m.T5GemmaBackbone(
            vocabulary_size=VOCAB, tie_word_embeddings=True, **{f"encoder_{k}": v for k, v in side.items()},
            **{f"decoder_{k}": v for k, v in side.items()}), preprocessor=None),
        "mistral": lambda: m.MistralCausalLM(m.MistralBackbone(**gqa), preprocessor=None),
        "phi3": lambda: m.Phi3CausalLM(m.Phi3Backbone(max_sequence_length=64, **gqa), preprocessor=None),
    }
    return builders[kind]()


TIED_GENERATIVE = ["gpt_neox", "opt", "bloom", "falcon", "qwen3", "bart", "t5gemma"]


@pytest.fixture(scope="module")
def bert():
    return _masked_lm("bert")


def test_mask_positions_are_positions_not_a_padding_mask(bert):
    signature = input_signature(bert)
    plan = sample_plan(bert, signature)
    assert plan.positions == {"mask_positions": None}  # indexes the open sequence axis
    # token_ids and segment_ids index the token and segment tables; padding_mask indexes nothing.
    assert plan.vocab == {"token_ids": VOCAB, "segment_ids": 2}
    for case in cases(signature, bert, (1, 3, 64)):
        feed = make_case_inputs(signature, case, plan.vocab, positions=plan.positions)
        assert 0 <= feed["mask_positions"].min() and feed["mask_positions"].max() < case.length
        if case.length > 1 and case.batch > 1:  # not a 0/1 mask: positions past 1 are used
            assert feed["mask_positions"].max() > 1
        mask = feed["padding_mask"]
        assert mask[:, 0].all() and (np.diff(mask, axis=1) <= 0).all(), "right padding"
        assert feed["token_ids"].max() < VOCAB and feed["segment_ids"].max() < 2


def test_a_position_input_is_found_by_use_whatever_its_name():
    """An input named like a mask that indexes the sequence, and one named like ids that does too."""
    hidden = keras.Input((None, 4), name="hidden")
    mask_like = keras.Input((None,), dtype="int32", name="attention_mask")
    ids_like = keras.Input((None,), dtype="int32", name="token_ids")
    picked = keras.ops.take_along_axis(hidden, keras.ops.expand_dims(mask_like, -1), axis=1)
    more = keras.ops.take_along_axis(hidden, keras.ops.expand_dims(ids_like, -1), axis=1)
    model = keras.Model([hidden, mask_like, ids_like], keras.ops.concatenate([picked, more], axis=1))
    plan = sample_plan(model, input_signature(model))
    assert plan.positions == {"attention_mask": None, "token_ids": None} and plan.vocab == {}


def _check_one_tie_at_every_precision(model, path):
    """Default verified fp32 export, then fp16/int8/int4: one stored, named token-embedding tie each."""
    report = export(model, path)  # default verification: batch 1/3/64 x length 1/7/33
    assert report.parity.ok and report.parity.sequence_lengths == (1, 7, 33)
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == ["logits"]  # not the layer's name (mlm_head, token_embedding)
    # inspect names every tie (DeBERTaV3's query/key EinsumDense kernels are stored reshaped to 2-D).
    assert all(t.keras and t.keras.get("variable") for t in read_ties(proto)), read_ties(proto)
    embedding = _embedding_ties(proto)
    assert len(embedding) == 1 and [u.relation for u in embedding[0].uses] == ["transpose"]
    for precision in ("fp16", "int8", "int4"):
        q = to_precision(proto, precision)
        assert find_duplicates(initializer_arrays(q.graph)) == [] and find_4bit_copies(q.graph) == []
        info = inspect_model(q)
        assert info.ties_ok and not info.untied_duplicates, precision
        assert len(_embedding_ties(q)) == 1, precision
        # The precision's own bound (parity.TOLERANCES), on the default cases.
        assert verify(model, q, precision=precision).ok


@pytest.mark.slow
@pytest.mark.parametrize("kind", EXPORTED)
def test_masked_lm_exports_by_default_and_quantizes_with_one_tie(kind, tmp_path):
    _check_one_tie_at_every_precision(_masked_lm(kind), tmp_path / "mlm.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("kind", TIED_GENERATIVE)
def test_causal_and_seq2seq_lm_export_and_quantize_with_one_tie(kind, tmp_path):
    """BART's encoder and decoder look rows up in the one table: int4 rewrites both lookups."""
    _check_one_tie_at_every_precision(_generative(kind), tmp_path / "lm.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mistral", "phi3"])
def test_untied_lm_claims_no_tie(kind, tmp_path):
    report = export(_generative(kind), tmp_path / "lm.onnx")
    proto = onnx.load(tmp_path / "lm.onnx")
    assert report.ties == [] and read_ties(proto) == [] and not inspect_model(proto).untied_duplicates
    assert not inspect_model(to_precision(proto, "int4")).untied_duplicates


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["electra", "t5"])
def test_lookup_only_embedding_is_not_a_tie(kind, tmp_path):
    """A backbone whose ReversibleEmbedding(tie_weights=True) is only looked up (ELECTRA), or looked up
    by an encoder and a decoder (T5), stores one table and claims no tie."""
    keras.utils.set_random_seed(0)
    m = keras_hub.models
    if kind == "electra":
        model = m.ElectraBackbone(vocab_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN, embedding_dim=HIDDEN,
                                  intermediate_dim=32, max_sequence_length=64)
    else:
        model = m.T5Backbone(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=HIDDEN,
                             intermediate_dim=32, key_value_dim=8)
    report = export(model, tmp_path / "b.onnx")
    proto = onnx.load(tmp_path / "b.onnx")
    assert report.ties == [] and read_ties(proto) == []
    tables = [i for i in proto.graph.initializer if list(i.dims) == [VOCAB, HIDDEN]]
    assert len(tables) == 1 and inspect_model(proto).untied_duplicates == []


def test_fnet_is_refused_naming_the_fft_ops(tmp_path):
    """tf2onnx 1.17 has no FFT2D/Complex mapping: one clear error, no file."""
    with pytest.raises(ConversionError, match="FFT2D"):
        export(_masked_lm("f_net"), tmp_path / "fnet.onnx")
    assert not (tmp_path / "fnet.onnx").exists()
