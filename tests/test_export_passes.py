"""The export's ordered passes: extra passes see the retied graph before the tie record; -v logs each."""

from __future__ import annotations

import logging

import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")

from tests.graphs import recorded_ties  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.converter.export_passes import EXPORT_PASSES  # noqa: E402
from tiedonnx.runtime.graph import find_duplicates, read_ties  # noqa: E402
from tiedonnx.runtime.graph.duplicates import initializer_arrays  # noqa: E402

from . import models  # noqa: E402


def test_the_export_passes_are_in_order_and_each_says_why():
    assert [p.name for p in EXPORT_PASSES] == ["retie", "fold_shapes", "record", "precision"]
    for step in EXPORT_PASSES:
        assert len(step.order) > 20, step.name


def test_an_extra_pass_sees_one_initializer_per_tie_and_no_keras_names_yet(tmp_path, caplog):
    seen = {}

    def probe(model):
        seen["copies"] = find_duplicates(initializer_arrays(model.graph))
        seen["keras"] = [t.keras for t in read_ties(model)]
        return model, None

    path = tmp_path / "ae.onnx"
    with caplog.at_level(logging.INFO, logger="tiedonnx.runtime.graph.passes"):
        export(models.dense_ae(), path, precision="int8", graph_passes=(probe,), verify=False)
    assert seen["copies"] == []  # retie ran before it
    assert seen["keras"] and not any(seen["keras"])  # the record's Keras names come after it
    assert recorded_ties(onnx.load(str(path)))[0]["keras"]["decoder"] == "dec"
    lines = [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "tiedonnx.runtime.graph.passes"]
    assert lines == ["export pass retie", "export pass fold_shapes", "export pass probe", "export pass record",
                     "int8 pass int8", "int8 pass lookup_axis", "int8 pass tie_input", "export pass precision"]
