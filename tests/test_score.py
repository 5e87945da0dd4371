"""``tiedonnx.runtime.score.run_file``: the library side of ``tiedonnx run``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.errors import ModelFileError, UsageError
from tiedonnx.runtime.score import run_file
from tiedonnx.runtime.testing import tied_autoencoder, tied_autoencoder_reference

# float32 onnxruntime vs the float64 numpy reference: measured max abs 6e-8 on
# this graph; 1e-6 leaves room for other BLAS kernels.
REFERENCE_ATOL = 1e-6


def _model(nodes, outputs, inits=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(nodes, "g", [x], outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_report_and_chunked_npy(tmp_path, rng):
    (tmp_path / "m.onnx").write_bytes(tied_autoencoder(8, 3).SerializeToString())
    x = rng.random((10, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    seen = []
    report = run_file(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npy", batch_size=4,
                      providers="cpu", progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), tied_autoencoder_reference(x, 8, 3),
                               atol=REFERENCE_ATOL)
    assert seen == [(4, 10), (8, 10), (10, 10)]
    as_dict = report.as_dict()
    assert as_dict["outputs"] == {"y": [10, 8]} and as_dict["rows"] == 10
    assert as_dict["provider"] == "CPUExecutionProvider" and as_dict["memory"] == "fast"
    assert as_dict["output"] == str(tmp_path / "y.npy") and as_dict["seconds"] > 0


def test_npz_keeps_outputs_named_like_savez_arguments(tmp_path, rng):
    """np.savez(file, **outputs) would take outputs named "file" or "allow_pickle" as arguments."""
    nodes = [helper.make_node("Identity", ["x"], ["file"]), helper.make_node("Neg", ["x"], ["allow_pickle"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("file", "allow_pickle")]
    (tmp_path / "m.onnx").write_bytes(_model(nodes, outputs).SerializeToString())
    x = rng.random((3, 4), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run_file(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npz", providers="cpu")
    with np.load(tmp_path / "y.npz", allow_pickle=False) as out:
        assert sorted(out.files) == ["allow_pickle", "file"]
        np.testing.assert_array_equal(out["allow_pickle"], -x)


def test_a_model_that_fails_while_running_is_a_model_file_error(tmp_path, rng):
    """The checker and session creation accept a Reshape to 7 elements; running 4 x 4 fails."""
    shape = numpy_helper.from_array(np.array([7], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])]
    (tmp_path / "m.onnx").write_bytes(_model(nodes, outputs, [shape]).SerializeToString())
    np.save(tmp_path / "x.npy", rng.random((4, 4), dtype=np.float32))
    with pytest.raises(ModelFileError, match=r"onnxruntime failed while running .*m\.onnx.*Nothing was written"):
        run_file(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npy", providers="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "x.npy"]


def test_non_numeric_outputs_are_refused_before_anything_runs(tmp_path, rng):
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 4])]
    (tmp_path / "m.onnx").write_bytes(_model(nodes, outputs).SerializeToString())
    np.save(tmp_path / "x.npy", rng.random((3, 4), dtype=np.float32))
    for name in ("y.npy", "y.npz"):
        with pytest.raises(UsageError, match=r"Output\(s\) \['y'\] of .* are not numeric tensors"):
            run_file(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / name, providers="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "x.npy"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_batch_size_must_be_a_positive_integer(bad, tmp_path):
    with pytest.raises(UsageError, match=rf"batch_size must be a positive integer. Received: batch_size={bad}"):
        run_file(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "y.npy", batch_size=bad)
