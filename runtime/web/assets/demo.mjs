// The digits demo: draw on a canvas; every model file in site.json reconstructs
// the drawing live. The model input is S*S pixels in [0, 1] (ink = 1), row-major;
// S is read from the first model's input (8 for scikit-learn's digits, 28 for MNIST).
//
// window.tiedonnxDemo exposes {ready, state, update(), settled()} for headless checks:
// state.input (the S*S floats fed), state.outputs[label] (each reconstruction),
// state.updates (how many drawings were run), state.times[label] (the median ms of the
// last HISTORY runs, each model warmed up once first; 0 when the clock did not move).
import { load, ortVersion } from "./tiedonnx.mjs";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ink = pad.getContext("2d", { willReadFrequently: true });
const state = { input: null, outputs: {}, times: {}, history: {}, updates: 0 };
const HISTORY = 15;  // runs per model whose median time is shown: one call is noise
let models = [], site = null, side = 0, busy = false, again = false, running = null;

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;

/** The median of the last HISTORY times of ``label``, after adding ``ms``. */
function record(label, ms) {
  const times = (state.history[label] ??= []);
  times.push(ms);
  if (times.length > HISTORY) times.shift();
  const sorted = [...times].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** "0.41 ms (median of 15 runs)", or "time not measured" under a frozen clock. */
function timeText(label) {
  const ms = state.times[label], n = state.history[label].length;
  return ms > 0 ? `${ms.toFixed(2)} ms (median of ${n} run${n === 1 ? "" : "s"})`
    : "time not measured (the clock did not move)";
}

/** Area average of the pad over an S x S grid: each cell's ink fraction in [0, 1]. */
function padToInput() {
  const cell = pad.width / side;
  const { data } = ink.getImageData(0, 0, pad.width, pad.height);
  const out = new Float32Array(side * side);
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      out[Math.floor(y / cell) * side + Math.floor(x / cell)] += data[4 * (y * pad.width + x)];
    }
  }
  return out.map((v) => v / (255 * cell * cell));
}

function paint(canvas, values) {
  const small = new OffscreenCanvas(side, side);
  const ctx = small.getContext("2d");
  const img = ctx.createImageData(side, side);
  values.forEach((v, i) => {
    const g = Math.round(255 * Math.min(1, Math.max(0, v)));
    img.data.set([g, g, g, 255], 4 * i);
  });
  ctx.putImageData(img, 0, 0);
  const big = canvas.getContext("2d");
  big.imageSmoothingEnabled = false;
  big.drawImage(small, 0, 0, canvas.width, canvas.height);
}

/** Run every model on the current drawing; coalesces calls made while running. */
function update() {
  if (busy) { again = true; return running; }
  busy = true;
  running = runAll();
  return running;
}

/** Resolves once no drawing is waiting to be run. */
async function settled() {
  while (busy) await running;
}

async function runAll() {
  try {
    do {
      again = false;
      const input = padToInput();
      paint($("input"), input);
      for (const [i, model] of models.entries()) {
        const label = site.models[i].label;
        const t0 = performance.now();
        const out = await model.run({ data: input, dims: [1, side * side] });
        state.times[label] = record(label, performance.now() - t0);
        const values = Object.values(out)[0].data;
        state.outputs[label] = values;
        paint($(`out-${i}`), values);
        const ref = state.outputs[site.models[0].label];
        const diff = i === 0 ? "" : `\nmax |diff| vs ${site.models[0].label} ` +
          values.reduce((m, v, k) => Math.max(m, Math.abs(v - ref[k])), 0).toFixed(4);
        $(`meta-${i}`).textContent = `${kb(site.models[i].bytes)}, ${timeText(label)}${diff}`;
      }
      state.input = input;
      state.updates += 1;
    } while (again);
  } finally {
    busy = false;
  }
}

function stroke(points) {
  ink.beginPath();
  ink.moveTo(...points[0]);
  for (const p of points.slice(1)) ink.lineTo(...p);
  ink.stroke();
}

function setUpPad() {
  Object.assign(ink, { strokeStyle: "#fff", lineCap: "round", lineJoin: "round",
    lineWidth: pad.width * 0.085 });
  let last = null;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
  };
  pad.addEventListener("pointerdown", (e) => {
    pad.setPointerCapture(e.pointerId);
    last = at(e);
    stroke([last, last]);
    update();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    stroke([last, p]);
    last = p;
    update();
  });
  const end = () => { last = null; update(); };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    ink.clearRect(0, 0, pad.width, pad.height);
    update();
  });
}

function addPanels() {
  site.models.forEach((m, i) => {
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.innerHTML = `<canvas id="out-${i}" width="140" height="140"></canvas>` +
      `<div class="label"></div><div class="meta" id="meta-${i}"></div>`;
    panel.querySelector(".label").textContent = m.label;
    $("outputs").append(panel);
  });
}

async function main() {
  site = await (await fetch("site.json")).json();
  const cdn = site.runtime.mode === "cdn";
  const wasm = site.runtime.files.find((f) => f.name.endsWith(".wasm"));
  const options = { wasmIntegrity: cdn ? wasm.integrity : null };
  models = [];
  for (const m of site.models) models.push(await load(m.url, options));
  side = Math.round(Math.sqrt(models[0].inputs[0].shape[1]));
  // One untimed run each: the first call of a session pays for its set-up (9.7 ms vs 1.1 ms
  // for the next ones, issue 27), which is not the model's speed.
  for (const model of models) await model.run({ data: new Float32Array(side * side), dims: [1, side * side] });
  // A pad whose side is a multiple of S, so every input pixel averages whole pad pixels.
  pad.width = pad.height = side * Math.ceil(280 / side);
  $("runtime").textContent = `onnxruntime-web ${ortVersion} (wasm, ${site.runtime.mode}), ` +
    `${site.models.length} file(s)`;
  $("input-size").textContent = `${side} x ${side} = ${side * side} pixels`;
  const runtimeBytes = site.runtime.files.reduce((a, f) => a + f.bytes, 0);
  $("download").textContent = `Download: runtime ${kb(runtimeBytes)} + models ` +
    site.models.map((m) => `${m.label} ${kb(m.bytes)}`).join(", ");
  addPanels();
  setUpPad();
  const w = pad.width;  // a "7" to start from
  stroke([[0.25 * w, 0.2 * w], [0.75 * w, 0.2 * w], [0.42 * w, 0.85 * w]]);
  await update();
  return { status: "ok", side, labels: site.models.map((m) => m.label) };
}

const ready = main().catch((err) => ({ status: "error", error: `${err.name}: ${err.message}` }))
  .then((result) => {
    if (result.status === "error") {
      $("error").textContent = result.error;
      $("error").hidden = false;
    }
    $("result").textContent = JSON.stringify(result);
    $("result").dataset.status = result.status;
    return result;
  });
window.tiedonnxDemo = { ready, state, update, settled };
