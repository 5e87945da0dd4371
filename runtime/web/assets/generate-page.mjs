// The generation page: load the site's generation folder (lm/), stream generated text
// into #output, show tokens/s and the download size. The page's state is also written
// as JSON into #result (data-status="ready" | "done" | "error") for headless checks.
// URL parameters: ?threads=N (wasm threads; default 2 when cross-origin isolated, else 1),
// ?warmup=S (seconds of throwaway decoder steps after loading, default 2; 0 for none:
// see LanguageModel.warmUp in generate.mjs). "ready" is reported after the warm-up.
import { loadLM } from "./generate.mjs";
import { ortVersion } from "./tiedonnx.mjs";

const $ = (id) => document.getElementById(id);
const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

function report(status, fields) {
  $("result").textContent = JSON.stringify({ status, ...fields });
  $("result").dataset.status = status;
  if (status === "error") {
    $("error").textContent = fields.error;
    $("error").hidden = false;
  }
}

function downloadText(site) {
  const sum = (files) => files.reduce((a, f) => a + f.bytes, 0);
  const runtime = sum(site.runtime.files), tokenizerLib = sum(site.tokenizer_runtime?.files ?? []);
  const model = site.models[0].bytes, data = sum(site.data_files ?? []);
  return `download ${mb(runtime + tokenizerLib + model + data)}: decoder ${site.models[0].file} ${mb(model)}, ` +
    `onnxruntime-web ${mb(runtime)}, tokenizer ${mb(tokenizerLib + data)} (library and files)`;
}

function options() {
  const num = (id) => Number($(id).value);
  return { sampler: $("sampler").value, temperature: num("temperature"), top_k: num("top_k"),
    top_p: num("top_p"), seed: num("seed"), max_new_tokens: num("max_new_tokens") };
}

async function generate(lm) {
  const output = $("output"), controller = new AbortController();
  const prompt = $("prompt").value;
  output.replaceChildren(Object.assign(document.createElement("span"), { className: "prompt", textContent: prompt }));
  const text = output.appendChild(document.createTextNode(""));
  $("error").hidden = true;
  $("go").disabled = true;
  $("stop").disabled = false;
  $("stop").onclick = () => controller.abort();
  const input = lm.tokenizer ? prompt : prompt.split(/[\s,]+/).filter(Boolean).map(Number);
  try {
    const out = await lm.generate(input, { ...options(), signal: controller.signal, onToken: ({ token, piece }) => {
      text.data += piece ?? ` ${token}`;
    } });
    if (out.text !== null) text.data = out.text;  // the end, with a character left cut by the last token
    $("speed").textContent = `${out.tokens.length} tokens; first after ${(out.time_to_first_token_s * 1000).toFixed(0)} ms, ` +
      `then ${out.decode_tokens_per_s.toFixed(1)} tokens/s (${out.finish_reason})`;
    report("done", { tokens: out.tokens, text: out.text, decode_tokens_per_s: out.decode_tokens_per_s });
  } catch (err) {
    report("error", { error: `${err.name}: ${err.message}` });
  } finally {
    $("go").disabled = false;
    $("stop").disabled = true;
  }
}

async function main() {
  const site = await (await fetch("site.json")).json();
  const params = new URLSearchParams(location.search);
  const threadsParam = params.get("threads");
  const numThreads = threadsParam ? Number(threadsParam) : globalThis.crossOriginIsolated ? 2 : 1;
  const wasm = site.runtime.files.find((f) => f.name.endsWith(".wasm"));
  const lm = await loadLM(site.lm.url, {
    numThreads, wasmIntegrity: site.runtime.mode === "cdn" ? wasm.integrity : null });
  $("runtime").textContent = `onnxruntime-web ${ortVersion} (wasm, ${site.runtime.mode}, ${numThreads} thread(s)), ` +
    `cross-origin isolated: ${globalThis.crossOriginIsolated ? "yes" : "no"}`;
  $("download").textContent = downloadText(site);
  const d = { ...site.lm.defaults };
  for (const key of ["sampler", "temperature", "top_k", "top_p"]) if (d[key] !== undefined) $(key).value = d[key];
  if (!lm.tokenizer) $("prompt").value = "1 2 3";
  $("prompt").setAttribute("placeholder", lm.tokenizer ? "text" : "token ids, e.g. 1 2 3 (this folder has no tokenizer)");
  let started = false;
  $("go").onclick = () => { started = true; generate(lm); };
  $("go").disabled = false;
  window.tiedonnxLM = lm;  // for the console and headless checks
  $("speed").textContent = "warming up the runtime (a click on Generate stops it)";
  const warm = await lm.warmUp(Number(params.get("warmup") ?? 2));
  if (started) return;  // a generation already runs: it reports for itself
  $("speed").textContent = `warmed up: ${warm.steps} decoder steps in ${warm.seconds.toFixed(1)} s`;
  report("ready", { precision: site.lm.precision, threads: numThreads, warmup_steps: warm.steps,
    warmup_s: warm.seconds });
}

main().catch((err) => report("error", { error: `${err.name}: ${err.message}` }));
