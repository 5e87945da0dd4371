"""The pass protocol: ordered registries, the -v log of each pass, and the graph index kept by the edits."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import save, tied_graph
from tiedonnx.runtime.cli import main
from tiedonnx.runtime.graph import edit
from tiedonnx.runtime.graph.index import GraphIndex, match_parent_path
from tiedonnx.runtime.graph.metadata import read_ties
from tiedonnx.runtime.graph.passes import GraphPass, run_passes
from tiedonnx.runtime.graph.quantize import PRECISION_PASSES, SHORT_NAMES


def test_every_precision_has_its_passes_in_order_each_saying_why():
    assert {k: [p.name for p in v] for k, v in PRECISION_PASSES.items()} == {
        "fp32": [], "fp16": ["fp16"], "int8": ["int8", "lookup_axis", "tie_input"], "int4": ["int4_views", "int4", "lookup_axis", "tie_input"]}
    for step in [*(p for v in PRECISION_PASSES.values() for p in v), SHORT_NAMES]:
        assert len(step.order) > 20, step.name  # the ordering constraint, in words


def test_run_passes_applies_in_order_and_each_pass_sees_the_last_ones_model():
    seen = []

    def mark(tag):
        def run(model, options):
            seen.append((tag, [p.value for p in model.metadata_props if p.key == "trail"], options))
            edit.replace_repeated(model.metadata_props, [])
            model.metadata_props.add(key="trail", value=tag)
            return model, tag
        return GraphPass(tag, run, "test")

    model, reports = run_passes(tied_graph(8, 3), [mark("a"), mark("b"), mark("c")], options=7)
    assert seen == [("a", [], 7), ("b", ["a"], 7), ("c", ["b"], 7)]
    assert [r.detail for r in reports] == ["a", "b", "c"]
    assert [p.value for p in model.metadata_props] == ["c"]


def test_v_logs_counts_and_bytes_before_and_after_each_pass(tmp_path, caplog):
    source = save(tied_graph(64, 16), tmp_path / "ae.onnx")
    out = tmp_path / "ae4.onnx"
    tiedonnx_logger = logging.getLogger("tiedonnx")
    level = tiedonnx_logger.level
    try:
        with caplog.at_level(logging.INFO, logger="tiedonnx"):
            assert main(["-v", "quantize", source, "-o", str(out), "--precision", "int4"]) == 0
    finally:
        tiedonnx_logger.setLevel(level)
    lines = [r.getMessage() for r in caplog.records if r.name == "tiedonnx.runtime.graph.passes"]
    assert [line.split(" (")[0] for line in lines] == [
        "int4 pass int4_views", "int4 pass int4", "int4 pass lookup_axis", "int4 pass tie_input",
        "int4 pass short_names"]
    pattern = re.compile(r"(\d+) nodes, (\d+) initializers \(([\d,]+) bytes\) -> (\d+) nodes, (\d+) initializers "
                         r"\(([\d,]+) bytes\)")
    sizes = [tuple(int(g.replace(",", "")) for g in pattern.search(line).groups()) for line in lines]
    source_model, written = onnx.load(source), onnx.load(str(out))
    assert sizes[0][:2] == (len(source_model.graph.node), len(source_model.graph.initializer))
    assert sizes[-1][3:5] == (len(written.graph.node), len(written.graph.initializer))
    assert sizes[-1][5] == sum(numpy_helper.to_array(i).nbytes for i in written.graph.initializer)
    assert sizes[1][5] < sizes[1][2] / 4  # the int4 pass made the weights smaller (fp32 -> 4 bits)


def _indexed_graph():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    nodes = [helper.make_node("Transpose", ["W"], ["WT"], name="t"),
             helper.make_node("MatMul", ["x", "WT"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    return helper.make_model(graph).graph


def _snapshot(index: GraphIndex, names):
    return ({n: index.producer(n) and index.producer(n).name for n in names},
            {n: sorted(c.name for c in index.consumers(n)) for n in names},
            sorted(index.initializers))


def test_the_index_stays_equal_to_a_fresh_one_after_every_edit():
    graph = _indexed_graph()
    index = GraphIndex(graph)
    mm = next(n for n in graph.node if n.name == "mm")
    assert match_parent_path(index, mm, [("Transpose", 1)])[0].name == "t"
    assert match_parent_path(index, mm, [("Relu", 1)]) is None
    edit.add_initializers(graph, [numpy_helper.from_array(np.ones((2, 2), np.float32), "V")], index=index)
    edit.set_inputs(mm, ["x", "V"], index=index)
    edit.remove_nodes(graph, [n for n in graph.node if n.name == "t"], index=index)
    edit.remove_initializers(graph, {"W"}, index=index)
    edit.rename_uses(graph, {"h": "h2"}, index=index)
    edit.insert_after(graph, mm, helper.make_node("Neg", ["h"], ["h2"], name="neg"), index=index)
    edit.prepend_nodes(graph, [helper.make_node("Identity", ["V"], ["V2"], name="id")], index=index)
    names = ["W", "WT", "V", "V2", "x", "h", "h2", "y"]
    assert _snapshot(index, names) == _snapshot(GraphIndex(graph), names)
    assert [n.name for n in graph.node] == ["id", "mm", "neg", "relu"]
    assert index.consumers("h2")[0].name == "relu" and not index.is_read("WT") and index.is_taken("V2")


def test_drop_unread_chain_removes_what_only_fed_a_removed_node():
    graph = _indexed_graph()
    index = GraphIndex(graph)
    mm = next(n for n in graph.node if n.name == "mm")
    edit.set_inputs(mm, ["x", "x"], index=index)
    edit.drop_unread_chain(index, "WT")
    assert [n.name for n in graph.node] == ["mm", "relu"] and not graph.initializer
    assert _snapshot(index, ["W", "WT", "x"]) == _snapshot(GraphIndex(graph), ["W", "WT", "x"])


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_to_precision_leaves_its_argument_alone(precision):
    from tiedonnx.runtime.graph.quantize import to_precision

    model = tied_graph(64, 16)
    before = model.SerializeToString()
    out = to_precision(model, precision)
    assert model.SerializeToString() == before and read_ties(out)
