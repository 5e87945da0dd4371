"""``tiedonnx bench`` on sequence models: ``--sequence-length`` for an open token axis, and
time to first token / decode tokens/s on a generation folder (hand-built, no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import save, tiny_decoder_folder
from tiedonnx.runtime import UsageError
from tiedonnx.runtime.bench import bench_model, synthetic_inputs
from tiedonnx.runtime.bench_generation import bench_generation
from tiedonnx.runtime.cli import main
from tiedonnx.runtime.inputs import TensorSpec


def _token_model(path, vocab=7, width=4):
    """``[batch, sequence]`` int64 ids and an int32 mask -> ``Gather(E, ids) * mask``: a sequence model."""
    emb = numpy_helper.from_array(np.arange(vocab * width, dtype=np.float32).reshape(vocab, width), "E")
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["h", "m3"], ["y"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])],
        [emb, numpy_helper.from_array(np.array([2], np.int64), "axis")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_synthetic_inputs_fill_open_axes_with_the_sequence_length(rng):
    ids = TensorSpec("ids", ("batch", "sequence"), np.dtype(np.int64))
    x = TensorSpec("x", ("batch", "sequence", 3), np.dtype(np.float32))
    feeds = synthetic_inputs([ids, x], 2, rng, sequence_length=5)
    assert feeds["ids"].shape == (2, 5) and feeds["x"].shape == (2, 5, 3)
    assert (feeds["ids"] == 1).all()  # a valid id for any table of 2+ rows, "attend" in a mask
    with pytest.raises(UsageError, match="--sequence-length N"):
        synthetic_inputs([ids], 2, rng)


def test_bench_model_at_a_sequence_length(tmp_path):
    path = _token_model(tmp_path / "tok.onnx")
    with pytest.raises(UsageError, match="besides the batch is dynamic"):
        bench_model(path, batch_sizes=[1])
    report = bench_model(path, batch_sizes=[1, 4], sequence_length=16, min_time=0.01, rounds=2)
    assert [r.batch for r in report.rows] == [1, 4]
    assert all(r.tiedonnx_s > 0 for r in report.rows)
    assert report.flops_per_row is None  # per-row FLOPs do not count a sequence


def test_cli_sequence_length(tmp_path, capsys):
    path = _token_model(tmp_path / "tok.onnx")
    assert main(["bench", str(path), "--sequence-length", "8", "--batch-sizes", "2",
                 "--min-time", "0.01", "--rounds", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in data["rows"]] == [2]


def test_bench_generation_folder(tmp_path):
    folder = tmp_path / "gen"
    tiny_decoder_folder(folder, vocab=11, max_length=16)
    report = bench_generation(folder, batch_sizes=[1, 3], prompt_length=4, new_tokens=6, rounds=2)
    assert [r.batch for r in report.rows] == [1, 3]
    for row in report.rows:
        assert row.time_to_first_token_s > 0 and row.decode_tokens_per_s > 0
    assert report.as_dict()["rows"][1]["total_tokens_per_s"] == pytest.approx(
        3 * report.rows[1].decode_tokens_per_s)


def test_bench_generation_refuses_what_does_not_fit(tmp_path, capsys):
    folder = tmp_path / "gen"
    tiny_decoder_folder(folder, vocab=11, max_length=16)
    with pytest.raises(UsageError, match="longer than the folder's maximum length, 16"):
        bench_generation(folder, prompt_length=10, new_tokens=7)
    assert main(["bench", str(folder), "--sequence-length", "10", "--new-tokens", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "maximum length, 16" in err[0], err


def test_cli_bench_generation_folder(tmp_path, capsys):
    folder = tmp_path / "gen"
    tiny_decoder_folder(folder, vocab=11, max_length=16)
    assert main(["bench", str(folder), "--sequence-length", "4", "--new-tokens", "5", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "TTFT ms" in out and "tokens/s per row" in out and "4-token prompt + 5 new tokens" in out
    assert main(["bench", str(folder), "--keras", "m.keras"]) == 2
    assert "Drop --keras" in capsys.readouterr().err
