"""Validated model reading: every way a file can be wrong is refused with a clear error."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime import ModelFileError, UnsafeModelError, load
from tiedonnx.runtime.model_file import read_model
from tests.graphs import REFERENCE_ATOL, save, tied_ae, tied_reference


@pytest.fixture
def ae_path(tmp_path):
    return save(tied_ae(), tmp_path / "ae.onnx")


def test_a_good_file_reads_and_passes_the_checker(ae_path):
    checked = read_model(ae_path)
    assert not checked.has_external_data
    assert [n.op_type for n in checked.proto.graph.node][:2] == ["Transpose", "MatMul"]


def test_missing_directory_and_empty(tmp_path):
    with pytest.raises(ModelFileError, match=r"Model file not found: '.*nope.onnx'\. Check the path"):
        load(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="Model path is a directory, expected an .onnx file"):
        load(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"Model file is empty \(0 bytes\)"):
        load(tmp_path / "empty.onnx")


def test_garbage_is_not_a_model(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not protobuf at all \x00\x01" * 10)
    with pytest.raises(ModelFileError, match="is not a readable ONNX model|is not an ONNX model"):
        load(tmp_path / "junk.onnx")
    (tmp_path / "bare.onnx").write_bytes(b"\x08\x01")  # valid protobuf: ir_version=1, no graph
    with pytest.raises(ModelFileError, match=r"parsed but is not an ONNX model \(no IR version, graph or opset\)"):
        load(tmp_path / "bare.onnx")


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_truncated_files_are_refused(ae_path, tmp_path, keep):
    data = open(ae_path, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="truncated|corrupt|checker|not an ONNX model"):
        load(cut)


def test_tensor_with_too_few_bytes_is_truncated(tmp_path):
    model = tied_ae()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ModelFileError, match=r"Tensor 'W' .* declares shape \[8, 3\] \(96 bytes\) but holds 92 bytes"):
        load(save(model, tmp_path / "short.onnx"))


def test_checker_failures_are_model_file_errors(tmp_path):
    model = tied_ae()
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(ModelFileError, match="failed the ONNX checker: .*NoSuchOp"):
        load(save(model, tmp_path / "bad_op.onnx"))
    model = tied_ae()
    model.graph.node[1].input[1] = "W__missing"
    with pytest.raises(ModelFileError, match="failed the ONNX checker"):
        load(save(model, tmp_path / "dangling.onnx"))


def test_size_cap_is_overridable(ae_path):
    size = os.path.getsize(ae_path)
    with pytest.raises(ModelFileError, match=rf"is {size} bytes, over the limit of 100\. If you trust it, pass a larger max_bytes="):
        load(ae_path, max_bytes=100)
    assert load(ae_path, max_bytes=size, providers="cpu").outputs[0].name == "y"


def test_declared_tensor_bytes_count_against_the_cap(tmp_path):
    # A small file whose external tensors declare more than the cap.
    onnx.save(tied_ae(64, 16), str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert os.path.getsize(tmp_path / "ext.onnx") < 4000
    with pytest.raises(ModelFileError, match=r"Tensors in .* declare 4416 bytes, over the limit of 4000"):
        read_model(tmp_path / "ext.onnx", max_bytes=4000)  # 64*16*4 + 16*4 + 64*4 bytes
    assert read_model(tmp_path / "ext.onnx", max_bytes=4416).has_external_data


def _external(tmp_path, location: str, *, length=None):
    """A model whose W points at ``location`` (relative to tmp_path)."""
    model = tied_ae()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", "length": str(length or 96)}
    for key, value in entries.items():
        w.external_data.add(key=key, value=value)
    return save(model, tmp_path / "ext.onnx")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_unsafe(tmp_path, location):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    with pytest.raises(UnsafeModelError, match=r"keeps its data at .* outside the model's folder.*Refused"):
        load(_external(folder, location))


def test_external_data_symlinked_out_is_unsafe(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 96)
    os.symlink(tmp_path / "secret.bin", folder / "w.bin")
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        load(_external(folder, "w.bin"))


def test_external_data_missing_short_or_mis_sized(tmp_path):
    with pytest.raises(ModelFileError, match="External data file 'w.bin' of tensor 'W' is missing"):
        load(_external(tmp_path, "w.bin"))
    (tmp_path / "w.bin").write_bytes(b"\0" * 50)
    with pytest.raises(ModelFileError, match=r"offset 0, length 96\) does not match .* or runs past the end"):
        load(_external(tmp_path, "w.bin"))
    (tmp_path / "w.bin").write_bytes(b"\0" * 96)
    with pytest.raises(ModelFileError, match="length 4000000000"):
        load(_external(tmp_path, "w.bin", length=4_000_000_000))  # a declared allocation bomb


def test_external_data_next_to_the_model_runs(tmp_path, rng):
    model = tied_ae()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    checked = read_model(tmp_path / "ext.onnx")
    assert checked.has_external_data
    x = rng.random((2, 8), dtype=np.float32)
    out = load(tmp_path / "ext.onnx", providers="cpu").run(x)["y"]
    np.testing.assert_allclose(out, tied_reference(x), atol=REFERENCE_ATOL)


def test_constant_node_tensors_are_checked_too(tmp_path):
    bad = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    bad.raw_data = bad.raw_data[:8]
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=bad)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelFileError, match=r"declares shape \[4\] \(16 bytes\) but holds 8 bytes"):
        load(save(model, tmp_path / "const.onnx"))
