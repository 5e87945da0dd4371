// tiedonnx.mjs: run a tied ONNX model in the browser on onnxruntime-web (wasm).
//
// Mirrors the Python runtime (tiedonnx.runtime):
//
//   import { load } from "./tiedonnx.mjs";
//   const model = await load("ae.onnx");        // model.inputs, model.outputs
//   const out = await model.run({ data: Float32Array.from(pixels), dims: [1, 64] });
//   out.y.data, out.y.dims                      // by output name
//
// Inputs are checked before onnxruntime sees them, with the Python runtime's
// wording and accept/refuse table: names, rank, fixed axis sizes, dims (whole
// numbers), nesting (never ragged), dtype (bool included), NaN/inf (refused unless
// {allowNonfinite: true}). Every problem found is reported in one InputError.
// Other float types are cast to the model's (as Keras does); integers are cast
// to the model's integer type only when every value fits.
//
// "onnxruntime-web" is a bare specifier: the page's import map points it at
// the pinned ort.wasm.min.mjs (local copy or CDN). Its .wasm is taken from the
// same folder, as an absolute URL (onnxruntime-web resolves a relative
// wasmPaths against its own module, not the page).
import * as ort from "onnxruntime-web";

export class TiedOnnxError extends Error {
  constructor(message) { super(message); this.name = new.target.name; }
}
export class InputError extends TiedOnnxError {}
export class ModelFileError extends TiedOnnxError {}
export class UsageError extends TiedOnnxError {}

export const ortVersion = ort.env.versions?.web ?? "unknown";
const WASM_FILE = "ort-wasm-simd-threaded.wasm";

const TYPED = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, uint8: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array, bool: Uint8Array,
};
if (globalThis.Float16Array) TYPED.float16 = globalThis.Float16Array;
const INT_RANGE = {
  int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], uint16: [0, 65535],
  int32: [-2147483648, 2147483647], uint32: [0, 4294967295],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER], uint64: [0, Number.MAX_SAFE_INTEGER],
};
const kind = (dtype) => (dtype.startsWith("float") ? "f" : dtype === "bool" ? "b" : "i");

// ---- set-up: once, before the first session ---------------------------------

let settings = null;
let ready = null;

/**
 * Set up onnxruntime-web once, before the first load().
 * @param {{numThreads?: number, wasmIntegrity?: string|null}} options
 *   numThreads: wasm threads (default 1; more needs a cross-origin-isolated page).
 *   wasmIntegrity: SRI hash the .wasm must match ("sha384-..."), fetched by us.
 */
export function configure({ numThreads = 1, wasmIntegrity = null } = {}) {
  const wanted = { numThreads, wasmIntegrity };
  if (settings) {
    if (JSON.stringify(settings) === JSON.stringify(wanted)) return;
    throw new UsageError(`onnxruntime-web is already set up with ${JSON.stringify(settings)}; ` +
      `received ${JSON.stringify(wanted)}. Call configure() once, before the first load().`);
  }
  if (!Number.isInteger(numThreads) || numThreads < 1) {
    throw new UsageError(`numThreads must be a positive integer. Received: numThreads=${numThreads}.`);
  }
  if (numThreads > 1 && !globalThis.crossOriginIsolated) {
    throw new UsageError(`numThreads=${numThreads} needs a cross-origin-isolated page ` +
      "(COOP/COEP headers; 'tiedonnx web --serve' sends them); this page is not " +
      "(crossOriginIsolated=false). Serve it with those headers, or use numThreads: 1.");
  }
  settings = wanted;
}

function setUp() {
  if (!settings) configure();
  ready ??= (async () => {
    const base = new URL(".", import.meta.resolve("onnxruntime-web")).href;
    ort.env.wasm.wasmPaths = base;
    ort.env.wasm.numThreads = settings.numThreads;
    if (settings.wasmIntegrity) {
      let response;
      try {
        response = await fetch(base + WASM_FILE, { integrity: settings.wasmIntegrity });
      } catch (err) {
        throw new UsageError(`Could not fetch ${base + WASM_FILE} with integrity ` +
          `${settings.wasmIntegrity} (${err.message}): the file is missing or differs from ` +
          "the pinned onnxruntime-web release. Rebuild the site with 'tiedonnx web'.");
      }
      ort.env.wasm.wasmBinary = new Uint8Array(await response.arrayBuffer());
    }
  })();
  return ready;
}

