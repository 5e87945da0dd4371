"""Models over the external-data threshold: ``model.onnx`` + ``model.onnx.data``, written
atomically and read by every command. The threshold is lowered so small models take that path."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tiedonnx.runtime import model_save
from tiedonnx.runtime.cli import main
from tiedonnx.runtime.errors import OutputExistsError
from tiedonnx.runtime.model_file import read_model
from tiedonnx.runtime.model_save import data_path_for, save_model
from tiedonnx.runtime.testing import tied_autoencoder

FEATURES, HIDDEN = 64, 16
W_BYTES = FEATURES * HIDDEN * 4
LOW = 1000  # bytes: the tied autoencoder serializes to about 5 kB


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(model_save, "EXTERNAL_DATA_THRESHOLD", LOW)


@pytest.fixture
def proto():
    return tied_autoencoder(FEATURES, HIDDEN)


@pytest.fixture
def ext_path(tmp_path, proto):
    path = tmp_path / "ae.onnx"
    save_model(proto, path, threshold=LOW)
    return path


@pytest.fixture
def x(tmp_path, rng):
    return rng.random((5, FEATURES), dtype=np.float32)


def _run(source, x):
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _assert_external_pair(path, *, min_data=W_BYTES):
    path = os.fspath(path)
    data = data_path_for(path)
    assert os.path.isfile(path) and data.is_file()
    assert os.path.getsize(path) < W_BYTES  # the kernel is not in the model file
    assert data.stat().st_size >= min_data
    assert sorted(os.listdir(os.path.dirname(path))) == sorted(
        {os.path.basename(path), data.name} | _others(path)), "temporary files left"
    checked = read_model(path)
    assert checked.has_external_data
    for tensor in onnx.load(path, load_external_data=False).graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            assert {e.key: e.value for e in tensor.external_data}["location"] == data.name
    return checked


def _others(path):
    """Files in the folder that are not this model's pair (inputs, sources)."""
    folder, name = os.path.dirname(path), os.path.basename(path)
    return {f for f in os.listdir(folder) if not f.startswith(f".{name}") and not f.startswith(name)}


def test_small_model_stays_one_file(tmp_path, proto):
    saved = save_model(proto, tmp_path / "ae.onnx")
    assert saved.data_path is None and not data_path_for(tmp_path / "ae.onnx").exists()
    assert (tmp_path / "ae.onnx").stat().st_size == saved.bytes == proto.ByteSize()


def test_large_model_writes_model_and_data(ext_path, proto, x):
    before = proto.SerializeToString()
    checked = _assert_external_pair(ext_path)
    assert proto.SerializeToString() == before, "save_model changed the caller's proto"
    assert set(os.listdir(ext_path.parent)) == {"ae.onnx", "ae.onnx.data"}
    want = _run(before, x)
    np.testing.assert_array_equal(_run(str(ext_path), x), want)
    np.testing.assert_array_equal(_run(checked.proto.SerializeToString(), x), want)


@pytest.mark.parametrize("existing", ["ae.onnx", "ae.onnx.data"])
def test_existing_targets_are_not_clobbered(tmp_path, proto, existing):
    (tmp_path / existing).write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        save_model(proto, tmp_path / "ae.onnx", threshold=LOW)
    assert set(os.listdir(tmp_path)) == {existing}
    assert (tmp_path / existing).read_bytes() == b"keep"
    save_model(proto, tmp_path / "ae.onnx", threshold=LOW, force=True)
    _assert_external_pair(tmp_path / "ae.onnx")


