"""Triton model repositories, checked field by field with Triton's own config schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tiedonnx.runtime.cli import main  # noqa: E402
from tiedonnx.runtime.errors import ModelFileError, OutputExistsError, UsageError  # noqa: E402
from tiedonnx.runtime.triton import (  # noqa: E402
    DEFAULT_MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_US,
    write_model_repository,
)


def _model_config_pb2():
    """Triton's ``model_config_pb2`` from the tritonclient package.

    Loaded from its file: ``import tritonclient.grpc`` also needs grpcio, and
    the schema is all this test needs.
    """
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install 'tiedonnx[triton]')")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb2():
    return _model_config_pb2()


def _parse(pb2, path: Path):
    from google.protobuf import text_format

    # text_format.Parse is strict: an unknown field or enum value raises.
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def _tied_ae(path: Path, *, batch="N") -> Path:
    """784 -> 32 -> 784 tied autoencoder: one initializer W, decoder reads W^T."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((784, 32)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["pixels", "W"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["code"]),
        helper.make_node("Transpose", ["W"], ["W__T"], perm=[1, 0]),
        helper.make_node("MatMul", ["code", "W__T"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "tied_ae",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 784])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 784]),
         helper.make_tensor_value_info("code", TensorProto.FLOAT, [batch, 32])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _mixed_types(path: Path) -> Path:
    """Inputs/outputs of several dtypes and ranks, including a rank-1 [batch] tensor."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["ids_out"]),
         helper.make_node("Cast", ["mask"], ["mask_f16"], to=TensorProto.FLOAT16),
         helper.make_node("Identity", ["img"], ["img_out"])],
        "mixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 5]),
         helper.make_tensor_value_info("img", TensorProto.UINT8, ["batch", 3, "h", 8])],
        [helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("mask_f16", TensorProto.FLOAT16, ["batch", 5]),
         helper.make_tensor_value_info("img_out", TensorProto.UINT8, ["batch", 3, "h", 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_repository_layout_and_every_config_field(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    report = write_model_repository(model, tmp_path / "repo", max_batch_size=128, instances=3)

    model_dir = tmp_path / "repo" / "ae"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt"]
    # The tied file is copied byte for byte: still one initializer + a Transpose.
    assert (model_dir / "1" / "model.onnx").read_bytes() == model.read_bytes()
    copied = onnx.load(model_dir / "1" / "model.onnx")
    assert [t.name for t in copied.graph.initializer] == ["W"]
    assert [n.op_type for n in copied.graph.node].count("Transpose") == 1

    config = _parse(pb2, model_dir / "config.pbtxt")
    assert config.name == "ae"
    assert config.backend == "onnxruntime"
    assert config.platform == ""
    assert config.max_batch_size == 128
    assert config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixels", pb2.TYPE_FP32, [784])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("out", pb2.TYPE_FP32, [784]), ("code", pb2.TYPE_FP32, [32])]
    assert not any(t.HasField("reshape") for t in [*config.input, *config.output])
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (3, pb2.ModelInstanceGroup.KIND_CPU)]
    assert report["config_path"] == str(model_dir / "config.pbtxt")
    assert report["model_path"] == str(model_dir / "1" / "model.onnx")
    assert report["kind"] == "KIND_CPU"


def test_gpu_name_and_defaults(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo", name="tied-ae.v2", gpu=True)
    config = _parse(pb2, tmp_path / "repo" / "tied-ae.v2" / "config.pbtxt")
    assert config.name == "tied-ae.v2"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, pb2.ModelInstanceGroup.KIND_GPU)]


def test_dtypes_ranks_and_rank1_reshape(tmp_path, pb2):
    write_model_repository(_mixed_types(tmp_path / "mixed.onnx"), tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "mixed" / "config.pbtxt")
    got = {t.name: (t.data_type, list(t.dims), t.HasField("reshape"), list(t.reshape.shape))
           for t in [*config.input, *config.output]}
    assert got == {
        # [batch] -> dims [1] reshaped to [] (Triton needs non-empty dims).
        "ids": (pb2.TYPE_INT64, [1], True, []),
        "ids_out": (pb2.TYPE_INT64, [1], True, []),
        "mask": (pb2.TYPE_BOOL, [5], False, []),
        "mask_f16": (pb2.TYPE_FP16, [5], False, []),
        "img": (pb2.TYPE_UINT8, [3, -1, 8], False, []),
        "img_out": (pb2.TYPE_UINT8, [3, -1, 8], False, []),
    }


def test_unbatched_keeps_full_dims_and_no_batcher(tmp_path, pb2):
    model = _tied_ae(tmp_path / "ae.onnx", batch=1)
    write_model_repository(model, tmp_path / "repo", max_batch_size=0)
    config = _parse(pb2, tmp_path / "repo" / "ae" / "config.pbtxt")
    assert config.max_batch_size == 0
    assert [list(i.dims) for i in config.input] == [[1, 784]]
    assert [list(o.dims) for o in config.output] == [[1, 784], [1, 32]]
    assert config.WhichOneof("scheduling_choice") is None


def test_fixed_batch_dimension_needs_max_batch_size_zero(tmp_path):
    model = _tied_ae(tmp_path / "ae.onnx", batch=1)
    with pytest.raises(UsageError, match=r"input 'pixels' has shape \[1, 784\].*--max-batch-size 0"):
        write_model_repository(model, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_existing_files_need_force_and_are_not_touched(tmp_path):
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo", max_batch_size=8)
    config_path = tmp_path / "repo" / "ae" / "config.pbtxt"
    before = config_path.read_text()
    with pytest.raises(OutputExistsError, match=r"already exist.*force"):
        write_model_repository(model, tmp_path / "repo", max_batch_size=16)
    assert config_path.read_text() == before
    write_model_repository(model, tmp_path / "repo", max_batch_size=16, force=True)
    assert "max_batch_size: 16" in config_path.read_text()
    assert not list((tmp_path / "repo").rglob("*.tmp"))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": -1}, r"max_batch_size must be an integer >= 0.*Received: max_batch_size=-1"),
    ({"instances": 0}, r"instances must be a positive integer. Received: instances=0"),
    ({"name": "../escape"}, r"model name must start.*Received: name='../escape'"),
    ({"name": ".hidden"}, r"Received: name='.hidden'"),
])
def test_bad_options(tmp_path, kwargs, message):
    model = _tied_ae(tmp_path / "ae.onnx")
    with pytest.raises(UsageError, match=message):
        write_model_repository(model, tmp_path / "repo", **kwargs)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="Model file not found"):
        write_model_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        write_model_repository(tmp_path / "junk.onnx", tmp_path / "repo")
    # Decodes as protobuf but has no opset_import (onnxruntime would refuse it): refused too.
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])])
    model = helper.make_model(graph)
    del model.opset_import[:]
    (tmp_path / "no_opset.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelFileError,
                       match=r"parsed but is not an ONNX model \(no IR version, graph or opset\)"):
        write_model_repository(tmp_path / "no_opset.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_names_with_quotes_round_trip(tmp_path, pb2):
    graph = helper.make_graph(
        [helper.make_node("Identity", ['in "x"\\'], ["out\u00e9"])], "g",
        [helper.make_tensor_value_info('in "x"\\', TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("out\u00e9", TensorProto.FLOAT, ["n", 2])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "q.onnx")
    write_model_repository(tmp_path / "q.onnx", tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "q" / "config.pbtxt")
    assert [i.name for i in config.input] == ['in "x"\\']
    assert [o.name for o in config.output] == ["out\u00e9"]


def test_config_names_are_what_onnxruntime_serves(tmp_path, pb2):
    """The config's names/types are the ones the ONNX Runtime backend will find."""
    ort = pytest.importorskip("onnxruntime")
    model = _tied_ae(tmp_path / "ae.onnx")
    write_model_repository(model, tmp_path / "repo")
    config = _parse(pb2, tmp_path / "repo" / "ae" / "config.pbtxt")
    session = ort.InferenceSession(str(tmp_path / "repo" / "ae" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]
    assert [[-1, *i.dims] for i in config.input] == [
        [-1 if isinstance(d, str) else d for d in i.shape] for i in session.get_inputs()]


def test_cli(tmp_path, pb2, capsys):
    model = _tied_ae(tmp_path / "ae.onnx")
    repo = tmp_path / "repo"
    assert main(["triton", str(model), str(repo), "--name", "ae_cli", "--max-batch-size", "32",
                 "--instances", "2", "--gpu"]) == 0
    out = capsys.readouterr().out
    assert "config.pbtxt" in out and "--gpus=all" in out
    config = _parse(pb2, repo / "ae_cli" / "config.pbtxt")
    assert config.max_batch_size == 32
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, pb2.ModelInstanceGroup.KIND_GPU)]
    # A second run without --force is refused with exit code 2 and one line.
    assert main(["triton", str(model), str(repo), "--name", "ae_cli"]) == 2
    assert "already exist" in capsys.readouterr().err


def test_cli_default_matches_library():
    from tiedonnx.runtime.commands import triton as command

    assert command.DEFAULT_MAX_BATCH_SIZE == DEFAULT_MAX_BATCH_SIZE
