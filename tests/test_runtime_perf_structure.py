"""Issue 17's runtime changes, by structure and results (no timing: that is in scripts/bench_*.py).

The NaN/inf check reads every value; the one-row fast path (C binding, per-thread
I/O binding) returns the same numbers as onnxruntime, fresh arrays, per thread;
``.ort`` files load through ``load`` with the size caps and clear errors, and an
int8 ``.ort`` reads its tie through ``QGemm(transB=1)``, no per-call Transpose;
``load`` frees its copies of the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import REFERENCE_ATOL, save, tied_ae, tied_reference
from tiedonnx.runtime import InputError, ModelFileError, UsageError, load
from tiedonnx.runtime.graph.int8_qgemm import transposed_int8_to_qgemm
from tiedonnx.runtime.graph.ort_format import save_ort
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.inputs import all_finite

# .ort vs .onnx and QGemm vs Transpose+MatMulInteger of the same int8 model:
# measured max abs 0 on these graphs (the same integer arithmetic); the bound
# leaves room for other CPUs' kernels.
SAME_MATHS_ATOL = 1e-6


def _ort_ops(path) -> list[str]:
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts the flatbuffers schema on sys.path)
    from ort_flatbuffers_py import fbs

    root = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(bytearray(path.read_bytes()), 0)
    graph = root.Model().Graph()
    return [graph.Nodes(i).OpType().decode() for i in range(graph.NodesLength())]


def _raw(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_all_finite_checks_every_value(dtype):
    x = np.zeros((64, 40), dtype)
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        for index in ((0, 0), (63, 39), (31, 7)):  # first, last, middle
            y = x.copy()
            y[index] = bad
            assert not all_finite(y), (bad, index)
            assert not all_finite(np.asfortranarray(y)) and not all_finite(y[:, ::3] if index[1] % 3 == 0 else y)
    # Finite values whose squares overflow the dot product: the exact check says finite.
    huge = np.full((8, 8), np.finfo(dtype).max / 2, dtype)
    assert all_finite(huge) and all_finite(-huge)


def test_one_row_calls_match_onnxruntime_and_return_fresh_arrays(tmp_path, rng):
    path = save(tied_ae(32, 8), tmp_path / "ae.onnx")
    model = load(path, providers="cpu")
    x1, x2 = rng.random((1, 32), dtype=np.float32), rng.random((1, 32), dtype=np.float32)
    y1 = model.run(x1)["y"]
    kept = y1.copy()
    y2 = model.run(x2)["y"]
    assert y1 is not y2 and np.array_equal(y1, kept)  # the second call did not overwrite the first
    np.testing.assert_array_equal(y1, _raw(path, x1))
    np.testing.assert_array_equal(y2, _raw(path, x2))
    strided = np.repeat(x1, 2, axis=1)[:, ::2]  # not C-contiguous, same values
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(model.run(strided)["y"], y1)
    np.testing.assert_allclose(model.run(np.vstack([x1, x2]))["y"], np.vstack([y1, y2]), atol=REFERENCE_ATOL)


def test_the_fast_path_uses_onnxruntimes_c_binding(tmp_path, rng, monkeypatch):
    model = load(save(tied_ae(), tmp_path / "ae.onnx"), providers="cpu")

    def refuse(*args, **kwargs):
        raise AssertionError("InferenceSession.run (the Python wrapper) was called")

    monkeypatch.setattr(model._session, "run", refuse)
    for rows in (1, 4):
        x = rng.random((rows, 8), dtype=np.float32)
        np.testing.assert_allclose(model.run(x)["y"], tied_reference(x), atol=REFERENCE_ATOL)


def test_nan_and_inf_are_refused_on_the_fast_path_and_allowed_on_request(tmp_path, rng):
    model = load(save(tied_ae(), tmp_path / "ae.onnx"), providers="cpu")
    for rows in (1, 3):
        x = rng.random((rows, 8), dtype=np.float32)
        x[-1, -1] = np.inf
        with pytest.raises(InputError, match=f"contains NaN or inf \\(first at row {rows - 1}\\)"):
            model.run(x)
        assert model.run(x, allow_nonfinite=True)["y"].shape == (rows, 8)
    clean = rng.random((1, 8), dtype=np.float32)  # a refused call leaves nothing behind
    np.testing.assert_allclose(model.run(clean)["y"], tied_reference(clean), atol=REFERENCE_ATOL)


def test_threads_each_get_their_own_binding(tmp_path, rng):
    model = load(save(tied_ae(16, 4), tmp_path / "ae.onnx"), providers="cpu")
    inputs = [rng.random((1, 16), dtype=np.float32) for _ in range(4)]
    expected = [tied_reference(x, 16, 4) for x in inputs]
    errors = []

    def worker(i):
        for _ in range(300):
            got = model.run(inputs[i])["y"]
            if not np.allclose(got, expected[i], atol=REFERENCE_ATOL):
                errors.append(i)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_outputs_whose_declared_shape_is_wrong_are_not_bound(tmp_path, rng):
    # Declared y[batch, 4]; a one-row input really gives (2, 4). The binding's
    # first call checks the plan against a plain run and drops the binding.
    shape = numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [shape])
    model = load(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                      tmp_path / "r.onnx"), providers="cpu")
    x = rng.random((1, 8), dtype=np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(model.run(x)["y"], x.reshape(2, 4))


def _int8_graph(per_channel: bool = False):
    return to_precision(tied_ae(32, 8), "int8", per_channel=per_channel)


@pytest.mark.parametrize("per_channel", [False, True])
def test_qgemm_pass_reads_the_int8_tie_directly(tmp_path, rng, per_channel):
    model = _int8_graph(per_channel)
    before = save(model, tmp_path / "before.onnx")
    _, written = transposed_int8_to_qgemm(model)
    ops = [n.op_type for n in model.graph.node]
    assert len(written) == 1 and "Transpose" not in ops and ops.count("QGemm") == 1
    qgemm = next(n for n in model.graph.node if n.op_type == "QGemm")
    matrices = [i.name for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 2]
    assert len(matrices) == 1  # the tie, stored once
    assert qgemm.input[3] == matrices[0] and qgemm.domain == "com.microsoft"
    assert {a.name: a.i for a in qgemm.attribute} == {"transB": 1}
    onnx.checker.check_model(model, full_check=True)
    x = rng.random((5, 32), dtype=np.float32)
    np.testing.assert_allclose(_raw(save(model, tmp_path / "after.onnx"), x), _raw(before, x),
                               atol=SAME_MATHS_ATOL)
    assert transposed_int8_to_qgemm(model)[1] == []  # idempotent


def test_qgemm_pass_leaves_rank_3_inputs_alone():
    model = to_precision(tied_ae(rank=3), "int8")
    assert transposed_int8_to_qgemm(model)[1] == []
    assert "Transpose" in [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ort_files_run_without_a_per_call_transpose_and_load_through_tiedonnx(tmp_path, rng, precision):
    onnx_path = save(to_precision(tied_ae(32, 8), precision), tmp_path / "m.onnx")
    ort_path = tmp_path / "m.ort"
    save_ort(onnx_path, ort_path)
    ops = _ort_ops(ort_path)
    assert "Transpose" not in ops, ops
    if precision == "int8":
        assert "QGemm" in ops and "DynamicQuantizeMatMul" in ops
    model, reference = load(ort_path, providers="cpu"), load(onnx_path, providers="cpu")
    for x in (rng.random((3, 32), dtype=np.float32), rng.random((1, 32), dtype=np.float32)):
        np.testing.assert_allclose(model.run(x)["y"], reference.run(x)["y"], atol=SAME_MATHS_ATOL)


def test_ort_files_are_checked_before_onnxruntime_reads_them(tmp_path):
    onnx_path = save(tied_ae(), tmp_path / "m.onnx")
    good = tmp_path / "m.ort"
    save_ort(onnx_path, good)
    with pytest.raises(UsageError, match="memory='lean' rewrites the ONNX graph.*ORT-format"):
        load(good, memory="lean")
    truncated = tmp_path / "truncated.ort"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated.ort.*(not a readable ORT-format|cannot load)"):
        load(truncated)
    renamed = tmp_path / "onnx_inside.ort"
    renamed.write_bytes((tmp_path / "m.onnx").read_bytes())
    with pytest.raises(ModelFileError, match="is not an ORT-format model.*expected b'ORTM'"):
        load(renamed)
    with pytest.raises(ModelFileError, match="over the limit of 100"):
        load(good, max_bytes=100)
    empty = tmp_path / "empty.ort"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load(empty)


_RSS = r"""
import gc, json, sys
import onnxruntime as ort
import tiedonnx.runtime.session as s, tiedonnx.runtime.model_file, tiedonnx.runtime.graph.ort_format, onnx.checker
from tiedonnx.runtime.rss import rss_bytes as rss
big, tiny, mode = sys.argv[1:4]
if mode == "raw":
    ort.InferenceSession(tiny, providers=["CPUExecutionProvider"])
else:
    s.load(tiny, providers="cpu")
before = rss()
kept = ort.InferenceSession(big, providers=["CPUExecutionProvider"]) if mode == "raw" else s.load(big, providers="cpu")
print(json.dumps(rss() - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_load_keeps_no_copy_of_the_model_beyond_onnxruntimes(tmp_path):
    # 2048x1024 float32 tie = 8 MiB. Before load() freed its proto (a reference
    # cycle) and trimmed the heap, it kept 2 extra copies (measured +16 MiB).
    big, tiny = save(tied_ae(2048, 1024), tmp_path / "big.onnx"), save(tied_ae(), tmp_path / "tiny.onnx")
    grown = {mode: json.loads(subprocess.run([sys.executable, "-c", _RSS, big, tiny, mode], check=True,
                                             capture_output=True, text=True).stdout) / 2**20
             for mode in ("raw", "tiedonnx")}
    assert grown["raw"] > 14, grown  # the session really holds the tie (twice, folded)
    assert grown["tiedonnx"] - grown["raw"] <= 2, grown
