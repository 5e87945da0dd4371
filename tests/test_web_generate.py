"""The text-generation page (``tiedonnx web GEN_DIR OUT``): site files, and generate.mjs in headless Chromium.

The browser runs a tiny KerasHub GPT-2 (2 layers, hidden 16, a byte-level BPE of
300 tokens trained in tests/models.py) exported per precision; every expected
token comes from the Python runtime (``tiedonnx.runtime.generate``) on the same
folder, every expected error from the Python runtime's own message. Site-writing
checks use the hand-built folder of tests/graphs.py (no TensorFlow).
"""

from __future__ import annotations

import functools
import json

import pytest

from tiedonnx.runtime.cli import main
from tiedonnx.runtime.errors import InputError, ModelFileError, UsageError
from tiedonnx.runtime.web import ort_web, write_generation_site

from .browser import evaluate_in_site, needs_chromium
from .graphs import tiny_decoder_folder


def _packages_or_reason() -> str:
    try:
        ort_web.dist_dir()
        ort_web.TOKENIZERS.dist_dir()
    except UsageError as exc:
        return str(exc)
    return ""


MISSING = _packages_or_reason()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"pinned npm package missing: {MISSING}")
NEW = 24
PROMPTS = ["The tie", "Tied weights are stored once, with the", "Generation runs the prompt", [5, 17, 33, 2, 9]]


# ---- the site (no browser) ------------------------------------------------------------

def test_site_holds_one_decoder_the_tokenizer_library_and_the_folder_files(tmp_path):
    tiny_decoder_folder(tmp_path / "gen")
    report = write_generation_site(tmp_path / "gen", tmp_path / "site")
    site = json.loads((tmp_path / "site" / "site.json").read_text())
    assert site["page"] == "generate" and site["lm"]["url"] == "lm/"
    assert report.models[0]["file"] == "lm/onnx/model.onnx"
    assert sorted(f["name"] for f in report.runtime_files) == sorted([*ort_web.FILES, "tokenizers.min.mjs"])
    for name in ("index.html", "generate.mjs", "generate-page.mjs", "tiedonnx.mjs", "lm/tiedonnx.json",
                 "lm/onnx/model.onnx", "tokenizers/tokenizers.min.mjs", "ort/" + ort_web.WASM_FILE):
        assert (tmp_path / "site" / name).is_file(), name
    sizes = {f.relative_to(tmp_path / "site").as_posix(): f.stat().st_size
             for f in (tmp_path / "site").rglob("*") if f.is_file()}
    fetched = sum(sizes[n] for n in ("lm/onnx/model.onnx", "lm/tiedonnx.json", "tokenizers/tokenizers.min.mjs",
                                     *(f"ort/{n}" for n in ort_web.FILES)))
    assert report.download_bytes == fetched + report.page_bytes
    index = (tmp_path / "site" / "index.html").read_text()
    assert '"@huggingface/tokenizers": "./tokenizers/tokenizers.min.mjs"' in index


def test_cdn_site_pins_the_tokenizer_library_with_its_hash(tmp_path):
    tiny_decoder_folder(tmp_path / "gen")
    write_generation_site(tmp_path / "gen", tmp_path / "site", runtime="cdn")
    assert not (tmp_path / "site" / "tokenizers").exists()
    index = (tmp_path / "site" / "index.html").read_text()
    url = "https://cdn.jsdelivr.net/npm/@huggingface/tokenizers@0.2.0/dist/tokenizers.min.mjs"
    assert f'"@huggingface/tokenizers": "{url}"' in index
    assert f'"{url}": "{ort_web.TOKENIZERS.files["tokenizers.min.mjs"]}"' in index