// ---- loading ----------------------------------------------------------------

/**
 * Load an .onnx file; resolve to a TiedModel.
 * @param {string} url  the model's URL (relative to the page).
 * @param {{numThreads?: number, wasmIntegrity?: string|null}} options  see configure().
 */
export async function load(url, options = undefined) {
  if (options) configure(options);
  await setUp();
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new ModelFileError(`Could not fetch the model ${url} (${err.message}). Check the URL.`);
  }
  if (!response.ok) {
    throw new ModelFileError(`Model file not found at ${url} (HTTP ${response.status}). ` +
      "Check the URL; the site serves its models next to index.html.");
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all",
    });
  } catch (err) {
    const first = String(err?.message ?? err).split("\n")[0];
    throw new ModelFileError(`onnxruntime-web ${ortVersion} could not load ${url}: ${first}. ` +
      "Re-export the model, or check that its operators run on the wasm backend.");
  }
  return new TiedModel(session, url, bytes.length);
}

function spec(meta) {
  if (!meta.isTensor) {
    throw new ModelFileError(`Value ${meta.name} is not a tensor; tiedonnx runs tensor models only.`);
  }
  // Symbolic or unknown axes are dynamic ("?"), as in the Python TensorSpec.
  const shape = meta.shape.map((d) => (typeof d === "number" && d >= 0 ? d : String(d || "?")));
  return Object.freeze({ name: meta.name, shape: Object.freeze(shape), dtype: meta.type });
}

