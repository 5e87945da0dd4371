"""``tiedonnx web``: static sites on onnxruntime-web, checked in a real headless Chromium.

Site writing, serving and error paths run everywhere the pinned npm package
is installed; the browser tests also need Debian's ``chromium`` and
playwright-python (driven with ``executable_path``, no ``playwright install``),
and skip with the reason otherwise. Models are built by hand with onnx.helper
(``tiedonnx.runtime.testing``, no TensorFlow); fp16 and int8 files come from
the runtime's own ``to_precision`` passes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tiedonnx.runtime.cli import main
from tiedonnx.runtime.errors import ModelFileError, OutputExistsError, UsageError
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.web import ort_web, serving, write_demo_site, write_site

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FEATURES, HIDDEN = 64, 32  # the 64-32-64 tied autoencoder of the probe

# Measured (scripts/bench_web.py, 64 random rows): the page's outputs
# (onnxruntime-web 1.30.0 wasm, Chromium 156) and onnxruntime-python 1.32 CPU
# differ by at most 1.2e-7 for fp32 and fp16 and 6e-8 for int8 (int4: 1.5e-7), on
# 64-32-64 and 784-256-784 tied autoencoders. 1e-6 is the target; it leaves room for
# other kernel choices without hiding a wrong model, precision or input layout
# (the fp16 and int8 files differ from fp32 by 1.1e-4 and 1.0e-2 on these rows).
PARITY_ATOL = 1e-6


def _dist_or_reason():
    try:
        return ort_web.dist_dir(), ""
    except UsageError as exc:
        return None, str(exc)


DIST, NO_DIST = _dist_or_reason()
needs_package = pytest.mark.skipif(DIST is None, reason=f"onnxruntime-web missing: {NO_DIST}")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium not on PATH (Debian: apt-get install -y chromium)")


def tied_ae(features: int = FEATURES, hidden: int = HIDDEN) -> onnx.ModelProto:
    """x[?, F] -> sigmoid(sigmoid(x W + b1) Transpose(W) + b2): one initializer per tie."""
    return tied_autoencoder(features, hidden, weight_scale=0.3, bias_scale=0.1)


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    fp32 = tied_ae()
    paths = {}
    for precision, model in (("fp32", fp32), ("fp16", to_precision(fp32, "fp16")),
                             ("int8", to_precision(fp32, "int8")),
                             ("int4", to_precision(fp32, "int4"))):
        paths[precision] = str(folder / f"ae.{precision}.onnx")
        onnx.save(model, paths[precision])
    return paths


# ---- site files -------------------------------------------------------------

@needs_package
def test_local_site_holds_the_model_the_page_and_three_runtime_files(models, tmp_path):
    report = write_site(models["int8"], tmp_path / "site")
    site = tmp_path / "site"
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(ort_web.FILES)
    for name in ort_web.FILES:
        assert (site / "ort" / name).read_bytes() == (DIST / name).read_bytes()
    assert (site / "ae.int8.onnx").read_bytes() == open(models["int8"], "rb").read()
    index = (site / "index.html").read_text()
    importmap = json.loads(re.search(r'type="importmap">(.*?)</script>', index, re.S).group(1))
    assert importmap == {"imports": {"onnxruntime-web": "./ort/ort.wasm.min.mjs"}}
    meta = json.loads((site / "site.json").read_text())
    assert meta["runtime"]["version"] == "1.30.0"
    assert meta["models"][0]["inputs"] == [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]
    assert report.written[-1].endswith("index.html")  # last: no page before its files
    files = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert report.download_bytes == files


@needs_package
def test_cdn_site_pins_jsdelivr_urls_with_the_package_files_hashes(models, tmp_path):
    write_site(models["fp32"], tmp_path / "site", runtime="cdn")
    site = tmp_path / "site"
    assert not (site / "ort").exists()
    index = (site / "index.html").read_text()
    importmap = json.loads(re.search(r'type="importmap">(.*?)</script>', index, re.S).group(1))
    base = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/"
    assert importmap["imports"] == {"onnxruntime-web": base + "ort.wasm.min.mjs"}
    files = {f["name"]: f for f in json.loads((site / "site.json").read_text())["runtime"]["files"]}
    for name in ort_web.FILES:
        digest = hashlib.sha384((DIST / name).read_bytes()).digest()
        expected = "sha384-" + base64.b64encode(digest).decode()
        assert files[name]["integrity"] == expected and files[name]["url"] == base + name
        if name.endswith(".mjs"):
            assert importmap["integrity"][base + name] == expected


def test_missing_package_is_one_line_with_the_install_command(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    code = main(["web", models["fp32"], str(tmp_path / "site")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "onnxruntime-web 1.30.0 is not installed" in err
    assert f"npm install --prefix {tmp_path / 'empty-cache'}/tiedonnx/onnxruntime-web/1.30.0" in err
    assert not (tmp_path / "site").exists()


@needs_package
@pytest.mark.parametrize("damage", ["version", "edited file"])
def test_a_damaged_or_other_version_package_is_refused(models, tmp_path, damage):
    package = tmp_path / "prefix" / "node_modules" / "onnxruntime-web"
    (package / "dist").mkdir(parents=True)
    for name in ort_web.FILES:
        shutil.copy(DIST / name, package / "dist" / name)
    manifest = {"name": "onnxruntime-web", "version": "1.30.0"}
    if damage == "version":
        manifest["version"] = "1.29.0"
    else:
        with open(package / "dist" / "ort.wasm.min.mjs", "a") as fh:
            fh.write("\n// edited\n")
    (package / "package.json").write_text(json.dumps(manifest))
    match = "is version '1.29.0'; tiedonnx pins 1.30.0" if damage == "version" else "SHA-384 mismatch"
    with pytest.raises(UsageError, match=match):
        write_site(models["fp32"], tmp_path / "site", npm_prefix=tmp_path / "prefix")
    assert not (tmp_path / "site").exists()


@needs_package
def test_existing_files_are_kept_without_force(models, tmp_path):
    site = tmp_path / "site"
    write_site(models["fp32"], site)
    (site / "index.html").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"site file\(s\) already exist.*force=True"):
        write_site(models["fp32"], site)
    assert (site / "index.html").read_text() == "mine"
    write_site(models["fp32"], site, force=True)
    assert "importmap" in (site / "index.html").read_text()


@needs_package
def test_bad_model_files_are_refused_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        write_site(bad, tmp_path / "site")
    assert not (tmp_path / "site").exists()


@needs_package
def test_external_data_models_are_refused_with_the_fix(tmp_path):
    onnx.save(tied_ae(), tmp_path / "big.onnx", save_as_external_data=True,
              location="big.onnx.data", size_threshold=0)
    with pytest.raises(UsageError, match=r"keeps tensors in external data files.*save_as_external_data=False"):
        write_site(tmp_path / "big.onnx", tmp_path / "site")
    assert not (tmp_path / "site").exists()


@needs_package
def test_demo_needs_square_image_autoencoders_of_one_size(models, tmp_path):
    odd = tmp_path / "odd.onnx"
    onnx.save(tied_ae(features=10, hidden=4), odd)
    with pytest.raises(UsageError, match=r"one float input \[batch, S\*S\].*'odd'"):
        write_demo_site(tmp_path / "site", {"fp32": models["fp32"], "odd": odd})
    other = tmp_path / "mnist.onnx"
    onnx.save(tied_ae(features=784, hidden=16), other)
    with pytest.raises(UsageError, match="different image sizes: {'fp32': 64, 'mnist': 784}"):
        write_demo_site(tmp_path / "site", {"fp32": models["fp32"], "mnist": other})
    with pytest.raises(UsageError, match="at least one model"):
        write_demo_site(tmp_path / "site", {})
    assert not (tmp_path / "site").exists()


@needs_package
def test_server_sends_module_and_wasm_types_and_isolation_headers(models, tmp_path):
    write_site(models["fp32"], tmp_path / "site")
    with serving(tmp_path / "site") as url:
        for path, mime in (("tiedonnx.mjs", "text/javascript"), ("ort/ort-wasm-simd-threaded.wasm",
                           "application/wasm"), ("index.html", "text/html")):
            with urllib.request.urlopen(url + path) as response:
                headers = response.headers
            assert headers["Content-Type"].startswith(mime), path
            assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_serve_refuses_a_folder_that_is_not_a_site(tmp_path, capsys):
    assert main(["web", "--serve", str(tmp_path)]) == 2
    assert "has no index.html" in capsys.readouterr().err


# ---- in the browser ---------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium not on PATH (Debian: apt-get install -y chromium)")
    if DIST is None:
        pytest.skip(f"onnxruntime-web missing: {NO_DIST}")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright-python not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo_url(models, tmp_path_factory, browser):
    site = tmp_path_factory.mktemp("demo") / "web"
    write_demo_site(site, models)
    with serving(site) as url:
        yield url


@pytest.fixture
def demo_page(browser, demo_url):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(demo_url)
    assert page.evaluate("window.tiedonnxDemo.ready") == {
        "status": "ok", "side": 8, "labels": ["fp32", "fp16", "int8", "int4"]}
    yield page
    page.close()
    assert errors == []


RUN_IN_PAGE = """async ([url, rows, dims]) => {
  const t = await import(new URL("tiedonnx.mjs", location.href).href);
  const model = await t.load(url);
  const out = await model.run({ data: Float32Array.from(rows), dims });
  return { isolated: crossOriginIsolated, inputs: model.inputs,
           y: { data: Array.from(out.y.data), dims: out.y.dims } };
}"""


@pytest.mark.slow  # headless Chromium
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_page_outputs_match_onnxruntime_python(demo_page, models, precision):
    x = np.random.default_rng(1).random((5, FEATURES), dtype=np.float32)
    got = demo_page.evaluate(RUN_IN_PAGE, [f"ae.{precision}.onnx", x.ravel().tolist(), [5, FEATURES]])
    assert got["isolated"] is True  # the server's COOP/COEP headers took effect
    assert got["inputs"] == [{"name": "x", "shape": ["batch", FEATURES], "dtype": "float32"}]
    y = np.asarray(got["y"]["data"], np.float32).reshape(got["y"]["dims"])
    expected = onnxruntime_outputs(models[precision], x)
    np.testing.assert_allclose(y, expected, rtol=0, atol=PARITY_ATOL)


BAD_FEEDS = [
    ("({z: {data: new Float32Array(64), dims: [1, 64]}})",
     r"Input names do not match the model\. Missing: \['x'\]; unexpected: \['z'\]\. The model takes \['x'\]\."),
    ("({data: new Float32Array(64), dims: [64]})",
     r"Input 'x' expects shape \(batch, 64\) \(rank 2\); received shape \(64,\) \(rank 1\)\. "
     r"Add a batch axis: dims \[1, 64\]\."),
    ("({data: new Float32Array(63), dims: [1, 63]})",
     r"Input 'x' expects shape \(batch, 64\); received shape \(1, 63\) \(axis 1 is 63, expected 64\)\."),
    ("({data: new Float32Array(60), dims: [1, 64]})",
     r"Input 'x' has dims \(1, 64\) \(64 values\) but its data holds 60 values\."),
    ("({data: new Int32Array(64), dims: [1, 64]})",
     r"Input 'x' expects dtype float32; received int32\. Convert it explicitly \(Float32Array\.from\(x\)\)"),
    ("({data: new Int32Array(63), dims: [1, 63]})",  # two problems, one error
     r"axis 1 is 63, expected 64\)\.; Input 'x' expects dtype float32; received int32"),
    ("({data: new Float32Array(128).fill(NaN, 70), dims: [2, 64]})",
     r"Input 'x' contains NaN or inf \(first at row 1\)\. Clean the data, or pass \{allowNonfinite: true\}"),
    ("({data: new Float32Array(0), dims: [0, 64]})",
     r"Input 'x' is an empty batch \(received shape \(0, 64\)\)\. Pass at least one row\."),
    ("[[0.5, 0.5], [0.5]]", r"Input 'x' could not be read as an array \(received ragged"),
    ("'pixels'", r"Input 'x' could not be read as an array \(received String\)"),
]


@pytest.mark.slow  # headless Chromium
@pytest.mark.parametrize(("feeds", "message"), BAD_FEEDS, ids=[
    "name", "rank", "feature-size", "data-length", "dtype", "two-problems", "nan", "empty",
    "ragged", "string"])
def test_bad_feeds_get_the_js_apis_clear_errors(demo_page, feeds, message):
    got = demo_page.evaluate("""async (feeds) => {
      const t = await import(new URL("tiedonnx.mjs", location.href).href);
      const model = await t.load("ae.fp32.onnx");
      try { await model.run(new Function(`return ${feeds}`)()); return { name: "none" }; }
      catch (err) { return { name: err.name, isInputError: err instanceof t.InputError, message: err.message }; }
    }""", feeds)
    assert got["name"] == "InputError" and got["isInputError"], got
    assert re.search(message, got["message"]), got["message"]


@pytest.mark.slow  # headless Chromium
def test_nonfinite_and_other_float_types_run_when_asked(demo_page):
    got = demo_page.evaluate("""async () => {
      const t = await import(new URL("tiedonnx.mjs", location.href).href);
      const model = await t.load("ae.fp32.onnx");
      const inf = await model.run({ data: new Float32Array(64).fill(Infinity), dims: [1, 64] },
                                  { allowNonfinite: true });
      const f64 = await model.run([Array(64).fill(0.25)]);  // nested numbers: float64, cast
      const f32 = await model.run({ data: new Float32Array(64).fill(0.25), dims: [1, 64] });
      return { inf: inf.y.dims, same: f64.y.data.every((v, i) => v === f32.y.data[i]) };
    }""")
    assert got == {"inf": [1, 64], "same": True}


@pytest.mark.slow  # headless Chromium
def test_missing_model_is_a_model_file_error(demo_page):
    got = demo_page.evaluate("""async () => {
      const t = await import(new URL("tiedonnx.mjs", location.href).href);
      try { await t.load("nope.onnx"); } catch (err) { return [err.name, err.message]; }
    }""")
    assert got[0] == "ModelFileError" and "Model file not found at nope.onnx (HTTP 404)" in got[1]


def _canvas_pixels(page, selector: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("L"), float)


@pytest.mark.slow  # headless Chromium
def test_demo_draws_and_a_stroke_changes_every_reconstruction(demo_page, models):
    pytest.importorskip("PIL", reason="Pillow is needed to read the screenshot")
    before = {sel: _canvas_pixels(demo_page, sel) for sel in ("#pad", "#input", "#out-0", "#out-2")}
    for sel, pixels in before.items():  # the starting "7" and its reconstructions are drawn
        assert pixels.std() > 10, f"{sel} looks blank (std {pixels.std():.1f})"
    state0 = demo_page.evaluate("({x: Array.from(window.tiedonnxDemo.state.input), "
                                "y: Array.from(window.tiedonnxDemo.state.outputs.fp32)})")
    box = demo_page.locator("#pad").bounding_box()
    demo_page.mouse.move(box["x"] + 30, box["y"] + 250)
    demo_page.mouse.down()
    for i in range(1, 11):
        demo_page.mouse.move(box["x"] + 30 + 22 * i, box["y"] + 250 - 6 * i)
    demo_page.mouse.up()
    demo_page.evaluate("window.tiedonnxDemo.settled()")
    state1 = demo_page.evaluate("({x: Array.from(window.tiedonnxDemo.state.input), "
                                "y: Array.from(window.tiedonnxDemo.state.outputs.fp32), "
                                "updates: window.tiedonnxDemo.state.updates})")
    x0, x1 = np.float32(state0["x"]), np.float32(state1["x"])
    assert state1["updates"] > 1 and np.abs(x1 - x0).max() > 0.2  # the stroke reached the input
    assert np.abs(np.float32(state1["y"]) - np.float32(state0["y"])).max() > 1e-3
    assert np.abs(_canvas_pixels(demo_page, "#out-0") - before["#out-0"]).max() > 0
    # What the page shows is the model's output for what the page fed it.
    expected = onnxruntime_outputs(models["fp32"], x1[None])
    np.testing.assert_allclose(np.float32(state1["y"])[None], expected, rtol=0, atol=PARITY_ATOL)


@pytest.mark.slow  # headless Chromium
@needs_chromium
@needs_package
def test_model_page_in_plain_headless_chromium_dump_dom(models, tmp_path):
    """No playwright: chromium --dump-dom prints the page after it ran its probe input."""
    write_site(models["fp16"], tmp_path / "site")
    with serving(tmp_path / "site") as url:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
             "--dump-dom", url + "?runs=10"], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result"[^>]*data-status="(\w+)"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found, f"no result in the DOM; chromium exit {done.returncode}: {done.stderr[-500:]}"
    result = json.loads(found.group(2))
    assert found.group(1) == "ok", result
    x = (np.arange(FEATURES) * 37 % 101 / 100).astype(np.float32)[None]  # the page's probe input
    y = np.asarray(result["outputs"]["y"]["data"], np.float32).reshape(1, FEATURES)
    np.testing.assert_allclose(y, onnxruntime_outputs(models["fp16"], x), rtol=0, atol=PARITY_ATOL)


@pytest.mark.slow  # headless Chromium
def test_model_page_shows_signature_sizes_and_timing(browser, models, tmp_path):
    write_site(models["int8"], tmp_path / "site")
    page = browser.new_page()
    with serving(tmp_path / "site") as url:
        page.goto(url + "?runs=200")
        page.wait_for_selector('#result[data-status="ok"]', state="attached", timeout=60_000)
        rows = [r.inner_text().split("\t") for r in page.locator("#signature tbody tr").all()]
        timing, size = page.inner_text("#timing"), page.inner_text("#model-size")
    page.close()
    assert rows == [["input", "x", "(batch, 64)", "float32"], ["output", "y", "(batch, 64)", "float32"]]
    assert re.fullmatch(r"batch-1 latency: \d+\.\d us per call \(mean of 200 calls\)", timing)
    assert f"ae.int8.onnx: {os.path.getsize(models['int8']):,} bytes" in size


def _route_cdn(page, *, tamper: str | None = None) -> list[str]:
    """Answer jsDelivr URLs from the local package (the test machine is offline)."""
    served = []

    def fulfil(route):
        name = route.request.url.rsplit("/", 1)[1]
        body = (DIST / name).read_bytes()
        if name == tamper:
            body = body.replace(b"onnxruntime", b"onnxRuntime", 1)
        served.append(name)
        mime = "application/wasm" if name.endswith(".wasm") else "text/javascript"
        route.fulfill(status=200, body=body, headers={
            "Content-Type": mime, "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin"})

    page.route(ort_web.CDN_BASE + "*", fulfil)
    return served


@pytest.mark.slow  # headless Chromium
@pytest.mark.parametrize("tamper", [None, "ort.wasm.min.mjs", "ort-wasm-simd-threaded.wasm"])
def test_cdn_page_runs_only_the_pinned_files(browser, models, tmp_path, tamper):
    write_site(models["fp32"], tmp_path / "site", runtime="cdn")
    page = browser.new_page()
    served = _route_cdn(page, tamper=tamper)
    with serving(tmp_path / "site") as url:
        page.goto(url + "?runs=0")
        page.wait_for_selector("#result[data-status]", state="attached", timeout=60_000)
        result = json.loads(page.text_content("#result"))
    page.close()
    if tamper is None:
        assert result["status"] == "ok", result
        assert sorted(served) == sorted(ort_web.FILES)
    else:
        assert result["status"] == "error", result
        assert tamper in served  # the tampered file was fetched, and refused


def _boxes(page, selectors) -> dict[str, dict]:
    return {sel: page.locator(sel).bounding_box() for sel in selectors}


def _overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


@pytest.mark.slow  # headless Chromium
@pytest.mark.parametrize("width", [1200, 420])
def test_demo_layout_keeps_the_pad_clear_of_the_preview(browser, demo_url, width):
    """Issue 27: the 280-px pad sat in a panel capped at 210 px, under the input preview."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(demo_url)
    assert page.evaluate("window.tiedonnxDemo.ready")["status"] == "ok"
    box = _boxes(page, ["#pad", "#input", ".panel.pad", "#clear"])
    page.close()
    assert not _overlap(box["#pad"], box["#input"]), box
    assert box["#pad"]["x"] >= 0 and box["#pad"]["x"] + box["#pad"]["width"] <= width, box
    panel, pad = box[".panel.pad"], box["#pad"]  # the pad lies inside its own panel
    assert panel["x"] <= pad["x"] and pad["x"] + pad["width"] <= panel["x"] + panel["width"] + 0.5, box
    assert box["#clear"]["y"] >= pad["y"] + pad["height"]  # the button below the pad, not over it


@pytest.mark.slow  # headless Chromium
def test_demo_times_are_medians_after_a_warm_up_and_a_frozen_clock_is_said(browser, demo_url):
    page = browser.new_page()
    page.goto(demo_url)
    assert page.evaluate("window.tiedonnxDemo.ready")["status"] == "ok"
    for _ in range(3):
        page.evaluate("window.tiedonnxDemo.update()")
        page.evaluate("window.tiedonnxDemo.settled()")
    runs = page.evaluate("window.tiedonnxDemo.state.history.fp32.length")
    meta = page.inner_text("#meta-0")
    page.close()
    assert runs >= 2 and re.search(rf"\d+\.\d\d ms \(median of {runs} runs\)", meta), meta

    frozen = browser.new_page()
    frozen.add_init_script("performance.now = () => 1000;")  # a clock that never moves
    frozen.goto(demo_url)
    assert frozen.evaluate("window.tiedonnxDemo.ready")["status"] == "ok"
    meta = frozen.inner_text("#meta-0")
    frozen.close()
    assert "time not measured" in meta and "0.00 ms" not in meta, meta
