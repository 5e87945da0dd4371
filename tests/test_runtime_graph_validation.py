"""Graphs onnx's checker rejects are refused by ``load`` whichever validator runs.

``load(memory="fast")`` leaves graph validation to onnxruntime (``read_model(...,
check_graph=False)``: onnx's checker would build onnx's whole operator-schema
registry, 6.8 MiB resident for the life of the process). Each case here is a
tiny tied graph broken one way; the premise (onnx's checker refuses it) is
asserted, then ``load`` must refuse it with a :class:`ModelFileError` in both
memory modes: lean with onnx's checker, fast with onnxruntime's or our own.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime import ModelFileError, load
from tiedonnx.runtime.model_file import _all_tensors, read_model
from tests.graphs import save, tied_ae


def _set(attr: str, value):
    return lambda m: setattr(m, attr, value)


def _node(i: int, field: str, value):
    return lambda m: setattr(m.graph.node[i], field, value)


def _node_input(i: int, j: int, name: str):
    return lambda m: m.graph.node[i].input.__setitem__(j, name)


def _attr_type(m):
    del m.graph.node[0].attribute[:]
    m.graph.node[0].attribute.append(helper.make_attribute("perm", "abc"))


def _sparse_w(indices, values=(1.0, 2.0)):
    def edit(m):
        values_t = numpy_helper.from_array(np.array(values, np.float32), "W")
        indices_t = numpy_helper.from_array(np.array(indices, np.int64), "W_idx")
        del m.graph.initializer[0]
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values_t, indices_t, [8, 3]))
    return edit


def _typed_and_raw(m):
    w = m.graph.initializer[0]
    w.float_data.extend(numpy_helper.to_array(w).ravel().tolist())


def _float_data_short(m):
    w = m.graph.initializer[0]
    values = numpy_helper.to_array(w).ravel()
    w.ClearField("raw_data")
    w.float_data.extend(values[:-3].tolist())


# name -> (edit, what the refusal names). The fast-mode wording is onnxruntime's
# or ours; either way it must say which tensor/node/field is wrong.
BROKEN = {
    "unknown_op": (_node(1, "op_type", "NoSuchOp"), "NoSuchOp"),
    "dangling_input": (_node_input(1, 1, "W__missing"), "W__missing"),
    "not_ssa": (lambda m: m.graph.node[1].output.__setitem__(0, m.graph.node[0].output[0]), "W__T"),
    "cycle": (lambda m: m.graph.node[0].input.__setitem__(0, m.graph.node[-1].output[0]),
              "acyclic|topologically"),
    "attribute_type": (_attr_type, "perm|Transpose"),
    "unknown_attribute": (lambda m: m.graph.node[1].attribute.append(helper.make_attribute("bogus", 3)),
                          "bogus|MatMul"),
    "future_ir_version": (_set("ir_version", 99), "IR version|ir_version"),
    "input_dtype": (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", TensorProto.INT64),
                    "MatMul"),
    "input_shape": (lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[1], "dim_value", 5),
                    "Incompatible dimensions|MatMul"),
    "input_without_type": (lambda m: m.graph.input[0].ClearField("type"), "type"),
    "unknown_domain": (_node(1, "domain", "com.evil"), "com.evil"),
    "too_many_inputs": (lambda m: m.graph.node[1].input.append("x"), "MatMul"),
    "undefined_output": (lambda m: setattr(m.graph.output[0], "name", "nowhere"), "nowhere"),
    "repeated_initializer": (lambda m: m.graph.initializer.append(m.graph.initializer[0]),
                             r"initializers \['W'\] more than once"),
    "raw_and_typed_values": (_typed_and_raw, r"Tensor 'W' .* holds its values twice \(float_data, raw_data\)"),
    "float_data_short": (_float_data_short, "W|float_data"),
    "sparse_index_out_of_range": (_sparse_w([0, 10**6]), "W|sparse|Sparse"),
    "sparse_negative_index": (_sparse_w([0, -7]), "W|sparse|Sparse"),
    "sparse_indices_unsorted": (_sparse_w([5, 0]), "Sparse tensor 'W' .* not in strictly increasing order"),
    "sparse_too_many_indices": (_sparse_w([0, 5, 6]), "W|sparse|Sparse"),
}


@pytest.mark.parametrize("memory", ["fast", "lean"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_graphs_the_checker_refuses_are_refused_in_both_modes(case, memory, tmp_path):
    edit, names = BROKEN[case]
    model = tied_ae()
    edit(model)
    with pytest.raises(Exception):  # the premise: onnx's checker refuses this graph
        onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path / f"{case}.onnx")
    with pytest.raises(ModelFileError, match=names):
        load(path, providers="cpu", memory=memory)


def test_fast_load_leaves_the_graph_to_onnxruntime_and_lean_runs_the_checker(tmp_path, monkeypatch):
    path = save(tied_ae(), tmp_path / "ae.onnx")
    calls = []
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: calls.append(k))
    load(path, providers="cpu", memory="fast")
    assert calls == []
    load(path, providers="cpu", memory="lean")
    assert calls == [{"full_check": True}]
    read_model(path)
    assert len(calls) == 2


def test_collecting_tensors_leaves_no_reference_cycle():
    # The old walk (two nested functions calling each other) left a cycle that
    # kept the proto's tensors alive until the cycle collector ran.
    model = tied_ae()
    k = numpy_helper.from_array(np.ones((8, 3), np.float32), "k")
    sub = helper.make_graph([helper.make_node("Identity", ["k"], ["w2"])], "branch", [],
                            [helper.make_tensor_value_info("w2", TensorProto.FLOAT, [8, 3])], [k])
    model.graph.node.append(helper.make_node("If", ["cond"], ["w_if"], then_branch=sub, else_branch=sub))
    gc.collect()
    gc.disable()
    try:
        tensors, _ = _all_tensors(model)
        assert sorted(t.name for t in tensors) == sorted(
            [*(i.name for i in model.graph.initializer), "k", "k"])  # both branches walked
        del tensors
        assert gc.collect() == 0
    finally:
        gc.enable()


_FIRST_AND_SECOND = r"""
import json, sys
import numpy as np, onnx, onnx.checker, onnxruntime as ort
import tiedonnx.runtime.session as s, tiedonnx.runtime.model_file, tiedonnx.runtime.graph.ort_format
from tiedonnx.runtime.rss import rss_bytes as rss
mode, paths = sys.argv[1], sys.argv[2:]
kept, grown = [], []
for path in paths:
    before = rss()
    kept.append(ort.InferenceSession(path, providers=["CPUExecutionProvider"]) if mode == "raw"
                else s.load(path, providers="cpu", memory="fast"))
    grown.append(rss() - before)
print(json.dumps(grown))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_first_load_of_a_process_costs_what_onnxruntimes_first_session_costs(tmp_path):
    """What the first model of a fresh process costs beyond the second one (one-time costs), for
    tiedonnx and for raw onnxruntime: onnx's checker used to add its operator-schema registry
    (measured +7.5 MiB) to tiedonnx's. Per-model costs cancel out, so raw onnxruntime keeping its
    model bytes does not matter here."""
    from tests.graphs import tied_ae as build

    paths = [save(build(2048, 1024, seed=i), tmp_path / f"m{i}.onnx") for i in range(2)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # as runtime.bench's memory probe
    first_extra = {}
    for mode in ("raw", "tiedonnx"):
        out = subprocess.run([sys.executable, "-c", _FIRST_AND_SECOND, mode, *paths], check=True,
                             capture_output=True, text=True, env=env).stdout
        first, second = (b / 2**20 for b in json.loads(out))
        assert second > 7, (mode, first, second)  # the session really holds the 8 MiB tie
        first_extra[mode] = first - second
    assert first_extra["tiedonnx"] - first_extra["raw"] <= 2, first_extra