export const shapeText = (shape) => (shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`);

// onnxruntime-web's wasm backend runs one session.run at a time in a page: a second run
// started while one is in flight (another session, or a warm-up beside a generation) fails
// inside OrtRun ("output name cannot be empty"). Every run of this module and generate.mjs
// waits its turn in this one queue.
let runQueue = Promise.resolve();

export class TiedModel {
  constructor(session, url, bytes) {
    this.session = session;
    this.url = url;
    this.bytes = bytes;
    this.inputs = Object.freeze(session.inputMetadata.map(spec));
    this.outputs = Object.freeze(session.outputMetadata.map(spec));
  }

  /**
   * Run the model; resolve to {outputName: {data, dims, dtype}}.
   * @param feeds  one tensor (one-input models) or {inputName: tensor}. A tensor is
   *   {data, dims} (typed array or numbers), an ort.Tensor, or nested arrays.
   * @param {{allowNonfinite?: boolean}} options
   */
  async run(feeds, { allowNonfinite = false } = {}) {
    const ready = prepareFeeds(feeds, this.inputs, { allowNonfinite });
    const tensors = Object.fromEntries(Object.entries(ready).map(([name, f]) =>
      [name, new ort.Tensor(f.dtype, f.data, f.dims)]));
    const results = await this.runTensors(tensors);
    const out = {};
    for (const s of this.outputs) {
      const t = results[s.name];
      out[s.name] = { data: t.data, dims: [...t.dims], dtype: t.type };
    }
    return out;
  }

  /** session.run(tensors) of ort.Tensor feeds, in turn with every other run in the page. */
  runTensors(tensors) {
    const result = runQueue.then(() => this.session.run(tensors));
    runQueue = result.catch(() => {});
    return result;
  }
}

// ---- input checks (same rules and wording as tiedonnx/runtime/inputs.py) ----
//
// The accept/refuse table is the Python runtime's, feed by feed (tests/test_web_inputs.py
// runs the same hostile feeds through both). JavaScript has no int/float distinction
// in plain numbers, so an array of numbers stands for numpy's float64 for a float
// input and must hold safe integers for an integer one; an array of booleans, or an
// ort.Tensor of type "bool", is numpy's bool (a bool input takes nothing else).

/** Check feeds against specs and cast them: {name: {data, dims, dtype}}, ready for ort.Tensor. */
export function prepareFeeds(feeds, specs, { allowNonfinite = false } = {}) {
  const arrays = checkInputs(feeds, specs);
  return Object.fromEntries(specs.map((s) => [s.name, {
    data: materialize(s, arrays[s.name], allowNonfinite), dims: arrays[s.name].dims, dtype: s.dtype,
  }]));
}

/** Match feeds to specs by name, rank, fixed axes and dtype kind; raise every problem at once. */
export function checkInputs(feeds, specs) {
  const arrays = byName(feeds, specs);
  const problems = specs.flatMap((s) => checkOne(s, arrays[s.name]));
  if (problems.length) throw new InputError(problems.join("; "));
  const batches = Object.fromEntries(specs.map((s) => [s.name, arrays[s.name].dims[0]]));
  if (new Set(Object.values(batches)).size > 1) {
    throw new InputError(`Inputs have different batch sizes: ${JSON.stringify(batches)}. ` +
      "Pass the same number of rows to each.");
  }
  const first = arrays[specs[0].name];
  if (first.dims.length && first.dims[0] === 0) {
    throw new InputError(`Input '${specs[0].name}' is an empty batch (received shape ` +
      `${shapeText(first.dims)}). Pass at least one row.`);
  }
  return arrays;
}

const isTensorLike = (v) => v instanceof ort.Tensor ||
  (v !== null && typeof v === "object" && !Array.isArray(v) && !ArrayBuffer.isView(v) &&
   "data" in v && "dims" in v);

function byName(feeds, specs) {
  const names = specs.map((s) => s.name);
  if (feeds !== null && typeof feeds === "object" && !Array.isArray(feeds) &&
      !ArrayBuffer.isView(feeds) && !isTensorLike(feeds)) {
    const given = Object.keys(feeds);
    const missing = names.filter((n) => !given.includes(n));
    const unexpected = given.filter((n) => !names.includes(n));
    if (missing.length || unexpected.length) {
      throw new InputError(`Input names do not match the model. Missing: ${list(missing)}; ` +
        `unexpected: ${list(unexpected)}. The model takes ${list(names)}.`);
    }
    return Object.fromEntries(names.map((n) => [n, asArray(feeds[n], n)]));
  }
  if (specs.length !== 1) {
    throw new InputError(`The model takes ${specs.length} inputs ${list(names)}; received one ` +
      `${typeName(feeds)}. Pass an object keyed by input name.`);
  }
  return { [names[0]]: asArray(feeds, names[0]) };
}

const list = (xs) => `[${xs.map((x) => `'${x}'`).join(", ")}]`;
const typeName = (v) => (v === null ? "null" : v?.constructor?.name ?? typeof v);
const short = (v) => { const t = typeof v === "string" ? `'${v}'` : String(v); return t.length > 40 ? `${t.slice(0, 37)}...` : t; };

// Typed array class -> dtype name, for received data (bool shares Uint8Array: see dtypeOf).
const DTYPE_OF = new Map(Object.entries(TYPED).filter(([n]) => n !== "bool").map(([n, T]) => [T, n]));

/** The dtype of received data: a typed array's, "number" / "bool" for plain arrays, else null. */
function dtypeOf(data, declared) {
  if (Array.isArray(data)) {
    if (data.every((x) => typeof x === "number")) return "number";
    if (data.length && data.every((x) => typeof x === "boolean")) return "bool";
    return null;  // strings, mixed, objects: numpy would make an object or string array
  }
  const dtype = DTYPE_OF.get(data?.constructor) ?? null;
  return declared === "bool" && dtype === "uint8" ? "bool" : dtype;  // ort.Tensor("bool", Uint8Array)
}

/** Dims of a nested array, every level checked (numpy refuses ragged nesting); null if ragged. */
function nestedDims(value) {
  const dims = [];
  for (let v = value; Array.isArray(v); v = v[0]) dims.push(v.length);
  const walk = (v, depth) => (depth === dims.length ? !Array.isArray(v)
    : Array.isArray(v) && v.length === dims[depth] && v.every((x) => walk(x, depth + 1)));
  return walk(value, 0) ? dims : null;
}

const badDims = (dims) => !Array.isArray(dims) && !ArrayBuffer.isView(dims) ? true
  : Array.from(dims).some((d) => !Number.isSafeInteger(Number(d)) || Number(d) < 0 || typeof d === "string");

/** One input as {data, dims, dtype}; nested arrays get their dims as numpy would. */
function asArray(value, name) {
  let data, dims, declared = null;
  if (isTensorLike(value)) {
    ({ data, dims } = value);
    declared = value.type ?? value.dtype ?? null;
    if (badDims(dims)) {
      throw new InputError(`Input '${name}' has dims ${short(Array.isArray(dims) ? `[${dims}]` : dims)}: ` +
        "dims must be an array of non-negative whole numbers, one per axis, e.g. [1, 64].");
    }
    dims = Array.from(dims, Number);
  } else if (Array.isArray(value)) {
    dims = nestedDims(value);
    if (dims === null) {
      throw new InputError(`Input '${name}' could not be read as an array (received ragged ` +
        "nested arrays: rows of different lengths or depths). Pass {data, dims} with a typed array.");
    }
    data = value.flat(Infinity);
  } else {
    data = value;
    dims = ArrayBuffer.isView(value) ? [value.length] : null;
  }
  const dtype = data == null ? null : dtypeOf(data, declared);
  if (dtype === null || dims === null) {
    throw new InputError(`Input '${name}' could not be read as an array (received ` +
      `${Array.isArray(data) ? "an array of non-numbers" : typeName(value)}). ` +
      "Pass {data: Float32Array, dims: [batch, ...]}.");
  }
  return { data, dims, dtype };
}

function fix(s) {
  if (s.dtype === "bool") return "booleans (Array.from(x, Boolean)) or new ort.Tensor('bool', Uint8Array.from(x), dims)";
  return `${TYPED[s.dtype]?.name ?? s.dtype}.from(x)`;
}

function checkOne(s, a) {
  const expected = shapeText(s.shape), got = shapeText(a.dims);
  if (a.dims.length !== s.shape.length) {
    const hint = a.dims.length === s.shape.length - 1 ? ` Add a batch axis: dims [1, ${a.dims}].` : "";
    return [`Input '${s.name}' expects shape ${expected} (rank ${s.shape.length}); received ` +
      `shape ${got} (rank ${a.dims.length}).${hint}`];
  }
  const problems = [];
  const size = a.dims.reduce((x, y) => x * y, 1);
  if (a.data.length !== size) {
    problems.push(`Input '${s.name}' has dims ${got} (${size} values) but its data holds ` +
      `${a.data.length} values. Make dims match the data.`);
  }
  const bad = s.shape.findIndex((d, i) => typeof d === "number" && a.dims[i] !== d);
  if (bad >= 0) {
    problems.push(`Input '${s.name}' expects shape ${expected}; received shape ${got} ` +
      `(axis ${bad} is ${a.dims[bad]}, expected ${s.shape[bad]}).`);
  }
  const want = kind(s.dtype);
  const compatible = a.dtype === "number" ? want !== "b" : a.dtype === "bool" ? want === "b"
    : kind(a.dtype) === want && want !== "b";
  if (!compatible) {
    problems.push(`Input '${s.name}' expects dtype ${s.dtype}; received ${a.dtype}. Convert it ` +
      `explicitly (${fix(s)}), scaling first if the values need it.`);
  }
  return problems;
}

// 64-bit ranges as BigInt: a BigInt64Array holds values past Number's safe range.
const BIG_RANGE = { int64: [-(2n ** 63n), 2n ** 63n - 1n], uint64: [0n, 2n ** 64n - 1n] };

function outOfRange(s, v) {
  if (typeof v === "bigint") {
    const [lo, hi] = BIG_RANGE[s.dtype] ?? INT_RANGE[s.dtype].map(BigInt);
    return v < lo || v > hi;
  }
  const [lo, hi] = s.dtype in BIG_RANGE ? [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER] : INT_RANGE[s.dtype];
  return !Number.isSafeInteger(v) || v < lo || v > hi;
}

/** Cast one input to the model's dtype and check its values. */
function materialize(s, a, allowNonfinite) {
  const T = TYPED[s.dtype];
  if (!T) {
    throw new InputError(`Input '${s.name}' has dtype ${s.dtype}, which this browser cannot ` +
      "build (no typed array for it). Use a browser with Float16Array, or an fp32 input model.");
  }
  let data = a.data;
  if (s.dtype === "bool") {
    const bad = Array.prototype.findIndex.call(data, (v) => v !== true && v !== false && v !== 0 && v !== 1);
    if (bad >= 0) {
      throw new InputError(`Input '${s.name}' expects bool; received value ${short(data[bad])} ` +
        `(at flat index ${bad}) in a bool tensor, which holds only 0 and 1. Fix the data.`);
    }
    return data instanceof Uint8Array ? data : Uint8Array.from(data, (v) => (v ? 1 : 0));
  }
  if (kind(s.dtype) === "i") {
    const bad = Array.prototype.findIndex.call(data, (v) => outOfRange(s, v));
    if (bad >= 0) {
      throw new InputError(`Input '${s.name}' expects ${s.dtype}; received ${a.dtype} value ` +
        `${data[bad]} (at flat index ${bad}), not an integer in ${s.dtype}'s range. Fix the data.`);
    }
    const big = s.dtype.endsWith("int64");
    if (!(data instanceof T)) data = T.from(data, big ? (v) => BigInt(v) : Number);
  } else if (!(data instanceof T)) {
    data = T.from(data);
  }
  if (kind(s.dtype) === "f" && !allowNonfinite) {
    const bad = data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) {
      const rowSize = a.dims.slice(1).reduce((x, y) => x * y, 1) || 1;
      const row = Math.floor(bad / rowSize), source = a.data[bad];
      if (Number.isFinite(Number(source))) {
        throw new InputError(`Input '${s.name}' holds ${a.dtype} values outside ${s.dtype}'s range ` +
          `(first at row ${row}: ${source}); cast to ${s.dtype} they become inf. Scale the data, ` +
          "or pass {allowNonfinite: true} to run it anyway.");
      }
      throw new InputError(`Input '${s.name}' contains NaN or inf (first at row ` +
        `${row}). Clean the data, or pass {allowNonfinite: true} to run it anyway.`);
    }
  }
  return data;
}