def test_cli_run_and_inspect_read_external_data(ext_path, proto, x, tmp_path, capsys):
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_path, x)
    assert main(["run", str(ext_path), "-i", str(x_path), "-o", str(y_path), "--provider", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(y_path), _run(proto.SerializeToString(), x))
    assert main(["inspect", str(ext_path)]) == 0
    assert "W" in capsys.readouterr().out


def test_cli_retie_writes_external_data(ext_path, proto, x, tmp_path, low_threshold):
    out = tmp_path / "out" / "re.onnx"
    out.parent.mkdir()
    assert main(["retie", str(ext_path), "-o", str(out)]) == 0
    _assert_external_pair(out)
    np.testing.assert_array_equal(_run(str(out), x), _run(proto.SerializeToString(), x))
    assert main(["retie", str(ext_path), "-o", str(out)]) != 0  # no clobbering without --force


def test_cli_quantize_writes_external_data(ext_path, proto, x, tmp_path, low_threshold):
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    data_path_for(out).write_bytes(b"keep")  # a stray data file blocks the write
    assert main(["quantize", str(ext_path), "-o", str(out), "--precision", "fp16"]) != 0
    assert not out.exists() and data_path_for(out).read_bytes() == b"keep"
    assert main(["quantize", str(ext_path), "-o", str(out), "--precision", "fp16", "--force"]) == 0
    _assert_external_pair(out, min_data=W_BYTES // 2)
    in_memory = onnx.load(str(out))  # onnx loads the data file beside it
    np.testing.assert_array_equal(_run(str(out), x), _run(in_memory.SerializeToString(), x))
    np.testing.assert_allclose(_run(str(out), x), _run(proto.SerializeToString(), x), atol=1e-2)


def test_export_and_verify_with_external_data(tmp_path):
    keras = pytest.importorskip("keras")
    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import make_inputs
    from tiedonnx.converter.tf_convert import input_specs

    from . import models

    model = models.dense_ae(features=FEATURES, hidden=HIDDEN)
    path = tmp_path / "ae.onnx"
    data_path_for(path).write_bytes(b"keep")
    with pytest.raises(OutputExistsError):  # checked before any work
        export(model, path, external_threshold=LOW)
    assert data_path_for(path).read_bytes() == b"keep" and not path.exists()
    report = export(model, path, external_threshold=LOW, force=True)
    assert report.parity is not None and report.parity.ok
    assert report.data_path == str(data_path_for(path))
    assert report.bytes == path.stat().st_size + data_path_for(path).stat().st_size
    _assert_external_pair(path)
    x = make_inputs(model, input_specs(model), 5, seed=1)[0]
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(_run(str(path), x), want, atol=1e-5, rtol=1e-5)
    model.save(tmp_path / "ae.keras")
    assert main(["verify", str(tmp_path / "ae.keras"), str(path)]) == 0


# --- sessions over in-memory models above protobuf's limit ---------------------------------
# The limit is lowered: open_proto_session then hands W (4 kB) to onnxruntime beside the graph.

@pytest.fixture
def low_limit(monkeypatch):
    from tiedonnx.runtime import sessions as session

    monkeypatch.setattr(session, "PROTOBUF_LIMIT", LOW)
    monkeypatch.setattr(session, "DETACH_BYTES", 1024)
    sources = []
    real = session.open_session
    monkeypatch.setattr(session, "open_session",
                        lambda source, *a, **k: sources.append(source) or real(source, *a, **k))
    return sources


def test_proto_over_the_limit_runs_with_its_weights_beside_it(proto, x, low_limit):
    from tiedonnx.runtime.sessions import open_proto_session

    before = proto.SerializeToString()
    session = open_proto_session(proto, providers=["CPUExecutionProvider"], label="m")
    (sent,) = low_limit
    graph_only = onnx.load_from_string(sent)
    (w,) = [i for i in graph_only.graph.initializer if i.name == "W"]
    assert w.data_location == onnx.TensorProto.EXTERNAL and not w.raw_data  # W went beside the graph
    assert len(sent) < len(before) - W_BYTES + 200
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], _run(before, x))
    assert proto.SerializeToString() == before  # restored


def test_proto_is_restored_when_onnxruntime_refuses_it(proto, low_limit):
    from tiedonnx.runtime.errors import ModelFileError
    from tiedonnx.runtime.sessions import open_proto_session

    proto.graph.node[0].op_type = "NoSuchOp"
    before = proto.SerializeToString()
    with pytest.raises(ModelFileError, match="onnxruntime cannot load model 'm'"):
        open_proto_session(proto, providers=["CPUExecutionProvider"], label="m")
    assert proto.SerializeToString() == before


def test_lean_loads_a_model_over_the_limit(ext_path, proto, x, low_limit):
    from tiedonnx.runtime import load

    model = load(ext_path, providers="cpu", memory="lean")
    np.testing.assert_allclose(model.run(x)["y"], _run(proto.SerializeToString(), x), atol=1e-6)
    assert any(isinstance(s, bytes) for s in low_limit)  # the rewritten graph, not the file


def test_export_reads_the_threshold_of_model_save_when_it_runs(tmp_path, low_threshold):
    pytest.importorskip("keras")
    from tiedonnx.converter.export import export

    from . import models

    report = export(models.dense_ae(features=FEATURES, hidden=HIDDEN), tmp_path / "ae.onnx", verify=False)
    assert report.data_path == str(data_path_for(tmp_path / "ae.onnx"))  # ~5 kB > the patched 1000 B


def test_export_checks_parity_over_the_limit_and_catches_a_wrong_weight(tmp_path, low_limit):
    pytest.importorskip("keras")
    from tiedonnx.converter.errors import ParityError
    from tiedonnx.converter.export import export
    from tiedonnx.converter.parity import verify

    from . import models

    model = models.dense_ae(features=FEATURES, hidden=HIDDEN)
    report = export(model, tmp_path / "ae.onnx", external_threshold=LOW)
    assert report.parity is not None and report.parity.ok
    saved = onnx.load(str(tmp_path / "ae.onnx"))
    (w,) = [i for i in saved.graph.initializer if len(i.dims) == 2]
    array = onnx.numpy_helper.to_array(w).copy()
    array[0, 0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
    with pytest.raises(ParityError):
        verify(model, saved)
