"""Text generation in the browser: download size, time to first token and decode tokens/s per precision.

    python scripts/bench_web_generate.py                                   # tiny GPT-2 (vocabulary 1000)
    python scripts/bench_web_generate.py --config gpt2-small --precisions int4 --folders /tmp/gpt2-gen

For each precision this exports a generation folder of one seeded KerasHub GPT-2
(``--folders DIR`` keeps them as DIR/<precision> and reuses them), writes the page
``tiedonnx web`` writes (local runtime), serves it with COOP/COEP (a cross-origin
isolated page) and opens it in headless Debian Chromium (playwright-python). Rows,
greedy, the same ``--prompt`` random token ids and ``--new`` new tokens each, no stop token:

* tiedonnx page, per wasm thread count in ``--threads``: ``loadLM(...).generate`` of generate.mjs;
* native onnxruntime, same threads: ``tiedonnx.runtime.generate.load_lm(...).generate``;
* transformers.js 4.3.2 in the same browser, reading the site's ``lm/`` folder (its own
  onnxruntime-web 1.31 dev build, wasm, same threads), when its npm package is installed:
  a failure is one printed line.

Time to first token = prompt run + first sample; decode tokens/s = (new - 1) tokens over the
time after the first token. Median of ``--rounds`` rounds, contenders interleaved round by
round after the same ``--warmup`` seconds of throwaway generation each (V8 runs wasm in a
baseline tier first and tiers a function up once it has run a while: on the tiny model the
first ~1.5 s of steps are 2-4x slower; ``--warmup 0`` measures that cold start). Greedy
tokens are compared with the native row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import CONFIGS, PRECISION_OPTIONS  # noqa: E402
from machine import describe  # noqa: E402
from tiedonnx.runtime.timing import settle  # noqa: E402
from tiedonnx.runtime.web import ORT_WEB_VERSION, serving, write_generation_site  # noqa: E402

TJS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiedonnx/transformers-js/node_modules"
RATIO_TARGET = 0.25

PAGE_RUN = """async ([ids, n]) => {
  const lm = window.tiedonnxLM;
  const r = await lm.generate(ids, { max_new_tokens: n, sampler: "greedy", stop_token_ids: [] });
  return { ttft: r.time_to_first_token_s, tps: r.decode_tokens_per_s, tokens: r.tokens };
}"""

TJS_HTML = """<!doctype html><meta charset="utf-8"><title>transformers.js</title>
<script type="importmap">{"imports": {"onnxruntime-web/webgpu": "./tjs/ort/ort.webgpu.min.mjs",
  "onnxruntime-common": "./tjs/common/index.js"}}</script><p>transformers.js</p>"""

TJS_LOAD = """async ([threads, dtype]) => {
  const t = await import("./tjs/transformers.web.js");
  t.env.allowRemoteModels = false;
  t.env.allowLocalModels = true;
  t.env.localModelPath = new URL("./", location.href).href;
  t.env.useBrowserCache = false;
  t.env.backends.onnx.wasm.wasmPaths = new URL("./tjs/ort/", location.href).href;
  t.env.backends.onnx.wasm.numThreads = threads;
  window.tjs = t;
  window.tjsModel = await t.AutoModelForCausalLM.from_pretrained("lm", { dtype, device: "wasm" });
  return true;
}"""

TJS_RUN = """async ([ids, n]) => {
  const t = window.tjs, model = window.tjsModel;
  const input_ids = new t.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const gen = (k) => model.generate({ input_ids, max_new_tokens: k, min_new_tokens: k, do_sample: false });
  let s = performance.now(); await gen(1); const t1 = performance.now() - s;
  s = performance.now(); const out = await gen(n); const tn = performance.now() - s;
  return { ttft: t1 / 1000, tps: (n - 1) / ((tn - t1) / 1000), tokens: Array.from(out.data, Number).slice(ids.length) };
}"""

TJS_DTYPE = {"fp32": "fp32", "fp16": "fp16", "int8": "q8", "int4": "q4"}


def export_folders(args) -> dict[str, Path]:
    """precision -> generation folder (exported unless --folders already holds it)."""
    root = Path(args.folders or tempfile.mkdtemp(prefix="bench-web-gen-"))
    root.mkdir(parents=True, exist_ok=True)
    wanted = args.precisions.split(",")
    missing = [p for p in wanted if not (root / p / "tiedonnx.json").is_file()]
    if missing:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras
        import keras_hub

        from tiedonnx.converter.generation import export_generation

        keras.utils.set_random_seed(0)
        m = keras_hub.models
        lm = m.GPT2CausalLM(m.GPT2Backbone(**CONFIGS[args.config]), preprocessor=None)
        for precision in missing:
            export_generation(lm, root / precision, precision=precision, force=True,
                              **PRECISION_OPTIONS.get(precision, {}))
            print(f"exported {root / precision}", flush=True)
    return {p: root / p for p in wanted}


def add_transformers_js(site: Path) -> str | None:
    """Copy transformers.js's web build and its onnxruntime-web into the site; None, or why not."""
    dist = TJS / "@huggingface/transformers/dist"
    ort_dist, common = TJS / "onnxruntime-web/dist", TJS / "onnxruntime-common/dist/esm"
    if not (dist / "transformers.web.js").is_file() or not ort_dist.is_dir() or not common.is_dir():
        return f"transformers.js not installed (npm install --prefix {TJS.parent} --ignore-scripts " \
               "@huggingface/transformers@4.3.2)"
    (site / "tjs" / "ort").mkdir(parents=True, exist_ok=True)
    shutil.copy(dist / "transformers.web.js", site / "tjs")
    for f in ort_dist.glob("ort*"):
        if f.suffix in (".mjs", ".wasm") and (f.name.startswith("ort-wasm") or f.name == "ort.webgpu.min.mjs"):
            shutil.copy(f, site / "tjs" / "ort")
    shutil.copytree(common, site / "tjs" / "common", dirs_exist_ok=True)
    (site / "tjs.html").write_text(TJS_HTML)
    return None


