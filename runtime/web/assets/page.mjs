// The model page: load the site's model, show its signature, run it on a fixed
// probe input and time batch-1 calls. The outcome is also written as JSON into
// #result (data-status="ok" | "error") for headless checks (--dump-dom).
import { load, ortVersion, shapeText, timeRuns } from "./tiedonnx.mjs";

const $ = (id) => document.getElementById(id);

/** Batch-1 feeds: dynamic axes are 1, value ((37 k) mod 101) / 100 at flat index k
 * (integers: not divided; bool: whether it is odd). */
export function probeFeeds(inputs) {
  return Object.fromEntries(inputs.map((s) => {
    const dims = s.shape.map((d) => (typeof d === "number" ? d : 1));
    const n = dims.reduce((a, b) => a * b, 1);
    const value = (k) => ((37 * k) % 101) / (s.dtype.startsWith("float") ? 100 : 1);
    const data = Array.from({ length: n }, (_, k) => (s.dtype === "bool" ? value(k) % 2 === 1 : value(k)));
    return [s.name, { data, dims }];
  }));
}

function row(role, s) {
  const tr = document.createElement("tr");
  for (const text of [role, s.name, shapeText(s.shape), s.dtype]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

async function main() {
  const site = await (await fetch("site.json")).json();
  const entry = site.models[0];
  const runs = Number(new URLSearchParams(location.search).get("runs") ?? 1000);
  const cdn = site.runtime.mode === "cdn";
  const wasm = site.runtime.files.find((f) => f.name.endsWith(".wasm"));
  const model = await load(entry.url, { wasmIntegrity: cdn ? wasm.integrity : null });
  const runtimeBytes = site.runtime.files.reduce((a, f) => a + f.bytes, 0);
  $("runtime").textContent = `onnxruntime-web ${ortVersion} (wasm, ${site.runtime.mode}), ` +
    `cross-origin isolated: ${globalThis.crossOriginIsolated ? "yes" : "no"}`;
  $("model-size").textContent = `${entry.file}: ${entry.bytes.toLocaleString()} bytes; ` +
    `runtime ${runtimeBytes.toLocaleString()} bytes`;
  $("signature").tBodies[0].append(...model.inputs.map((s) => row("input", s)),
    ...model.outputs.map((s) => row("output", s)));
  const feeds = probeFeeds(model.inputs);
  const outputs = await model.run(feeds);
  $("values").textContent = Object.entries(outputs).map(([name, t]) =>
    `${name} ${shapeText(t.dims)}: ${Array.from(t.data.slice(0, 8), (v) => Number(v).toFixed(6)).join(" ")}` +
    (t.data.length > 8 ? " ..." : "")).join("\n");
  const timing = runs > 0 ? await timeRuns(model, feeds, { runs, block: Math.min(100, runs) }) : null;
  $("timing").textContent = timing && timing.meanUs > 0
    ? `batch-1 latency: ${timing.meanUs.toFixed(1)} us per call (mean of ${timing.runs} calls)`
    : "batch-1 latency: not measured (runs=0, or a frozen clock)";
  const values = Object.fromEntries(Object.entries(outputs).map(([n, t]) =>
    [n, { dims: t.dims, dtype: t.dtype, data: Array.from(t.data, Number) }]));
  return { status: "ok", inputs: model.inputs, outputs: values, timing };
}

main().catch((err) => ({ status: "error", error: `${err.name}: ${err.message}` })).then((result) => {
  if (result.status === "error") {
    $("error").textContent = result.error;
    $("error").hidden = false;
  }
  $("result").textContent = JSON.stringify(result);
  $("result").dataset.status = result.status;
});
