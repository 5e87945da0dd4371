"""ORT format: one copy per tie, loads in onnxruntime, matches the .onnx, config written beside it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tiedonnx.runtime.graph.ort_format import config_path_for, ort_initializers, save_ort
from tiedonnx.runtime.graph.quantize import to_precision
from tiedonnx.runtime.cli import main as cli_main
from tiedonnx.runtime.errors import ModelFileError, OutputExistsError

from tests.graphs import recorded_ties, run, tied_graph

# .ort vs .onnx of the same model, both run by onnxruntime's CPU provider; the
# .ort reads the tie through FusedGemm(transB=1) (fp32), QGemm(transB=1) (int8)
# or a per-call Cast (fp16), the .onnx session folds a transposed copy instead.
# Measured max abs on the 784-256 graph: 0 fp32, 2.4e-7 fp16, 0 int8.
ORT_VS_ONNX_ATOL = 1e-5
# Issue target: at most 0.52x of what onnxruntime's own converter writes.
# Measured on the 784-256 graph: 0.502x fp32 (810,488 vs 1,613,296 bytes),
# 0.253x fp16 (its converter folds the Cast too), 0.512x int8.
MAX_SIZE_RATIO = 0.52

FEATURES, HIDDEN = 784, 256


@pytest.fixture(scope="module")
def ae_784():
    return tied_graph(FEATURES, HIDDEN, scale=0.05)


def _ort_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_ort_file_keeps_one_copy_per_tie_and_matches_onnx(tmp_path, rng, ae_784, precision):
    model = to_precision(ae_784, precision)
    (tie,) = recorded_ties(model)
    out = tmp_path / f"ae_{precision}.ort"
    report = save_ort(model, out)

    assert report.bytes == out.stat().st_size
    inits = ort_initializers(out, with_data=True)
    big = [i for i in inits if int(np.prod(i["dims"] or [1])) == FEATURES * HIDDEN]
    assert [i["name"] for i in big] == [tie["initializer"]]
    stored = next(i for i in model.graph.initializer if i.name == tie["initializer"])
    assert big[0]["raw"].tobytes() == numpy_helper.to_array(stored).tobytes()
    assert big[0]["data_type"] == stored.data_type
    assert report.optimized is True

    config = config_path_for(out)
    assert report.config_path == str(config)
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("#")]
    assert lines and all(len(ln.split(";")) == 3 for ln in lines)
    ops = {op for ln in lines for op in ln.split(";")[2].split(",")}
    assert ops == {op for ops in report.operators.values() for op in ops}
    if precision == "int8":
        assert "DynamicQuantizeMatMul" in ops

    x = rng.random((16, FEATURES), dtype=np.float32)
    session = _ort_session(out)
    assert session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], run(model, x), atol=ORT_VS_ONNX_ATOL, rtol=0)


def test_ort_file_is_about_half_of_onnxruntime_converter(tmp_path, ae_784):
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    model = to_precision(ae_784, "fp32")
    onnx.save(model, tmp_path / "ae.onnx")
    stock_dir = tmp_path / "stock"
    convert_onnx_models_to_ort(tmp_path / "ae.onnx", output_dir=stock_dir,
                               optimization_styles=[OptimizationStyle.Fixed])
    (stock,) = stock_dir.glob("*.ort")
    stock_big = [i for i in ort_initializers(stock) if int(np.prod(i["dims"] or [1])) == FEATURES * HIDDEN]
    assert len(stock_big) == 2  # what the stock converter does: the tie folded into two copies

    report = save_ort(tmp_path / "ae.onnx", tmp_path / "ae.ort")
    assert report.bytes <= MAX_SIZE_RATIO * stock.stat().st_size


def test_existing_outputs_are_kept_without_force(tmp_path):
    out = tmp_path / "m.ort"
    out.write_bytes(b"previous")
    with pytest.raises(OutputExistsError, match="already exists.*force"):
        save_ort(tied_graph(), out)
    assert out.read_bytes() == b"previous"
    assert not config_path_for(out).exists()
    report = save_ort(tied_graph(), out, force=True)
    assert report.bytes == out.stat().st_size > 8
    # A config left beside a missing .ort also blocks the write, before any work.
    config = config_path_for(tmp_path / "m2.ort")
    config.write_text("mine")
    with pytest.raises(OutputExistsError, match="m2.required_operators.config"):
        save_ort(tied_graph(), tmp_path / "m2.ort")
    assert not (tmp_path / "m2.ort").exists() and config.read_text() == "mine"


def test_unreadable_input_is_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        save_ort(bad, tmp_path / "bad.ort")
    assert not (tmp_path / "bad.ort").exists()


def test_cli_ort(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(to_precision(tied_graph(untied=True), "int8"), src)
    assert cli_main(["ort", str(src), "-o", str(tmp_path / "out.ort")]) == 0
    printed = capsys.readouterr().out
    assert "1 tie(s) stored once" in printed and "DynamicQuantizeMatMul" in printed
    assert (tmp_path / "out.required_operators.config").is_file()
    assert cli_main(["ort", str(src), "-o", str(tmp_path / "out.ort")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_run_bench_and_inspect_accept_ort_files(tmp_path, capsys):
    """tiedonnx's own .ort output is a model file like any other (issue 16)."""
    import json

    from tiedonnx.runtime.cli import main
    from tiedonnx.runtime.graph.quantize import to_precision
    from tiedonnx.runtime.testing import tied_autoencoder

    onnx.save(to_precision(tied_autoencoder(16, 4, untied=True), "fp32"), str(tmp_path / "ae.onnx"))
    assert main(["ort", str(tmp_path / "ae.onnx"), "-o", str(tmp_path / "ae.ort")]) == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((5, 16), dtype=np.float32))
    capsys.readouterr()

    assert main(["inspect", str(tmp_path / "ae.ort"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in info["ties"]] == ["ok"] and info["untied_duplicates"] == []
    assert info["metadata"]["format"] == "ORT" and info["inputs"][0]["name"] == "x"

    assert main(["run", str(tmp_path / "ae.ort"), "-i", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npy")]) == 0
    assert main(["run", str(tmp_path / "ae.onnx"), "-i", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y_onnx.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(tmp_path / "y_onnx.npy"),
                               atol=1e-6)  # measured: equal (same kernels, one stored W)

    capsys.readouterr()
    assert main(["bench", str(tmp_path / "ae.ort"), "--batch-sizes", "1,4", "--min-time", "0.01",
                 "--json"]) == 0
    assert [r["batch"] for r in json.loads(capsys.readouterr().out)["rows"]] == [1, 4]


def test_inspect_sees_a_tie_split_by_onnxruntimes_own_converter(tmp_path, capsys):
    """onnxruntime's converter folds Transpose(W) into a second copy: inspect must say so."""
    import json

    from tiedonnx.runtime.cli import main
    from tiedonnx.runtime.graph.quantize import to_precision
    from tiedonnx.runtime.testing import tied_autoencoder

    tied = to_precision(tied_autoencoder(16, 4), "fp32")  # with its tie record
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds constants
    so.optimized_model_filepath = str(tmp_path / "stock.ort")
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(tied.SerializeToString(), so, providers=["CPUExecutionProvider"])

    assert main(["inspect", str(tmp_path / "stock.ort"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["untied_duplicates"], "the folded W^T copy was not found"
    assert "stored more than once" in info["ties"][0]["status"]


@pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                    reason="the premise is about onnxruntime's x86-64 CPU kernels")
def test_fp16_ort_casts_its_tie_per_call_because_the_cpu_has_no_float16_matmul(tmp_path, ae_784):
    """Why the fp16 .ort stays slower than the .onnx at batch 1 (runtime/graph/ort_format.py).

    If onnxruntime gains a float16 MatMul kernel on x86-64, this fails: the
    .ort could then read its float16 tie without the per-call Cast.
    """
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((8, 4), np.float16), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert [n.op_type for n in optimized.graph.node] == ["Cast", "MatMul", "Cast"]
    assert [i.data_type for i in optimized.graph.initializer] == [TensorProto.FLOAT]
    # And the .ort keeps the float16 tie once, cast on every call.
    out = tmp_path / "ae_fp16.ort"
    save_ort(to_precision(ae_784, "fp16"), out)
    import onnxruntime.tools.ort_format_model  # noqa: F401  (flatbuffers schema on sys.path)
    from ort_flatbuffers_py import fbs

    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(bytearray(out.read_bytes()), 0)
    graph = graph.Model().Graph()
    casts = [graph.Nodes(i).Inputs(0).decode() for i in range(graph.NodesLength())
             if graph.Nodes(i).OpType() == b"Cast"]
    (tie,) = recorded_ties(to_precision(ae_784, "fp16"))
    assert tie["initializer"] in casts