def open_page(browser, url: str, *, timeout_ms: int = 600_000):
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#result[data-status]", state="attached", timeout=timeout_ms)
    status = json.loads(page.text_content("#result"))
    if status["status"] != "ready":
        raise RuntimeError(f"the page failed: {status.get('error')}")
    return page


def bench_precision(browser, folder: Path, precision: str, ids: list[int], args) -> list[dict]:
    from tiedonnx.runtime.generate import load_lm

    site = Path(tempfile.mkdtemp(prefix=f"site-{precision}-"))
    report = write_generation_site(folder, site, force=True)
    tjs_missing = add_transformers_js(site)
    download = report.download_bytes
    rows = []
    with serving(site) as base:
        for threads in args.threads:
            contenders = {"tiedonnx page": open_page(browser, f"{base}?threads={threads}&warmup={args.warmup}")}
            lm = load_lm(folder, threads=threads)
            native = lambda n: _native(lm, ids, n)  # noqa: E731
            runs = {"tiedonnx page": lambda n, p=contenders["tiedonnx page"]: p.evaluate(PAGE_RUN, [ids, n]),
                    "native onnxruntime": native}
            if tjs_missing is None:
                try:
                    tjs = browser.new_page()
                    tjs.goto(f"{base}tjs.html")
                    tjs.evaluate(TJS_LOAD, [threads, TJS_DTYPE[precision]])
                    runs["transformers.js (browser)"] = lambda n, p=tjs: p.evaluate(TJS_RUN, [ids, n])
                    contenders["transformers.js (browser)"] = tjs
                except Exception as exc:  # a peer that does not load is one line, not a traceback
                    tjs_missing = f"transformers.js did not run: {str(exc).splitlines()[0][:200]}"
            results = {name: [] for name in runs}
            for name, run in runs.items():  # the page warmed itself up for --warmup s at load
                warm_up(run, 0 if name == "tiedonnx page" else args.warmup)
            for _ in range(args.rounds):
                for name, run in runs.items():
                    settle()
                    results[name].append(run(args.new))
            for name, got in results.items():
                rows.append({"precision": precision, "contender": name, "threads": threads,
                             "download_bytes": download if name != "native onnxruntime" else None,
                             "ttft_ms": 1e3 * statistics.median(r["ttft"] for r in got),
                             "tps": statistics.median(r["tps"] for r in got),
                             "tps_spread": (min(r["tps"] for r in got), max(r["tps"] for r in got)),
                             "tokens": got[0]["tokens"]})
            for page in contenders.values():
                page.close()
    if tjs_missing:
        print(f"{precision}: {tjs_missing}")
    shutil.rmtree(site, ignore_errors=True)
    return rows


