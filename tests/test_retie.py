"""The retie pass on hand-built graphs: numbers and structure, before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import recorded_ties
from tiedonnx.runtime.graph import find_duplicates, retie
from tiedonnx.runtime.graph.duplicates import initializer_arrays


def _tied_by_copy_graph(w: np.ndarray, *, extra_copy: bool = False) -> onnx.ModelProto:
    """x @ W -> sigmoid -> @ W^T, with W^T stored as its own initializer (as exporters do)."""
    n_in, n_hidden = w.shape
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ascontiguousarray(w.T), "WT")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h0"]),
        helper.make_node("Sigmoid", ["h0"], ["h"]),
        helper.make_node("MatMul", ["h", "WT"], ["y0"]),
    ]
    if extra_copy:  # a third use: an exact copy of W
        inits.append(numpy_helper.from_array(w.copy(), "W_copy"))
        nodes += [helper.make_node("MatMul", ["y0", "W_copy"], ["y1"]),
                  helper.make_node("MatMul", ["y1", "WT"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_in])], inits)
    # IR version 8: what tf2onnx writes, and what older onnxruntime builds (1.23 on
    # Python 3.10) still load; make_model would stamp onnx's newest.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


@pytest.mark.parametrize("shape", [(4, 2), (784, 256)])  # the question's 4x2 kernel, and a real one
def test_folds_transposed_copy(shape, rng):
    w = rng.standard_normal(shape).astype(np.float32)
    model = _tied_by_copy_graph(w)
    x = rng.random((3, shape[0])).astype(np.float32)

    out, report = retie(model)

    onnx.checker.check_model(out, full_check=True)
    assert [i.name for i in out.graph.initializer] == ["W"]
    transposes = [n for n in out.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and list(transposes[0].input) == ["W"]
    assert list(transposes[0].attribute[0].ints) == [1, 0]
    np.testing.assert_array_equal(_run(out, x), _run(model, x))  # bit-identical outputs
    assert report.bytes_saved >= w.nbytes - 200  # W^T is gone; metadata costs a little
    ties = recorded_ties(out)
    assert ties == [{"initializer": "W", "shape": list(shape), "dtype": "float32",
                     "uses": [{"relation": "transpose", "perm": [1, 0], "output": "WT"}]}]
    assert len(model.graph.initializer) == 2, "the input model must not be modified"


def test_folds_exact_copy_and_is_idempotent(rng):
    w = rng.standard_normal((6, 3)).astype(np.float32)
    model = _tied_by_copy_graph(w, extra_copy=True)
    x = rng.random((2, 6)).astype(np.float32)
    out, report = retie(model)
    assert [i.name for i in out.graph.initializer] == ["W"]
    assert {(d.copy, d.relation) for d in report.folded} == {("WT", "transpose"), ("W_copy", "identity")}
    assert all("W_copy" not in n.input for n in out.graph.node)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))
    again, report2 = retie(out)
    assert report2.folded == [] and again.SerializeToString() == out.SerializeToString()


def test_near_copies_are_not_folded(rng):
    """Equality is bit for bit: one ulp apart, or -0.0 vs 0.0, stays separate."""
    w = rng.standard_normal((5, 3)).astype(np.float32)
    model = _tied_by_copy_graph(w)
    wt = numpy_helper.to_array(model.graph.initializer[1]).copy()
    wt[0, 0] = np.nextafter(wt[0, 0], np.float32(np.inf))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(wt, "WT"))
    out, report = retie(model)
    assert report.folded == [] and len(out.graph.initializer) == 2

    zeros = {"a": np.zeros((2, 2), np.float32), "b": -np.zeros((2, 2), np.float32)}
    assert find_duplicates(zeros) == []
    nans = {"a": np.full((2, 3), np.nan, np.float32), "b": np.full((3, 2), np.nan, np.float32)}
    assert [d.relation for d in find_duplicates(nans)] == ["transpose"]


def test_four_dimensional_permutation_found(rng):
    k = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    arrays = {"k": k, "k_onnx": np.ascontiguousarray(k.transpose(3, 2, 0, 1)), "other": k[::-1].copy()}
    found = find_duplicates(arrays)
    assert [(d.source, d.copy, d.perm) for d in found] == [("k", "k_onnx", (3, 2, 0, 1))]


def test_prefer_keeps_named_initializer(rng):
    w = rng.standard_normal((4, 2)).astype(np.float32)
    out, _ = retie(_tied_by_copy_graph(w), prefer=["WT"])
    assert [i.name for i in out.graph.initializer] == ["WT"]
    x = rng.random((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(_tied_by_copy_graph(w), x))


def test_untied_graph_unchanged(rng):
    a = rng.standard_normal((4, 2)).astype(np.float32)
    model = _tied_by_copy_graph(a)
    model.graph.initializer[1].CopyFrom(
        numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "WT"))
    out, report = retie(model)
    assert report.folded == [] and recorded_ties(out) == []
    assert initializer_arrays(out.graph).keys() == {"W", "WT"}


def test_retie_file_refuses_to_write_a_model_the_checker_rejects(tmp_path, rng, monkeypatch):
    # retie is replaced by one that returns a broken graph (a node reading a
    # tensor nothing produces): the full onnx.checker run must stop the write.
    import importlib

    retie_module = importlib.import_module("tiedonnx.runtime.graph.retie")  # the package exports retie()

    source = tmp_path / "in.onnx"
    onnx.save(_tied_by_copy_graph(rng.standard_normal((4, 3)).astype(np.float32)), source)
    real = retie_module.retie

    def broken(model, **kwargs):
        out, report = real(model, **kwargs)
        out.graph.node[0].input[0] = "nothing_produces_this"
        return out, report

    monkeypatch.setattr(retie_module, "retie", broken)
    with pytest.raises(onnx.checker.ValidationError, match="nothing_produces_this"):
        retie_module.retie_file(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
