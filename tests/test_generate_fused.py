"""The fused generation decoder (converter/generation_fused.py) against KerasHub and the traced decoder.

Tiny GPT-2, Qwen and tied Llama models with head size 16 (onnxruntime's GroupQueryAttention
takes multiples of 16): 2 layers, hidden 32, 2 query heads (Qwen, Llama: 1 key/value head),
vocabulary 97; seeded random weights, norm scales and biases randomised so that a swapped or
dropped weight changes the logits.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install -e '.[hub]')")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from tiedonnx.converter.generation import export_generation  # noqa: E402
from tiedonnx.converter.generation_fused import fused_decoder  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.errors import UsageError  # noqa: E402
from tiedonnx.runtime.generate import load_lm  # noqa: E402
from tiedonnx.runtime.graph.inspect import inspect_file  # noqa: E402

from . import models  # noqa: E402
from .test_generate import (STEP_TOL, _keras_hub_greedy, _keras_steps, _onnx_steps, _prompts,  # noqa: E402
                            assert_transformers_js_generates_like_tiedonnx)

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")
KINDS = ("gpt2", "qwen", "llama_tied")
#: The fused normalization between blocks: GPT-2's LayerNorm, the others' RMS norm.
SKIP_NORM = {"gpt2": "SkipLayerNormalization", "qwen": "SkipSimplifiedLayerNormalization",
             "llama_tied": "SkipSimplifiedLayerNormalization"}


def _lm(kind: str):
    lm = models.causal_lm(kind, hidden=32)
    rng = np.random.default_rng(7)
    for v in lm.backbone.weights:  # scales around 1 and biases around 0, not KerasHub's ones and zeros
        if v.path.endswith(("scale", "gamma", "bias", "beta")):
            one = 1.0 if v.path.endswith(("scale", "gamma")) else 0.0
            v.assign(one + 0.3 * rng.standard_normal(v.shape).astype("float32"))
    return lm


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """(kind, precision, decoder) -> (model, folder, report), each exported once."""
    root, made, lms = tmp_path_factory.mktemp("fused"), {}, {}

    def get(kind: str, precision: str = "fp32", decoder: str = "auto"):
        key = (kind, precision, decoder)
        if key not in made:
            lms.setdefault(kind, _lm(kind))
            folder = root / "-".join(key)
            made[key] = (lms[kind], folder, export_generation(lms[kind], folder, precision=precision, decoder=decoder))
        return made[key]

    return get


def _op_types(folder) -> list[str]:
    config = json.loads((folder / "tiedonnx.json").read_text())
    return [n.op_type for n in onnx.load(str(folder / config["model_file"])).graph.node]


@pytest.mark.parametrize("kind", KINDS)
def test_fused_decoder_is_chosen_and_uses_onnxruntime_fused_ops(fused, kind):
    _, folder, report = fused(kind)
    assert report.decoder == "fused" and report.decoder_note is None
    ops = _op_types(folder)
    assert ops.count("GroupQueryAttention") == 2 and ops.count(SKIP_NORM[kind]) == 4
    # no repeated heads, no emulated static cache, no per-step Reshape of the past
    assert "Tile" not in ops and "Concat" not in ops and "Reshape" not in ops
    config = json.loads((folder / "tiedonnx.json").read_text())
    assert config["past_present_share_buffer"] is True
    _, traced, traced_report = fused(kind, decoder="traced")
    assert traced_report.decoder == "traced"
    assert len(ops) * 4 < len(_op_types(traced))  # 47 against 380 nodes on the 2-layer Qwen of bench_generate


@pytest.mark.parametrize("kind", KINDS)
def test_fused_greedy_tokens_equal_keras_hub_generate(fused, kind):
    lm, folder, _ = fused(kind)
    prompts = _prompts(20)  # one batch of 20 prompts of 1-23 tokens
    expected = _keras_hub_greedy(lm, prompts, 64)
    assert load_lm(folder).generate(prompts, max_new_tokens=64, sampler="greedy", stop_token_ids=[]).tokens == expected


@pytest.mark.parametrize("kind", KINDS)
def test_each_fused_step_matches_call_with_cache(fused, kind):
    lm, folder, report = fused(kind)
    assert report.parity_max_abs is not None and report.parity_max_abs <= STEP_TOL
    ids = np.random.default_rng(2).integers(0, 97, (2, 14)).astype("int64")
    expected = _keras_steps(lm, ids, prompt=6)
    for shared in (False, True):  # transformers.js's growing past, and the runtime's shared buffers
        actual = _onnx_steps(folder, ids, prompt=6, shared=shared)
        assert len(actual) == len(expected) == 9
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert a.shape == e.shape
            assert np.abs(a - e).max() <= STEP_TOL, f"step {i}, shared={shared}"


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_fused_quantized_folders_keep_one_tie_and_mostly_agree(fused, precision):
    _, fp32, _ = fused("qwen")
    lm, folder, report = fused("qwen", precision)
    assert report.decoder == "fused"
    config = json.loads((folder / "tiedonnx.json").read_text())
    info = inspect_file(str(folder / config["model_file"]))
    assert len(info.ties) == 1 and info.ties[0]["status"] == "ok" and not info.untied_duplicates
    if precision == "int4":  # generation folders take int8 activations in MatMulNBits (runtime/options.py)
        nbits = [n for n in onnx.load(str(folder / config["model_file"])).graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == 2 * 5 + 1 and all(  # per layer qkv, output, gate, up, down; the head
            {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("accuracy_level") == 4
            for n in nbits)
    vocab, hidden = lm.backbone.token_embedding.embeddings.shape
    assert sum(1 for i in info.initializers if sorted(i["shape"]) == sorted([vocab, hidden])) <= 1
    prompts = _prompts(8, seed=3)
    ref = load_lm(fp32).generate(prompts, max_new_tokens=1, sampler="greedy", stop_token_ids=[]).tokens
    got = load_lm(folder).generate(prompts, max_new_tokens=1, sampler="greedy", stop_token_ids=[]).tokens
    # Same floors as the traced folders' test (test_generate.py): a broken file is at chance (1/97).
    assert np.mean([a == b for a, b in zip(ref, got)]) >= {"fp16": 1.0, "int8": 0.75, "int4": 0.5}[precision]


def test_models_of_another_shape_are_traced_and_fused_refuses_them(tmp_path):
    opt = models.causal_lm("opt", hidden=32)
    proto, reason = fused_decoder(opt, (2, 2, 16), opset=17)
    assert proto is None and "OPTBackbone is not one of" in reason
    small_heads = models.causal_lm("qwen")  # hidden 16, 2 heads: head size 8
    assert "multiples of 16" in fused_decoder(small_heads, (2, 1, 8), opset=17)[1]
    report = export_generation(small_heads, tmp_path / "auto")
    assert report.decoder == "traced" and "multiples of 16" in report.decoder_note
    with pytest.raises(UsageError, match="decoder='fused' cannot write OPTCausalLM: OPTBackbone is not one of"):
        export_generation(opt, tmp_path / "fused", decoder="fused")
    with pytest.raises(UsageError, match="decoder must be one of auto, fused, traced. Received: decoder='fast'"):
        export_generation(opt, tmp_path / "bad", decoder="fast")
    assert sorted(os.listdir(tmp_path)) == ["auto"]  # nothing written for a refusal


def test_an_untied_llama_is_written_with_its_own_head(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.LlamaBackbone(vocabulary_size=97, num_layers=2, hidden_dim=32, intermediate_dim=64,
                                              num_query_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
    report = export_generation(lm, tmp_path / "untied")
    assert report.decoder == "fused" and report.parity_max_abs <= STEP_TOL
    prompts = _prompts(4, seed=9)
    assert load_lm(tmp_path / "untied").generate(prompts, max_new_tokens=16, sampler="greedy",
                                                 stop_token_ids=[]).tokens == _keras_hub_greedy(lm, prompts, 16)


def test_cli_decoder_flag(tmp_path, capsys):
    _lm("qwen").save(tmp_path / "lm.keras")
    base = ["export", str(tmp_path / "lm.keras"), "--task", "generate", "--import", "keras_hub"]
    assert main(base + ["-o", str(tmp_path / "traced"), "--decoder", "traced"]) == 0
    assert "graph: traced (tf2onnx through call_with_cache)" in capsys.readouterr().out
    assert main(base + ["-o", str(tmp_path / "fused")]) == 0
    assert "graph: fused (onnxruntime's fused ops)" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "lm.keras"), "-o", str(tmp_path / "x.onnx"), "--decoder", "fused",
                 "--import", "keras_hub"]) == 2
    assert "--decoder applies to --task generate only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("precision,dtype", [("fp32", "fp32"), ("int4", "q4")])
def test_transformers_js_generates_the_same_greedy_tokens_from_a_fused_gpt2_folder(fused, tmp_path, precision, dtype):
    """The fused ops keep Optimum's contract: transformers.js (onnxruntime-node) runs the folder as written."""
    _, folder, report = fused("gpt2", precision)
    assert report.decoder == "fused"
    assert_transformers_js_generates_like_tiedonnx(folder, tmp_path, dtype)