def warm_up(run, seconds: float) -> None:
    """One short call, then throwaway calls until ``seconds`` have passed (V8 tiers wasm up as it runs)."""
    start = time.perf_counter()
    run(4)
    while time.perf_counter() - start < seconds:
        run(16)


def _native(lm, ids: list[int], n: int) -> dict:
    r = lm.generate(ids, max_new_tokens=n, sampler="greedy", stop_token_ids=[])
    return {"ttft": r.time_to_first_token_s, "tps": r.decode_tokens_per_s, "tokens": r.tokens[0]}


def print_table(rows: list[dict]) -> None:
    print("\n| precision | contender | threads | download (MB) | time to first token (ms) | decode tokens/s "
          "[min-max] | vs native | greedy = native |")
    print("|---|---|---:|---:|---:|---:|---:|:---:|")
    native = {(r["precision"], r["threads"]): r for r in rows if r["contender"] == "native onnxruntime"}
    for r in rows:
        ref = native[r["precision"], r["threads"]]
        size = f"{r['download_bytes'] / 1e6:.2f}" if r["download_bytes"] else "-"
        lo, hi = r["tps_spread"]
        print(f"| {r['precision']} | {r['contender']} | {r['threads']} | {size} | {r['ttft_ms']:.1f} | "
              f"{r['tps']:.1f} [{lo:.1f}-{hi:.1f}] | {r['tps'] / ref['tps']:.2f}x | "
              f"{'yes' if r['tokens'] == ref['tokens'] else 'NO'} |")


def summarize(rows: list[dict]) -> None:
    """Best thread count of each contender against native onnxruntime's best, per precision."""
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["precision"], r["contender"])
        best[key] = max(best.get(key, 0.0), r["tps"])
    lines, met = [], True
    for precision in dict.fromkeys(r["precision"] for r in rows):
        native, page = best[precision, "native onnxruntime"], best[precision, "tiedonnx page"]
        tjs = best.get((precision, "transformers.js (browser)"))
        met &= page >= RATIO_TARGET * native
        lines.append(f"{precision}: page {page / native:.2f}x native"
                     + (f", {page / tjs:.2f}x transformers.js" if tjs else ", transformers.js: no row"))
    print("\nbest decode tokens/s over thread counts: " + "; ".join(lines)
          + f" (target page >= {RATIO_TARGET}x native: {'met' if met else 'MISSED'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="wasm and native thread counts, comma-separated")
    parser.add_argument("--folders", default=None, help="keep (and reuse) the generation folders here")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of throwaway generation before timing, for every contender (the page's "
                             "own ?warmup=S at load; repeated calls for the others); 0: a 4-token call only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    from playwright.sync_api import sync_playwright

    import numpy as np

    folders = export_folders(args)
    version = subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(describe())
    print(f"{version}; onnxruntime-web {ORT_WEB_VERSION} (wasm); config {args.config}: {CONFIGS[args.config]}; "
          f"prompt {args.prompt} tokens, {args.new} new, greedy; {args.warmup:g} s warm-up; median of {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    ids = np.random.default_rng(0).integers(1, CONFIGS[args.config]["vocabulary_size"], args.prompt).tolist()
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        for precision, folder in folders.items():
            rows += bench_precision(browser, folder, precision, ids, args)
        browser.close()
    print_table(rows)
    summarize(rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
