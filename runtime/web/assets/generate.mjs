// generate.mjs: text generation from a tiedonnx generation folder, in the browser.
//
//   import { loadLM } from "./generate.mjs";
//   const lm = await loadLM("lm/");                  // tiedonnx.json, tokenizer.json, the decoder
//   const out = await lm.generate("The tie", { max_new_tokens: 32, sampler: "top_k", seed: 7,
//                                             onToken: ({ token, piece }) => show(piece) });
//   out.tokens, out.text, out.decode_tokens_per_s
//
// Mirrors tiedonnx.runtime.generate (one prompt per call): the same options (named
// as in Python), the same checks and error wording, the same loop (the prompt runs
// once, then one decoder step per token), and the samplers of tiedonnx.runtime.sampling
// with its Mulberry32 generator, so a seed gives the same draws as Python.
//
// The cache stays in onnxruntime-web tensors: each step's present.* outputs are
// fed back, as the same ort.Tensor objects, as the next step's past_key_values.*;
// this module never reads or copies them. (The wasm backend itself copies a
// run's inputs into wasm memory and its outputs out: it has no way to keep
// outputs inside wasm between runs; WebGPU's preferredOutputLocation has.)
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import { InputError, ModelFileError, UsageError, configure, load } from "./tiedonnx.mjs";

export { InputError, ModelFileError, UsageError };

// ---- random numbers and samplers (tiedonnx/runtime/sampling.py, line by line) ----