// ---- timing -----------------------------------------------------------------

/**
 * Time model.run(feeds): `runs` calls after `warmup`, in blocks of `block` calls.
 * Returns {runs, block, meanUs, medianBlockUs, minBlockUs, isolated}: block
 * means, because performance.now() is coarse (100 us) outside cross-origin
 * isolation and a batch-1 call is shorter than that.
 */
export async function timeRuns(model, feeds, { runs = 1000, block = 100, warmup = 50, raw = false } = {}) {
  let tensors = null;
  if (raw) {  // the bare session, inputs checked and cast once up front
    tensors = Object.fromEntries(Object.entries(prepareFeeds(feeds, model.inputs)).map(([name, f]) =>
      [name, new ort.Tensor(f.dtype, f.data, f.dims)]));
  }
  const call = raw ? () => model.session.run(tensors) : () => model.run(feeds);
  for (let i = 0; i < warmup; i++) await call();
  const blocks = [];
  const start = performance.now();
  for (let done = 0; done < runs; done += block) {
    const t0 = performance.now();
    for (let i = 0; i < block; i++) await call();
    blocks.push(((performance.now() - t0) * 1000) / block);
  }
  const total = performance.now() - start;
  const sorted = [...blocks].sort((x, y) => x - y);
  return {
    runs: blocks.length * block, block, meanUs: (total * 1000) / (blocks.length * block),
    medianBlockUs: sorted[Math.floor(sorted.length / 2)], minBlockUs: sorted[0],
    isolated: Boolean(globalThis.crossOriginIsolated),
  };
}