def test_bad_folders_and_precisions_are_refused_before_writing(tmp_path, capsys):
    tiny_decoder_folder(tmp_path / "gen")
    with pytest.raises(UsageError, match=r"has no int4 decoder \(onnx/model_q4.onnx\); it holds \['fp32'\]"):
        write_generation_site(tmp_path / "gen", tmp_path / "site", precision="int4")
    (tmp_path / "gen" / "onnx" / "model.onnx").unlink()
    with pytest.raises(ModelFileError, match="lacks its decoder 'onnx/model.onnx'"):
        write_generation_site(tmp_path / "gen", tmp_path / "site")
    with pytest.raises(UsageError, match="@huggingface/tokenizers 0.2.0 is not installed .* npm install --prefix"):
        ort_web.TOKENIZERS.dist_dir(tmp_path / "empty")
    assert main(["web", str(tmp_path / "gen" / "onnx"), str(tmp_path / "site"), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--precision picks a decoder of a generation folder" in err and err.count("\n") == 1
    assert not (tmp_path / "site").exists()


def test_cli_says_int4_runs_slowly_in_the_browser_and_int8_does_not(tmp_path, capsys):
    from tiedonnx.runtime.cli import main
    from tiedonnx.runtime.commands.web import INT4_NOTE

    tiny_decoder_folder(tmp_path / "gen")
    onnx_dir = tmp_path / "gen" / "onnx"
    for name in ("model_q4.onnx", "model_quantized.onnx"):  # the page copies the file: its bytes do not matter here
        (onnx_dir / name).write_bytes((onnx_dir / "model.onnx").read_bytes())
    for precision, noted in (("int4", True), ("int8", False), ("fp32", False)):
        assert main(["web", str(tmp_path / "gen"), str(tmp_path / f"site-{precision}"), "--precision", precision]) == 0
        out = capsys.readouterr().out
        assert (INT4_NOTE in out) is noted, (precision, out)


def test_cli_precision_choices_are_the_folder_model_files():
    from tiedonnx.runtime.commands import web
    from tiedonnx.runtime.generation_folder import MODEL_FILES

    assert web.PRECISIONS == tuple(MODEL_FILES)


# ---- in Chromium, against the Python runtime ------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """precision -> a generation folder of one tiny GPT-2 with its tokenizer (exported on first use)."""
    pytest.importorskip("keras_hub", reason="KerasHub is not installed (pip install -e '.[hub]')")
    pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed (pip install -e '.[text]')")
    import keras_hub

    from tiedonnx.converter.generation import export_generation

    from . import models

    root, made, state = tmp_path_factory.mktemp("webgen"), {}, {}

    def get(precision: str):
        if precision not in made:
            if "lm" not in state:
                tokenizer = models.tiny_bpe()
                pre = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=64)
                # hidden 32, 2 heads: head size 16, so the folder holds the fused decoder (GroupQueryAttention)
                state["lm"] = models.causal_lm("gpt2", vocabulary=tokenizer.vocabulary_size(), hidden=32,
                                               preprocessor=pre)
            # verify=False: test_generate.py checks the export against Keras; here the folder is the reference.
            kind, _, decoder = precision.partition("-")
            export_generation(state["lm"], root / precision, precision=kind, verify=False, decoder=decoder or "auto")
            write_generation_site(root / precision, root / f"site-{precision}")
            made[precision] = root / precision
        return made[precision], root / f"site-{precision}"

    return get


GENERATE_ALL = """async ([prompts, options]) => {
    const { loadLM } = await import("./generate.mjs");
    const lm = await loadLM("lm/");
    const out = [];
    for (const prompt of prompts) {
        const r = await lm.generate(prompt, options);
        out.push({ tokens: r.tokens, ids: typeof prompt === "string" ? lm.encode(prompt) : null });
    }
    return out;
}"""


@functools.lru_cache(maxsize=4)
def _load_lm(folder):
    from tiedonnx.runtime.generate import load_lm

    return load_lm(folder)


def _python(folder, prompt, **options):
    lm = _load_lm(folder)
    return lm.generate(prompt, stop_token_ids=[], **options).tokens[0], (
        lm.encode(prompt) if isinstance(prompt, str) else None)


@needs_chromium
@pytest.mark.slow  # headless Chromium and a KerasHub export
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4", "fp32-traced"])
def test_greedy_tokens_equal_the_python_runtime(folders, precision):
    folder, site = folders(precision)
    got = evaluate_in_site(site, GENERATE_ALL, [PROMPTS, {"max_new_tokens": NEW, "sampler": "greedy",
                                                          "stop_token_ids": []}])
    for prompt, js in zip(PROMPTS, got):
        tokens, ids = _python(folder, prompt, max_new_tokens=NEW, sampler="greedy")
        assert js["ids"] == ids, prompt  # @huggingface/tokenizers encodes as Python's tokenizers
        assert js["tokens"] == tokens, prompt


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_seeded_top_k_and_top_p_equal_the_python_runtime(folders):
    folder, site = folders("fp32")
    runs = [{"sampler": "top_k", "top_k": 20, "temperature": 1.5, "seed": 7},
            {"sampler": "top_p", "top_p": 0.8, "seed": 12345}]
    got = evaluate_in_site(site, """async ([prompts, runs, n]) => {
        const { loadLM } = await import("./generate.mjs");
        const lm = await loadLM("lm/");
        const out = [];
        for (const options of runs) {
            for (const prompt of prompts) {
                out.push((await lm.generate(prompt, { ...options, max_new_tokens: n, stop_token_ids: [] })).tokens);
            }
        }
        return out;
    }""", [PROMPTS[:2], runs, NEW])
    expected = []
    for options in runs:
        for prompt in PROMPTS[:2]:
            tokens, _ = _python(folder, prompt, max_new_tokens=NEW, **options)
            greedy, _ = _python(folder, prompt, max_new_tokens=NEW, sampler="greedy")
            assert tokens != greedy, (options, prompt)  # the draws matter: this is not greedy in disguise
            expected.append(tokens)
    assert got == expected


BAD = [  # (prompt, options): each must fail in the page exactly as in Python
    (list(range(1, 121)), {"max_new_tokens": 20}),
    ("The tie " * 80, {"max_new_tokens": 4}),
    ([[]], {}),
    ([], {}),
    ([5, 300, -1], {}),
    ([5, 6], {"max_new_tokens": 0}),
    ([5, 6], {"sampler": "beam"}),
    ([5, 6], {"sampler": "top_p", "top_p": 1.5}),
    ([5, 6], {"sampler": "top_k", "top_k": 0}),
    ([5, 6], {"temperature": 0}),
]


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_bad_input_gets_the_python_runtime_error(folders):
    folder, site = folders("fp32")
    got = evaluate_in_site(site, """async (cases) => {
        const { loadLM } = await import("./generate.mjs");
        const lm = await loadLM("lm/");
        const out = [];
        for (const [prompt, options] of cases) {
            try { await lm.generate(prompt, options); out.push(null); }
            catch (err) { out.push(`${err.name}: ${err.message}`); }
        }
        return out;
    }""", BAD)
    lm = _load_lm(folder)
    for (prompt, options), js in zip(BAD, got):
        with pytest.raises((InputError, UsageError)) as caught:
            lm.generate(prompt, **options)
        assert js == f"{type(caught.value).__name__}: {caught.value}", (prompt, options)
    assert got[0].startswith("InputError: A prompt of 120 tokens plus max_new_tokens=20 exceeds the model's "
                             "maximum length 128; lower max_new_tokens to 8.")


STREAM = """async (maxNew) => {
    const $ = (id) => document.getElementById(id);
    await new Promise((ok) => { const wait = () => ($("result").dataset.status ? ok() : setTimeout(wait, 20)); wait(); });
    if ($("result").dataset.status !== "ready") return { error: $("result").textContent };
    const ready = JSON.parse($("result").textContent);
    $("prompt").value = "The tie";
    $("sampler").value = "greedy";
    $("max_new_tokens").value = String(maxNew);
    const seen = [];
    $("go").click();
    await new Promise((ok) => {
        const frame = () => {
            seen.push($("output").textContent.length);
            $("result").dataset.status === "ready" ? requestAnimationFrame(frame) : ok();
        };
        requestAnimationFrame(frame);
    });
    return { seen, ready, output: $("output").textContent, result: JSON.parse($("result").textContent),
             speed: $("speed").textContent, download: $("download").textContent };
}"""


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_the_page_streams_text_as_it_is_generated(folders):
    folder, site = folders("fp32-traced")
    # ?warmup=0 and the traced decoder: a cold page then decodes a few hundred tokens/s, so frames are
    # painted mid-way; a warmed-up one, or the fused decoder even cold, can finish 120 tokens of this tiny
    # model within two or three frames.
    got = evaluate_in_site(site, STREAM, 120, query="?warmup=0")
    assert "error" not in got, got
    expected = _load_lm(folder).generate("The tie", max_new_tokens=120, sampler="greedy")
    assert got["result"]["tokens"] == expected.tokens[0]
    assert got["output"] == "The tie" + expected.text[0]
    growing = sorted(set(n for n in got["seen"] if len("The tie") < n < len(got["output"])))
    assert len(growing) >= 2, got["seen"]  # frames painted with partial text: it streamed
    assert "tokens/s" in got["speed"] and got["download"].startswith("download ")
    assert got["ready"]["warmup_steps"] == 0, got["ready"]


READY = """async () => {
    const $ = (id) => document.getElementById(id);
    await new Promise((ok) => { const wait = () => ($("result").dataset.status ? ok() : setTimeout(wait, 20)); wait(); });
    return { result: JSON.parse($("result").textContent), speed: $("speed").textContent };
}"""


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_the_page_warms_up_for_two_seconds_before_it_reports_ready(folders):
    _, site = folders("fp32")
    got = evaluate_in_site(site, READY)
    assert got["result"]["status"] == "ready", got
    assert got["result"]["warmup_steps"] >= 10 and 2 <= got["result"]["warmup_s"] < 10, got
    assert got["speed"].startswith(f"warmed up: {got['result']['warmup_steps']} decoder steps in "), got


WARM_THEN_CLICK = """async (maxNew) => {
    const $ = (id) => document.getElementById(id);
    await new Promise((ok) => { const wait = () => (window.tiedonnxLM || $("result").dataset.status ? ok() : setTimeout(wait, 20)); wait(); });
    if (!window.tiedonnxLM) return { error: $("result").textContent };
    const lm = window.tiedonnxLM, warming = lm.warming !== null;
    const bad = [-1, "2", NaN].map((v) => { try { lm.warmUp(v); return null; } catch (e) { return `${e.name}: ${e.message}`; } });
    $("prompt").value = "The tie";
    $("sampler").value = "greedy";
    $("max_new_tokens").value = String(maxNew);
    const start = performance.now();
    $("go").click();
    await new Promise((ok) => { const wait = () => ($("result").dataset.status ? ok() : setTimeout(wait, 20)); wait(); });
    const seconds = (performance.now() - start) / 1000;
    await new Promise((ok) => setTimeout(ok, 300));  // the stopped warm-up must not report "ready" after "done"
    return { warming, bad, seconds, status: $("result").dataset.status, result: JSON.parse($("result").textContent) };
}"""


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_a_click_during_the_warm_up_stops_it_and_generates(folders):
    folder, site = folders("fp32")
    got = evaluate_in_site(site, WARM_THEN_CLICK, 12, query="?warmup=120")
    assert "error" not in got, got
    assert got["warming"], "the page did not start warming up after loading"
    assert got["seconds"] < 60, got  # the 120 s warm-up stopped at the click
    assert got["status"] == "done", got
    assert got["result"]["tokens"] == _load_lm(folder).generate("The tie", max_new_tokens=12, sampler="greedy").tokens[0]
    for value, error in zip(["-1", "'2'", "NaN"], got["bad"]):
        assert error == f"UsageError: warm-up seconds must be a number >= 0. Received: {value}.", got["bad"]
