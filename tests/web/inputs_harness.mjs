// Runs the hostile feeds of tests/test_web_inputs.py through tiedonnx.mjs's prepareFeeds.
// Shared by the node run and the Chromium run; the caller passes the two modules.
// A case's js.form: "typed" {data: new T(values), dims}, "tensor" new ort.Tensor(type, ...),
// "plain" {data: values, dims}, "nested" the values themselves, "bare" new T(values).
const BIG = new Set(["BigInt64Array", "BigUint64Array"]);

// JSON has no NaN or infinity: {"special": "NaN"} stands for one, at any depth.
const unjson = (v) => (Array.isArray(v) ? v.map(unjson)
  : v !== null && typeof v === "object" && "special" in v ? Number(v.special) : v);

function build(js, ort) {
  const T = js.array ? globalThis[js.array] : null;
  const values = T && BIG.has(js.array) ? js.values.map((v) => BigInt(v)) : unjson(js.values);
  switch (js.form) {
    case "typed": return { data: T.from(values), dims: js.dims };
    case "tensor": return new ort.Tensor(js.type, T.from(values), js.dims);
    case "plain": return { data: values, dims: js.dims };
    case "nested": return values;
    case "bare": return T.from(values);
    default: throw new Error(`unknown form ${js.form}`);
  }
}

export function runCases(cases, tiedonnx, ort) {
  return cases.map((c) => {
    const spec = { name: "x", shape: c.spec.shape, dtype: c.spec.dtype };
    try {
      const out = tiedonnx.prepareFeeds(build(c.js, ort), [spec]).x;
      return { id: c.id, outcome: "accept",
               values: Array.from(out.data, (v) => (typeof v === "bigint" ? v.toString() : Number(v))),
               dims: out.dims };
    } catch (err) {
      if (err instanceof tiedonnx.InputError) return { id: c.id, outcome: "refuse", message: err.message };
      return { id: c.id, outcome: `error ${err?.name}: ${err?.message}` };
    }
  });
}
