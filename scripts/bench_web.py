"""Browser deployment: parity, batch-1 latency and download size of tied files on onnxruntime-web.

For each model size and precision (fp32, fp16, int8) this writes the site
``tiedonnx web`` writes (local runtime), serves it with the COOP/COEP headers
(a cross-origin-isolated page), opens it in headless Debian Chromium through
playwright-python, and measures:

* parity: max |page - onnxruntime-python| on 64 random rows (batch 64 and 1);
  target <= 1e-6;
* batch-1 latency: mean per call over ``--runs`` calls (>= 1,000), timed by the
  page itself (``timeRuns`` in tiedonnx.mjs), against onnxruntime-python on one
  intra-op thread, same input, same number of calls; rounds alternate between
  the two, with a pause between contenders, and the median round is reported.
  "checked" is each API's run with its input checks (``model.run`` in JS,
  ``TiedModel.run`` in Python); "raw" is the bare session (``session.run`` /
  ``InferenceSession.run``); target: browser <= 2x Python;
* download: runtime + model + page bytes, and gzipped (level 6).

Needs: ``apt-get install -y chromium``, ``pip install playwright`` (no
``playwright install``), and the pinned npm package (see ``tiedonnx web``'s
error for the command). Run: ``python scripts/bench_web.py [--json]``.
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

import numpy as np
import onnx
import onnxruntime as ort

from machine import describe
from tiedonnx.runtime import load
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.web import ORT_WEB_VERSION, serving, write_site

PRECISIONS = ("fp32", "fp16", "int8")
PARITY_TARGET = 1e-6
RATIO_TARGET = 2.0
SETTLE_S = 0.3  # pause between contenders so one's cache/turbo state does not favour the other

TIME_IN_PAGE = """async ([url, rows, runs, raw]) => {
  const t = await import(new URL("tiedonnx.mjs", location.href).href);
  const fresh = window.__bench?.url !== url;
  const model = fresh ? await t.load(url) : window.__bench.model;
  window.__bench = { url, model };
  const feeds = { data: Float32Array.from(rows), dims: [1, rows.length] };
  // A first, long warm-up lets V8 tier the wasm code up from its baseline compiler.
  return await t.timeRuns(model, feeds, { runs, block: 100, warmup: fresh ? 3000 : 200, raw });
}"""

RUN_IN_PAGE = """async ([url, rows, dims]) => {
  const t = await import(new URL("tiedonnx.mjs", location.href).href);
  const model = await t.load(url);
  const out = Object.values(await model.run({ data: Float32Array.from(rows), dims }))[0];
  return { data: Array.from(out.data), isolated: crossOriginIsolated };
}"""


def python_timer(path: Path, x: np.ndarray, *, raw: bool):
    """A function running ``runs`` batch-1 calls on one thread and returning us per call."""
    if raw:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, {"x": x})  # noqa: E731
    else:
        model = load(path, providers="cpu", threads=1)
        call = lambda: model.run(x)  # noqa: E731
    for _ in range(200):
        call()

    def timed(runs: int) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            call()
        return (time.perf_counter() - start) * 1e6 / runs
    return timed


def parity(page, path: Path, url: str, features: int) -> tuple[float, bool]:
    x = np.random.default_rng(1).random((64, features), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, isolated = 0.0, False
    for rows in (x, x[:1]):
        got = page.evaluate(RUN_IN_PAGE, [url, rows.ravel().tolist(), list(rows.shape)])
        y = np.asarray(got["data"], np.float32).reshape(rows.shape)
        worst = max(worst, float(np.abs(y - session.run(None, {"x": rows})[0]).max()))
        isolated = got["isolated"]
    return worst, isolated


def latency(page, path: Path, url: str, features: int, *, runs: int, rounds: int) -> dict:
    x = np.random.default_rng(2).random((1, features), dtype=np.float32)
    rows = x.ravel().tolist()
    out = {}
    for raw in (False, True):
        py = python_timer(path, x, raw=raw)
        browser, native = [], []
        for _ in range(rounds):
            browser.append(page.evaluate(TIME_IN_PAGE, [url, rows, runs, raw])["meanUs"])
            time.sleep(SETTLE_S)
            native.append(py(runs))
            time.sleep(SETTLE_S)
        out["raw" if raw else "checked"] = {
            "browser_us": statistics.median(browser), "python_us": statistics.median(native),
            "ratio": statistics.median(browser) / statistics.median(native),
            # The best round of each: closest to an unloaded machine when others share it.
            "browser_best_us": min(browser), "python_best_us": min(native),
            "best_ratio": min(browser) / min(native)}
    return out


def bench_file(browser, path: Path, site: Path, features: int, *, runs: int, rounds: int) -> dict:
    report = write_site(path, site, force=True)
    page = browser.new_page()
    try:
        with serving(site) as base:
            page.goto(base + "?runs=0")
            page.wait_for_selector("#result[data-status]", state="attached", timeout=120_000)
            status = json.loads(page.text_content("#result"))
            if status["status"] != "ok":
                raise RuntimeError(f"the page failed on {path.name}: {status['error']}")
            url = report.models[0]["url"]
            worst, isolated = parity(page, path, url, features)
            timing = latency(page, path, url, features, runs=runs, rounds=rounds)
    finally:
        page.close()
    return {"file": path.name, "model_bytes": report.models[0]["bytes"],
            "download_bytes": report.download_bytes, "download_gzip_bytes": report.download_gzip_bytes(),
            "runtime_bytes": report.runtime_bytes, "max_abs": worst, "isolated": isolated, **timing}


def chromium_version(executable: str) -> str:
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "unknown"


def print_table(size: str, rows: list[dict]) -> None:
    print(f"\n{size} tied autoencoder: batch-1 us per call, one thread each, "
          "median of rounds [best round]")
    print("| file | model B | download B (gzip) | max abs vs ort-python | browser checked | "
          "python checked | ratio [best] | browser raw | python raw | ratio [best] |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = []
        for key in ("checked", "raw"):
            t = r[key]
            cells += [f"{t['browser_us']:.1f} [{t['browser_best_us']:.1f}]",
                      f"{t['python_us']:.1f} [{t['python_best_us']:.1f}]",
                      f"{t['ratio']:.2f} [{t['best_ratio']:.2f}]"]
        print(f"| {r['file']} | {r['model_bytes']:,} | {r['download_bytes']:,} "
              f"({r['download_gzip_bytes']:,}) | {r['max_abs']:.1e} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x32,784x256", help="FEATURESxHIDDEN, comma-separated")
    parser.add_argument("--runs", type=int, default=1000, help="calls per timing round (>= 1000)")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per contender")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if args.runs < 1000 or args.runs % 100:
        parser.error(f"--runs must be a multiple of 100, at least 1000; received {args.runs}")
    from playwright.sync_api import sync_playwright

    print(describe())
    print(f"{chromium_version(args.chromium)}; onnxruntime-web {ORT_WEB_VERSION} (wasm, 1 thread); "
          f"load average {os.getloadavg()[0]:.1f} at start (other work on the machine skews medians)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        for size in args.sizes.split(","):
            features, hidden = (int(v) for v in size.lower().split("x"))
            fp32 = tied_autoencoder(features, hidden, weight_scale=features ** -0.5, bias_scale=0.1)
            rows = []
            for precision in PRECISIONS:
                path = Path(tmp) / f"ae{features}.{precision}.onnx"
                onnx.save(fp32 if precision == "fp32" else to_precision(fp32, precision), path)
                rows.append(bench_file(browser, path, Path(tmp) / f"site-{size}-{precision}",
                                       features, runs=args.runs, rounds=args.rounds))
            results[size] = rows
            print_table(size, rows)
        browser.close()
    flat = [r for rows in results.values() for r in rows]
    slow = [r["file"] for r in flat if r["checked"]["ratio"] > RATIO_TARGET]
    print(f"\nisolated pages: {all(r['isolated'] for r in flat)}; parity target <= {PARITY_TARGET:g}: "
          f"{'met' if all(r['max_abs'] <= PARITY_TARGET for r in flat) else 'MISSED'}; "
          f"latency target <= {RATIO_TARGET:g}x (checked, median): "
          f"{'met' if not slow else 'MISSED for ' + ', '.join(slow)}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