/** Tommy Ettinger's mulberry32: the draws of Python's Mulberry32 for the same seed. */
export class Mulberry32 {
  constructor(seed) { this.state = Number(seed) >>> 0; }
  random() {
    this.state = (this.state + 0x6D2B79F5) >>> 0;
    const a = this.state;
    let t = Math.imul(a ^ (a >>> 15), a | 1) >>> 0;
    t = ((t + (Math.imul(t ^ (t >>> 7), t | 61) >>> 0)) >>> 0) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** The k largest of row/t, descending, lower id first on ties (numpy's stable argsort of -x). */
function topK(row, k, t) {
  const ids = [], vals = [];
  for (let i = 0; i < row.length; i++) {
    const v = row[i] / t;
    if (ids.length === k && !(v > vals[k - 1])) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    while (at > 0 && vals[at - 1] < v) at--;
    ids.splice(at, 0, i); vals.splice(at, 0, v);
    if (ids.length > k) { ids.pop(); vals.pop(); }
  }
  return [ids, vals];
}

// Candidates of top_p are sorted only down to e^-60 below the top: the rest hold
// < 5e-22 of the mass together, which does not change a float64 sum of ~1.
const TOP_P_FLOOR = 60;

function sortedAll(row, t) {
  let top = -Infinity;
  for (let i = 0; i < row.length; i++) top = Math.max(top, row[i] / t);
  const ids = [];
  for (let i = 0; i < row.length; i++) if (row[i] / t >= top - TOP_P_FLOOR) ids.push(i);
  ids.sort((a, b) => row[b] / t - row[a] / t || a - b);
  return [ids, ids.map((i) => row[i] / t)];
}

/** Candidate ids and probabilities, as sampling.py's _candidates. */
export function candidates(row, s) {
  let [ids, scaled] = s.sampler === "top_k" ? topK(row, s.top_k, s.temperature) : sortedAll(row, s.temperature);
  let probs = scaled.map((v) => Math.exp(v - scaled[0]));
  const total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  if (s.sampler === "top_p") {
    let keep = probs.length, c = 0;
    for (let i = 0; i < probs.length; i++) { c += probs[i]; if (c >= s.top_p) { keep = i + 1; break; } }
    ids = ids.slice(0, keep);
    const kept = probs.slice(0, keep), sum = kept.reduce((a, b) => a + b, 0);
    probs = kept.map((p) => p / sum);
  }
  return [ids, probs];
}

/** One next token for one row of logits (a Float32Array over the vocabulary). */
export function sample(row, s, rng) {
  if (s.sampler === "greedy") return argmax(row);
  const [ids, probs] = candidates(row, s);
  const u = rng.random();
  let c = 0;
  for (let i = 0; i < ids.length; i++) { c += probs[i]; if (c > u) return ids[i]; }
  return ids[ids.length - 1];
}

// ---- options and prompts: the Python runtime's checks and wording ----------

/** Python's repr for the values an error shows (strings quoted, lists bracketed), cut to n characters. */
function pyRepr(v, n = 80) {
  const r = (x) => (typeof x === "string" ? `'${x}'` : Array.isArray(x) || ArrayBuffer.isView(x)
    ? `[${Array.from(x, r).join(", ")}]` : x === null || x === undefined ? "None"
      : typeof x === "boolean" ? (x ? "True" : "False") : String(x));
  return r(v).slice(0, n);
}
const isInt = (v) => typeof v === "number" && Number.isInteger(v);
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/** SamplerSettings.make: unset options from the folder's defaults, then 1.0 / 50 / 0.9. */
export function samplerSettings(options, defaults = {}) {
  const sampler = options.sampler || defaults.sampler || "greedy";
  if (!["greedy", "top_k", "top_p"].includes(sampler)) {
    throw new UsageError(`Unknown sampler. Received: sampler=${pyRepr(sampler)}. Use 'greedy', 'top_k' or 'top_p'.`);
  }
  const temperature = options.temperature ?? Number(defaults.temperature ?? 1.0);
  const top_k = options.top_k ?? Math.trunc(defaults.top_k ?? 50);
  const top_p = options.top_p ?? Number(defaults.top_p ?? 0.9);
  if (!isNum(temperature) || !(temperature > 0 && temperature < 1e6)) {
    throw new UsageError(`temperature must be a number > 0. Received: temperature=${pyRepr(temperature)}.`);
  }
  if (!isInt(top_k) || top_k < 1) throw new UsageError(`top_k must be an integer >= 1. Received: top_k=${pyRepr(top_k)}.`);
  if (!isNum(top_p) || !(top_p > 0 && top_p <= 1)) throw new UsageError(`top_p must be in (0, 1]. Received: top_p=${pyRepr(top_p)}.`);
  return { sampler, temperature, top_k, top_p };
}

function checkOptions(o) {
  if (!isInt(o.max_new_tokens) || o.max_new_tokens < 1) {
    throw new UsageError(`max_new_tokens must be an integer >= 1. Received: max_new_tokens=${pyRepr(o.max_new_tokens)}.`);
  }
  if (o.seed !== undefined && o.seed !== null && !isInt(o.seed)) {
    throw new UsageError(`seed must be an integer. Received: seed=${pyRepr(o.seed)}.`);
  }
  const stops = o.stop_token_ids;
  if (stops !== undefined && stops !== null && (typeof stops === "string" || !Array.isArray(stops) || !stops.every(isInt))) {
    throw new UsageError(`stop_token_ids must be a list of token ids. Received: ${pyRepr(stops)}.`);
  }
}

// ---- loading ------------------------------------------------------------------

async function fetchJson(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new ModelFileError(`Could not fetch ${what} ${url} (${err.message}). Check the URL.`);
  }
  if (!response.ok) {
    throw new ModelFileError(`Not a generation folder: ${url} is missing (HTTP ${response.status}). Write one with ` +
      "`tiedonnx export model.keras -o DIR --task generate`, then `tiedonnx web DIR site/`.");
  }
  try {
    return await response.json();
  } catch {
    throw new ModelFileError(`${url} is not valid JSON. Export the folder again.`);
  }
}

function checkConfig(c, url) {
  const bad = (key, want) => new ModelFileError(`'${url}': field '${key}' must be ${want}. ` +
    `Received: ${pyRepr(c?.[key])}. Export the folder again.`);
  if (c === null || typeof c !== "object" || Array.isArray(c)) throw new ModelFileError(`'${url}' must hold a JSON object.`);
  for (const key of ["num_layers", "num_kv_heads", "head_dim", "vocabulary_size"]) {
    if (!isInt(c[key]) || c[key] < 1) throw bad(key, "a positive integer");
  }
  if (c.max_length !== null && c.max_length !== undefined && (!isInt(c.max_length) || c.max_length < 2)) {
    throw bad("max_length", "an integer >= 2, or null");
  }
  if (typeof c.model_file !== "string" || c.model_file.startsWith("/") || c.model_file.split("/").includes("..")) {
    throw bad("model_file", "a relative path inside the folder");
  }
  const eos = c.eos_token_ids ?? [];
  if (!Array.isArray(eos) || !eos.every((t) => isInt(t) && t >= 0 && t < c.vocabulary_size)) {
    throw bad("eos_token_ids", `a list of token ids below ${c.vocabulary_size}`);
  }
  if (c.tokenizer != null && (typeof c.tokenizer !== "string" || c.tokenizer.includes("/"))) {
    throw bad("tokenizer", "a file name in the folder, or null");
  }
}

/**
 * Open a generation folder served at `url` (ending in "/").
 * @param {string} url  the folder's URL, e.g. "lm/".
 * @param {{numThreads?: number, wasmIntegrity?: string|null}} options  see configure() in tiedonnx.mjs.
 */
export async function loadLM(url, options = undefined) {
  if (!url.endsWith("/")) url += "/";
  if (options) configure(options);
  const config = await fetchJson(`${url}tiedonnx.json`, "the folder's tiedonnx.json");
  checkConfig(config, `${url}tiedonnx.json`);
  let tokenizer = null;
  if (config.tokenizer) {
    const json = await fetchJson(url + config.tokenizer, "the tokenizer");
    const extra = await fetchJson(`${url}tokenizer_config.json`, "the tokenizer config").catch(() => ({}));
    try {
      tokenizer = new Tokenizer(json, extra);
    } catch (err) {
      throw new ModelFileError(`${url}${config.tokenizer} could not be read by @huggingface/tokenizers ` +
        `(${err.message}). Export the folder again.`);
    }
  }
  const model = await load(url + config.model_file);
  return new LanguageModel(url, config, model, tokenizer);
}

const kvNames = (n, prefix, kinds = ["key", "value"]) =>
  Array.from({ length: n }, (_, i) => kinds.map((k) => `${prefix}.${i}.${k}`)).flat();

// A plain macrotask: whatever the page has queued (paint, clicks, timers) runs first.
const queuedTask = () => new Promise((resolve) => {
  const c = new MessageChannel();
  c.port1.onmessage = () => resolve();
  c.port2.postMessage(0);
});
// Between tokens: lets the page paint the text streamed so far. scheduler.yield() resumes
// ahead of other queued tasks (the generation keeps its place); the warm-up uses queuedTask.
const nextTask = () => (globalThis.scheduler?.yield ? globalThis.scheduler.yield() : queuedTask());

export class LanguageModel {
  constructor(url, config, model, tokenizer) {
    this.url = url;
    this.config = config;
    this.model = model;
    this.tokenizer = tokenizer;
    this.pastNames = kvNames(config.num_layers, "past_key_values");
    this.presentNames = kvNames(config.num_layers, "present");
    const inputs = model.inputs.map((s) => s.name).sort();
    const outputs = model.outputs.map((s) => s.name).sort();
    // attention_mask (all ones, past + new positions) carries the lengths; folders written before it have none.
    this.hasMask = inputs.includes("attention_mask");
    const wanted = ["input_ids", ...this.pastNames, ...(this.hasMask ? ["attention_mask"] : [])];
    if (JSON.stringify(inputs) !== JSON.stringify(wanted.sort()) ||
        JSON.stringify(outputs) !== JSON.stringify(["logits", ...this.presentNames].sort())) {
      throw new ModelFileError(`'${config.model_file}' is not the decoder ${url}tiedonnx.json describes: inputs ` +
        `${pyRepr(inputs.slice(0, 4))}..., outputs ${pyRepr(outputs.slice(0, 4))}...; expected input_ids, ` +
        `attention_mask and past_key_values.* for ${config.num_layers} layers. Export the folder again.`);
    }
    const dtype = (name) => model.inputs.find((s) => s.name === name).dtype;
    this.idsType = dtype("input_ids");
    this.cacheType = dtype(this.pastNames[0]);
    this.warming = null;
  }

  /**
   * Run throwaway one-token decoder steps for `seconds` (contexts up to 64 tokens), then stop.
   * V8 first runs onnxruntime-web's wasm in its baseline tier and compiles a function with
   * its optimizing tier only once that function has run for a while: on a tiny decoder the
   * first ~1.5 s of steps are 2-4x slower than the later ones. Warming up at load time, while
   * the visitor types, moves that cost out of the first generate() call. A generate() called
   * during the warm-up stops it after the current step. Resolves {steps, seconds}.
   */
  warmUp(seconds = 2) {
    if (!isNum(seconds) || seconds < 0) {
      throw new UsageError(`warm-up seconds must be a number >= 0. Received: ${pyRepr(seconds)}.`);
    }
    this.warming = this.warmLoop(seconds * 1000).finally(() => { this.warming = null; });
    return this.warming;
  }

  async warmLoop(ms) {
    const run = new Run(this, null, null, new Set(), {}, false);
    const longest = Math.min(64, (this.config.max_length ?? 65) - 1), start = performance.now();
    let past = run.emptyPast(), length = 0, steps = 0, yielded = start;
    this.stopWarming = false;
    while (!this.stopWarming && performance.now() - start < ms) {
      if (length === longest) [past, length] = [run.emptyPast(), 0];
      [, past] = await run.step([0], past);
      length += 1;
      steps += 1;
      if (performance.now() - yielded > 10) {  // a run resolves in microtasks: let the page paint and take clicks
        await queuedTask();
        yielded = performance.now();
      }
    }
    return { steps, seconds: (performance.now() - start) / 1000 };
  }

  /** Token ids of `text`, after the start token where the model's preprocessor adds one. */
  encode(text) {
    const ids = this.needTokenizer().encode(text, { add_special_tokens: false }).ids.map(Number);
    return this.config.add_bos_token ? [this.config.bos_token_id, ...ids] : ids;
  }

  /** Text of `ids`, special tokens left out. */
  decode(ids) {
    return this.needTokenizer().decode(Array.from(ids, Number),
      { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  needTokenizer() {
    if (!this.tokenizer) {
      throw new UsageError(`Generation folder '${this.url}' has no tokenizer: pass token ids ` +
        "(a list of ints) instead of text, or export a model that has its preprocessor.");
    }
    return this.tokenizer;
  }

  /** [ids, isText] of one prompt: text, token ids, or a batch of one of those (as Python takes it). */
  promptIds(prompt, inBatch = false) {
    if (typeof prompt === "string") return [this.encode(prompt), true];
    if (ArrayBuffer.isView(prompt)) prompt = Array.from(prompt, Number);
    if (!Array.isArray(prompt) || (!prompt.length && !inBatch)) {
      throw new InputError("prompts must be a string, a list of strings or a list of token-id lists. " +
        `Received: ${Array.isArray(prompt) ? "list" : typeof prompt} ${pyRepr(prompt, 60)}.`);
    }
    const nested = prompt.filter((p) => typeof p === "string" || Array.isArray(p) || ArrayBuffer.isView(p));
    if (!inBatch && nested.length === prompt.length && prompt.length > 1) {
      throw new UsageError(`generate() in the browser takes one prompt (text or token ids); received ${prompt.length}. ` +
        "Call it once per prompt.");
    }
    if (!inBatch && nested.length === 1 && prompt.length === 1) return this.promptIds(prompt[0], true);
    if (!prompt.every(isInt)) {
      throw new InputError(`Prompt 0 must be text or a list of token ids. Received: ${pyRepr(prompt, 60)}. ` +
        "Do not mix text and token ids in one batch.");
    }
    const bad = prompt.filter((t) => !(t >= 0 && t < this.config.vocabulary_size));
    if (bad.length) {
      throw new InputError(`Prompt 0 has token ids outside the vocabulary [0, ${this.config.vocabulary_size}): ` +
        `${pyRepr(bad.slice(0, 5))}. Use ids the model's tokenizer produces.`);
    }
    return [prompt, false];
  }

  checkFits(length, maxNew) {
    const limit = this.config.max_length;
    if (limit !== null && limit !== undefined && length + maxNew > limit) {
      const room = limit - length;
      const fix = room >= 1 ? `lower max_new_tokens to ${room}` : `shorten the prompt to at most ${limit - 1} tokens`;
      throw new InputError(`A prompt of ${length} tokens plus max_new_tokens=${maxNew} exceeds the ` +
        `model's maximum length ${limit}; ${fix}.`);
    }
  }

  /**
   * Generate up to max_new_tokens tokens after `prompt` (text, or an array of token ids).
   * @param options  max_new_tokens (32), sampler, temperature, top_k, top_p (defaults from the folder),
   *   seed (0), stop_token_ids (default: the folder's end tokens; [] for none), as in Python;
   *   onToken({token, piece, index}) called per token (piece: new text, "" while a character
   *   is cut between tokens, null for id prompts); signal: an AbortSignal that stops the loop.
   * @returns {tokens, text, prompt_tokens, finish_reason, time_to_first_token_s, decode_seconds,
   *   decode_steps, decode_tokens_per_s, settings}
   */
  async generate(prompt, options = {}) {
    const o = { max_new_tokens: 32, ...options };
    const settings = samplerSettings(o, this.config.defaults ?? {});
    checkOptions(o);
    const [ids, isText] = this.promptIds(prompt);
    if (!ids.length) throw new InputError("Prompt 0 is empty (0 tokens). Give every prompt at least one token.");
    this.checkFits(ids.length, o.max_new_tokens);
    const stops = new Set(o.stop_token_ids ?? this.config.eos_token_ids ?? []);
    if (this.warming) {
      this.stopWarming = true;
      await this.warming;
    }
    const run = new Run(this, settings, new Mulberry32(o.seed ?? 0), stops, o, isText && this.tokenizer !== null);
    return run.go(ids);
  }
}

/** One generate() call: the cache (ort tensors), the loop and its timings. */
class Run {
  constructor(lm, settings, rng, stops, o, decode) {
    Object.assign(this, { lm, settings, rng, stops, o, decode });
    this.tokens = [];
    this.shown = "";
  }

  idsTensor(ids) {
    const data = this.lm.idsType === "int64" ? BigInt64Array.from(ids, BigInt) : Int32Array.from(ids);
    return new ort.Tensor(this.lm.idsType, data, [1, ids.length]);
  }

  emptyPast() {
    const c = this.lm.config;
    const data = this.lm.cacheType === "float16" ? new Uint16Array(0) : new Float32Array(0);
    return Object.fromEntries(this.lm.pastNames.map((n) => [n, new ort.Tensor(this.lm.cacheType, data, [1, c.num_kv_heads, 0, c.head_dim])]));
  }

  /** One decoder call; returns the last position's logits and the present.* tensors as the next past. */
  async step(ids, past) {
    const feeds = { input_ids: this.idsTensor(ids), ...past };
    if (this.lm.hasMask) {  // the page grows the past: its length plus the new tokens
      const total = past[this.lm.pastNames[0]].dims[2] + ids.length;
      feeds.attention_mask = new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]);
    }
    const out = await this.lm.model.runTensors(feeds);
    const logits = out.logits, [, seq, vocab] = logits.dims;
    const row = Float32Array.from(logits.data.subarray((seq - 1) * vocab, seq * vocab));
    logits.dispose();
    const next = {};
    this.lm.pastNames.forEach((name, i) => { next[name] = out[this.lm.presentNames[i]]; });
    return [row, next];
  }

  piece() {
    if (!this.decode) return null;
    const text = this.lm.decode(this.tokens);
    if (text.endsWith("\ufffd")) return "";
    const piece = text.slice(this.shown.length);
    this.shown = text;
    return piece;
  }

  async go(ids) {
    const start = performance.now();
    let [row, past] = await this.step(ids, this.emptyPast());
    let firstAt = null, reason = "length";
    for (;;) {
      const token = sample(row, this.settings, this.rng);
      this.tokens.push(token);
      firstAt ??= performance.now();
      if (this.o.onToken) {
        this.o.onToken({ token, piece: this.piece(), index: this.tokens.length - 1 });
        await nextTask();
      }
      if (this.stops.has(token)) { reason = "stop"; break; }
      if (this.tokens.length >= this.o.max_new_tokens) break;
      if (this.o.signal?.aborted) { reason = "aborted"; break; }
      [row, past] = await this.step([token], past);
    }
    const end = performance.now();
    const steps = this.tokens.length - 1, seconds = (end - firstAt) / 1000;
    return {
      tokens: this.tokens, text: this.decode ? this.lm.decode(this.tokens) : null, prompt_tokens: ids.length,
      finish_reason: reason, time_to_first_token_s: (firstAt - start) / 1000, decode_seconds: seconds,
      decode_steps: steps, decode_tokens_per_s: seconds > 0 ? steps / seconds : 0, settings: this.settings,
    };
  }
}
