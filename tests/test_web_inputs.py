"""The browser module's input checks (tiedonnx.mjs) accept and refuse what the Python runtime does.

Issue 26, case 8. Each case is one feed for a one-input model, written twice:
as JavaScript builds it (typed array, ``ort.Tensor``, plain or nested array,
``dims``) and as its Python counterpart (a numpy array or a nested list), with
the outcome a person expects, written by hand. The Python side runs through
``check_inputs`` + ``materialize`` (what ``run`` does); the JavaScript side
through ``prepareFeeds`` (what ``TiedModel.run`` does), in node and in Chromium.
Both must give the expected outcome, and accepted feeds must hold the same values.

JavaScript has no int/float distinction in plain numbers: an array of numbers
stands for numpy's float64 for a float input and for int64 for an integer one.
Cases marked ``py=None`` are forms only JavaScript can express (``dims`` that
are not whole numbers, data whose length contradicts ``dims``): JavaScript must
refuse them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tiedonnx.runtime.errors import InputError, UsageError
from tiedonnx.runtime.inputs import TensorSpec, check_inputs, materialize
from tiedonnx.runtime.testing import tied_autoencoder
from tiedonnx.runtime.web import ort_web, write_site

from .browser import evaluate_in_site

ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "web" / "assets"
HARNESS = Path(__file__).resolve().parent / "web" / "inputs_harness.mjs"
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    PACKAGE = ort_web.dist_dir().parent
except UsageError:
    PACKAGE = None
pytestmark = pytest.mark.skipif(PACKAGE is None, reason="onnxruntime-web is not installed")

F4, B2, I3, U2 = ("float32", ["batch", 4]), ("bool", ["batch", 2]), ("int64", ["batch", 3]), ("uint8", ["batch", 2])
Q = [0.25, 0.5, 0.75, 1.0]


def case(id_, spec, js, py, expect):
    """``py``: (numpy dtype, values, shape) for an array, ("list", nested) for a list, or None."""
    return {"id": id_, "spec": {"dtype": spec[0], "shape": spec[1]}, "js": js, "py": py, "expect": expect}


CASES = [
    # float32 input
    case("f32_typed", F4, {"form": "typed", "array": "Float32Array", "values": Q, "dims": [1, 4]},
         ("float32", Q, [1, 4]), "accept"),
    case("f64_typed_cast", F4, {"form": "typed", "array": "Float64Array", "values": Q, "dims": [1, 4]},
         ("float64", Q, [1, 4]), "accept"),
    case("f64_overflows_f32", F4, {"form": "typed", "array": "Float64Array", "values": [1e300, 0, 0, 0],
                                   "dims": [1, 4]}, ("float64", [1e300, 0, 0, 0], [1, 4]), "refuse"),
    case("f32_nan", F4, {"form": "typed", "array": "Float32Array", "values": [0, {"special": "NaN"}, 0, 0],
                         "dims": [1, 4]}, ("float32", [0, float("nan"), 0, 0], [1, 4]), "refuse"),
    case("f64_inf_nested", F4, {"form": "nested", "values": [[0, 0, {"special": "-Infinity"}, 0]]},
         ("list", [[0, 0, float("-inf"), 0]]), "refuse"),
    case("plain_null", F4, {"form": "plain", "values": [0, None, 0, 0], "dims": [1, 4]},
         ("list", [[0, None, 0, 0]]), "refuse"),
    case("int32_for_float", F4, {"form": "typed", "array": "Int32Array", "values": [1, 2, 3, 4], "dims": [1, 4]},
         ("int32", [1, 2, 3, 4], [1, 4]), "refuse"),
    case("nested_numbers", F4, {"form": "nested", "values": [Q, Q]}, ("list", [Q, Q]), "accept"),
    case("nested_ragged_rows", F4, {"form": "nested", "values": [Q, Q[:3]]}, ("list", [Q, Q[:3]]), "refuse"),
    case("nested_ragged_depth", F4, {"form": "nested", "values": [Q, [Q]]}, ("list", [Q, [Q]]), "refuse"),
    case("plain_strings", F4, {"form": "plain", "values": ["1", "2", "3", "4"], "dims": [1, 4]},
         ("str", ["1", "2", "3", "4"], [1, 4]), "refuse"),
    case("nested_strings", F4, {"form": "nested", "values": [["a", "b", "c", "d"]]},
         ("list", [["a", "b", "c", "d"]]), "refuse"),
    case("nested_mixed", F4, {"form": "nested", "values": [[1, "b", 3, 4]]}, ("list", [[1, "b", 3, 4]]), "refuse"),
    case("booleans_for_float", F4, {"form": "nested", "values": [[True, False, True, False]]},
         ("list", [[True, False, True, False]]), "refuse"),
    case("wrong_fixed_axis", F4, {"form": "typed", "array": "Float32Array", "values": [0] * 5, "dims": [1, 5]},
         ("float32", [0] * 5, [1, 5]), "refuse"),
    case("rank_1", F4, {"form": "bare", "array": "Float32Array", "values": Q}, ("float32", Q, [4]), "refuse"),
    case("empty_batch", F4, {"form": "typed", "array": "Float32Array", "values": [], "dims": [0, 4]},
         ("float32", [], [0, 4]), "refuse"),
    case("dims_text", F4, {"form": "typed", "array": "Float32Array", "values": [0] * 8, "dims": "18"},
         None, "refuse"),
    case("dims_fraction", F4, {"form": "typed", "array": "Float32Array", "values": [0] * 8, "dims": [0.5, 8]},
         None, "refuse"),
    case("dims_negative", F4, {"form": "typed", "array": "Float32Array", "values": Q, "dims": [-1, 4]},
         None, "refuse"),
    case("dims_strings", F4, {"form": "typed", "array": "Float32Array", "values": Q, "dims": ["1", "4"]},
         None, "refuse"),
    case("dims_contradict_data", F4, {"form": "typed", "array": "Float32Array", "values": Q, "dims": [2, 4]},
         None, "refuse"),
    # bool input
    case("bool_nested_booleans", B2, {"form": "nested", "values": [[True, False], [False, True]]},
         ("list", [[True, False], [False, True]]), "accept"),
    case("bool_tensor", B2, {"form": "tensor", "type": "bool", "array": "Uint8Array", "values": [1, 0],
                             "dims": [1, 2]}, ("bool", [True, False], [1, 2]), "accept"),
    case("bool_plain_booleans", B2, {"form": "plain", "values": [True, True], "dims": [1, 2]},
         ("bool", [True, True], [1, 2]), "accept"),
    case("uint8_for_bool", B2, {"form": "typed", "array": "Uint8Array", "values": [1, 0], "dims": [1, 2]},
         ("uint8", [1, 0], [1, 2]), "refuse"),
    case("numbers_for_bool", B2, {"form": "nested", "values": [[1.0, 0.0]]}, ("list", [[1.0, 0.0]]), "refuse"),
    case("float32_for_bool", B2, {"form": "typed", "array": "Float32Array", "values": [1, 0], "dims": [1, 2]},
         ("float32", [1, 0], [1, 2]), "refuse"),
    case("bool_tensor_holding_2", B2, {"form": "tensor", "type": "bool", "array": "Uint8Array", "values": [2, 0],
                                       "dims": [1, 2]}, None, "refuse"),
    # int64 input
    case("int64_big_values", I3, {"form": "typed", "array": "BigInt64Array", "values": ["1", "-2", str(2**62)],
                                  "dims": [1, 3]}, ("int64", [1, -2, 2**62], [1, 3]), "accept"),
    case("int32_for_int64", I3, {"form": "typed", "array": "Int32Array", "values": [1, 2, 3], "dims": [1, 3]},
         ("int32", [1, 2, 3], [1, 3]), "accept"),
    case("uint32_max_for_int64", I3, {"form": "typed", "array": "Uint32Array", "values": [2**32 - 1, 0, 0],
                                      "dims": [1, 3]}, ("uint32", [2**32 - 1, 0, 0], [1, 3]), "accept"),
    case("integral_numbers", I3, {"form": "nested", "values": [[1, 2, 3]]}, ("list", [[1, 2, 3]]), "accept"),
    case("fractional_numbers", I3, {"form": "nested", "values": [[1.5, 2, 3]]}, ("list", [[1.5, 2, 3]]), "refuse"),
    case("float32_for_int64", I3, {"form": "typed", "array": "Float32Array", "values": [1, 2, 3], "dims": [1, 3]},
         ("float32", [1, 2, 3], [1, 3]), "refuse"),
    case("uint64_past_int64", I3, {"form": "typed", "array": "BigUint64Array", "values": [str(2**63), "0", "0"],
                                   "dims": [1, 3]}, ("uint64", [2**63, 0, 0], [1, 3]), "refuse"),
    case("booleans_for_int64", I3, {"form": "nested", "values": [[True, False, True]]},
         ("list", [[True, False, True]]), "refuse"),
    # uint8 input
    case("int16_out_of_uint8", U2, {"form": "typed", "array": "Int16Array", "values": [300, 1], "dims": [1, 2]},
         ("int16", [300, 1], [1, 2]), "refuse"),
    case("int16_in_uint8", U2, {"form": "typed", "array": "Int16Array", "values": [3, 1], "dims": [1, 2]},
         ("int16", [3, 1], [1, 2]), "accept"),
    case("negative_numbers_for_uint8", U2, {"form": "nested", "values": [[-1, 2]]}, ("list", [[-1, 2]]), "refuse"),
]


def _js_cases() -> list[dict]:
    """What the JavaScript side sees of each case (the Python counterpart stays here)."""
    return [{k: c[k] for k in ("id", "spec", "js")} for c in CASES]


def _python_outcome(c: dict) -> dict:
    spec = TensorSpec("x", tuple(c["spec"]["shape"]), np.dtype(c["spec"]["dtype"]))
    if c["py"][0] == "list":
        feed = c["py"][1]
    else:
        dtype, values, shape = c["py"]
        feed = np.array(values, dtype=dtype).reshape(shape)
    try:
        arrays, _ = check_inputs(feed, (spec,))
        out = materialize(arrays, (spec,))["x"]
    except InputError as exc:
        return {"outcome": "refuse", "message": str(exc)}
    exact = str if out.dtype in (np.int64, np.uint64) else float  # JavaScript returns 64-bit values as text
    return {"outcome": "accept", "values": [exact(v) for v in out.ravel().tolist()], "dims": list(out.shape)}


def _check(results: list[dict]) -> None:
    by_id = {r["id"]: r for r in results}
    wrong = []
    for c in CASES:
        js = by_id[c["id"]]
        if js["outcome"] != c["expect"]:
            wrong.append(f"{c['id']}: JavaScript {js['outcome']} ({js.get('message', '')[:120]}), expected {c['expect']}")
        if c["py"] is None:
            continue
        py = _python_outcome(c)
        if py["outcome"] != c["expect"]:
            wrong.append(f"{c['id']}: Python {py['outcome']}, expected {c['expect']}")
        elif py["outcome"] == "accept" and (py["values"] != js.get("values") or py["dims"] != js.get("dims")):
            wrong.append(f"{c['id']}: accepted values differ: Python {py['values']} {py['dims']}, "
                         f"JavaScript {js.get('values')} {js.get('dims')}")
    assert not wrong, "\n".join(wrong)


def test_python_runtime_gives_the_expected_outcomes():
    """The table itself, on the reference side (no JavaScript needed)."""
    wrong = [f"{c['id']}: {_python_outcome(c)['outcome']}" for c in CASES
             if c["py"] is not None and _python_outcome(c)["outcome"] != c["expect"]]
    assert not wrong, wrong


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_browser_module_matches_python_in_node(tmp_path):
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "onnxruntime-web").symlink_to(PACKAGE, target_is_directory=True)
    shutil.copy(ASSETS / "tiedonnx.mjs", tmp_path / "tiedonnx.mjs")
    shutil.copy(HARNESS, tmp_path / "harness.mjs")
    (tmp_path / "cases.json").write_text(json.dumps(_js_cases()))
    (tmp_path / "run.mjs").write_text(
        'import * as ort from "onnxruntime-web";\nimport * as t from "./tiedonnx.mjs";\n'
        'import { runCases } from "./harness.mjs";\nimport { readFileSync } from "node:fs";\n'
        'console.log(JSON.stringify(runCases(JSON.parse(readFileSync(process.argv[2], "utf8")), t, ort)));\n')
    done = subprocess.run([NODE, str(tmp_path / "run.mjs"), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _check(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (Debian: apt-get install -y chromium)")
def test_browser_module_matches_python_in_chromium(tmp_path):
    model = tmp_path / "ae.onnx"
    onnx.save(tied_autoencoder(8, 4), model)
    site = tmp_path / "site"
    write_site(model, site)
    shutil.copy(HARNESS, site / "harness.mjs")
    results = evaluate_in_site(site, """async (cases) => {
        const ort = await import("onnxruntime-web");
        const t = await import("./tiedonnx.mjs");
        const h = await import("./harness.mjs");
        return h.runCases(cases, t, ort);
    }""", _js_cases())
    _check(results)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (Debian: apt-get install -y chromium)")
def test_bool_input_runs_in_chromium_as_in_onnxruntime(tmp_path):
    """End to end: booleans go through load() and run() on onnxruntime-web (a Not node)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.BOOL, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.BOOL, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Not", ["x"], ["y"])], "g", [x], [y])
    model = tmp_path / "not.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    feed = [[True, False, True], [False, False, True]]
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array(feed)})[0]
    write_site(model, tmp_path / "site")
    got = evaluate_in_site(tmp_path / "site", """async (feed) => {
        const t = await import("./tiedonnx.mjs");
        const model = await t.load("not.onnx");
        const out = await model.run(feed);
        return { data: Array.from(out.y.data, Number), dims: out.y.dims, dtype: out.y.dtype };
    }""", feed)
    assert got["dtype"] == "bool" and got["dims"] == [2, 3]
    assert got["data"] == expected.astype(int).ravel().tolist()
