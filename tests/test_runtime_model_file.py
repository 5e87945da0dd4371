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


@pytest.mark.parametrize("reader", ["read_model", "lean", "fast"])
def test_checker_failures_are_model_file_errors(reader, tmp_path):
    # read_model and lean run onnx's checker; fast leaves the graph to onnxruntime.
    read = {"read_model": read_model,
            "lean": lambda p: load(p, providers="cpu", memory="lean"),
            "fast": lambda p: load(p, providers="cpu", memory="fast")}[reader]
    which = "onnxruntime cannot load model" if reader == "fast" else "failed the ONNX checker"
    model = tied_ae()
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(ModelFileError, match=f"{which}.*NoSuchOp"):
        read(save(model, tmp_path / "bad_op.onnx"))
    model = tied_ae()
    model.graph.node[1].input[1] = "W__missing"
    with pytest.raises(ModelFileError, match=f"{which}.*W__missing"):
        read(save(model, tmp_path / "dangling.onnx"))


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


# ------------------------------------------------ issue 13: sparse tensors, external fields


def _sparse(name: str, dims: list[int]) -> onnx.SparseTensorProto:
    values = helper.make_tensor(name, TensorProto.FLOAT, [2], [1.0, 2.0])
    indices = helper.make_tensor(f"{name}_i", TensorProto.INT64, [2], [0, 5])
    return helper.make_sparse_tensor(values, indices, dims)


def _with_sparse(where: str, dims: list[int]) -> onnx.ModelProto:
    """The tied AE plus one unused sparse tensor of ``dims`` as an initializer, a
    ``Constant(sparse_value)``, or a ``Constant`` inside a local function."""
    model = tied_ae()
    if where == "initializer":
        model.graph.sparse_initializer.append(_sparse("s", dims))
    elif where == "constant":
        model.graph.node.insert(0, helper.make_node("Constant", [], ["s"], sparse_value=_sparse("s", dims)))
    else:
        const = helper.make_node("Constant", [], ["c"], sparse_value=_sparse("s", dims))
        ident = helper.make_node("Identity", ["c"], ["out"])
        model.functions.append(helper.make_function("local", "F", [], ["out"], [const, ident],
                                                    [helper.make_opsetid("", 17)]))
        model.opset_import.append(helper.make_opsetid("local", 1))
    return model


@pytest.mark.parametrize("where", ["initializer", "constant", "function"])
def test_sparse_tensors_count_at_their_dense_size(where, tmp_path):
    """Issue 13, case 9: a tiny file whose sparse tensor is gigabytes once dense."""
    path = save(_with_sparse(where, [2**20, 2**14]), tmp_path / "bomb.onnx")  # 64 GiB dense
    assert os.path.getsize(path) < 1000
    with pytest.raises(ModelFileError, match=r"declare \d+ bytes, over the limit of 4294967296 "
                                             r"\(sparse tensors count at their dense size\)"):
        read_model(path)
    # The count is exact: the dense size (here 100 x 10 float32) plus what the file stores.
    small = save(_with_sparse(where, [100, 10]), tmp_path / "small.onnx")
    stored = 96 + 12 + 32 + 2 * 4 + 2 * 8  # W, b1, b2, the sparse values and indices
    with pytest.raises(ModelFileError, match=rf"declare {stored + 4000} bytes, over the limit of 4100"):
        read_model(small, max_bytes=4100)


@pytest.mark.parametrize("fields, match", [
    ({"offset": "abc"}, r"External data offset of tensor 'W' .* received 'abc'"),
    ({"offset": "-8"}, r"External data offset .* must be a non-negative whole number"),
    ({"length": "96.0"}, r"External data length of tensor 'W' .* received '96.0'"),
    ({"length": "9" * 5000}, r"External data length .* received '9999"),
    ({"location": "w.bin\0../x"}, r"External data location of tensor 'W' .* contains a NUL byte"),
    ({"__class__": "x"}, r"unknown or repeated keys \['__class__'\]"),
    ({"location": "w" * 5000}, r"External data location 'w{80}'\.\.\. .* cannot be opened .*too long"),
])
def test_external_data_fields_must_be_what_onnx_writes(fields, match, tmp_path):
    """Issue 13, case 2: each was a ValueError or TypeError traceback."""
    (tmp_path / "w.bin").write_bytes(b"\0" * 96)
    model = tied_ae()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entries = {"location": "w.bin", "offset": "0", "length": "96", **fields}
    for key, value in entries.items():
        w.external_data.add(key=key, value=value)
    with pytest.raises(ModelFileError, match=match):
        read_model(save(model, tmp_path / "ext.onnx"))


def test_repeated_external_key_and_missing_length(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 100)
    model = tied_ae()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    # No length: onnx reads to the end of the file, 100 bytes for a 96-byte tensor.
    with pytest.raises(ModelFileError, match=r"length 100\) does not match its declared 96 bytes"):
        read_model(save(model, tmp_path / "ext.onnx"))
    w.external_data.add(key="location", value="../elsewhere.bin")
    with pytest.raises(ModelFileError, match=r"unknown or repeated keys \['location'\]"):
        read_model(save(model, tmp_path / "ext.onnx"))


def test_metadata_that_is_not_utf8_is_refused(tmp_path):
    """Found by scripts/fuzz_loaders.py: one flipped byte in the tie record made protobuf
    return bytes, and `inspect` failed in json with a UnicodeDecodeError."""
    model = tied_ae()
    model.metadata_props.add(key="tiedonnx.ties", value="MARKER")
    data = model.SerializeToString().replace(b"MARKER", b"\xff\xfe\x9f\x00ok")
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(ModelFileError, match=r"metadata that is not UTF-8 text \(entries \[\"'tiedonnx.ties'\"\]\)"):
        read_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("field", ["dim_param", "node_input", "subgraph_node_name"])
def test_names_and_dims_that_are_not_utf8_are_refused(tmp_path, field, capsys):
    """Found by scripts/fuzz_loaders.py: one overwritten byte in a dim_param made onnxruntime's
    get_inputs() raise UnicodeDecodeError (exit 3), and one in a node's input name made
    onnxruntime print an "EP Error" block before our error line."""
    from tiedonnx.runtime.cli import main

    model = tied_ae()
    if field == "dim_param":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "MARK"
    elif field == "node_input":
        model.graph.node[0].name = "MARK"
    else:  # inside an If's branch: the walk goes into subgraphs
        branches = [helper.make_graph([helper.make_node("Identity", ["y0"], ["z"], name=name)], "b", [],
                                      [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
                    for name in ("MARK", "other")]
        model.graph.node.append(helper.make_node("If", ["c"], ["w"], then_branch=branches[0],
                                                 else_branch=branches[1]))
    data = model.SerializeToString()
    assert data.count(b"MARK") == 1
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"MARK", b"M\x8cRK"))
    with pytest.raises(ModelFileError, match=r"has text that is not UTF-8 \(model\.graph\..*b'M\\x8cRK'\)"):
        read_model(path)
    features = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    np.save(tmp_path / "x.npy", np.zeros((2, features), np.float32))
    assert main(["run", str(path), "-i", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not UTF-8" in err[0], err
    assert not (tmp_path / "y.npy").exists()
