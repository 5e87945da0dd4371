"""Triton's Python-backend model (runtime/triton/serving.py) without a server: a stand-in for
the stub's ``triton_python_backend_utils`` drives it directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.triton_helpers import model_config_pb2 as _model_config_pb2, parse as _parse, tied_ae as _tied_ae
from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.triton import write_model_repository


# -- serving.py without a server: a stand-in for the stub's triton_python_backend_utils --------

class _FakeTritonError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class _FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {name: value for name, value in output_tensors}
        self.error = error


class _FakeTensor:
    @staticmethod
    def from_dlpack(name, array):
        return name, np.from_dlpack(array).copy()


def _fake_pb_utils():
    import types

    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError, module.InferenceResponse, module.Tensor = (
        _FakeTritonError, _FakeResponse, _FakeTensor)
    # A request is a dict of arrays; numpy arrays speak DLPack like the stub's tensors.
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


def _serving_model(tmp_path, monkeypatch, model: Path, **options):
    from tiedonnx.runtime.triton.serving import TritonPythonModel

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    write_model_repository(model, tmp_path / "repo", backend="python", **options)
    config = _parse(_model_config_pb2(), tmp_path / "repo" / model.stem / "config.pbtxt")
    from google.protobuf import json_format

    served = TritonPythonModel()
    served.initialize({
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(tmp_path / "repo" / model.stem), "model_version": "1",
        "model_instance_kind": "CPU", "model_instance_device_id": "0",
        "model_instance_name": "test_0"})
    return served


def test_serving_batch_with_a_refused_request(tmp_path, monkeypatch):
    """Three requests in one execute call: the NaN one gets INVALID_ARG with tiedonnx's
    message, the two others their own rows of one merged run."""
    from tiedonnx.runtime import load

    model = _tied_ae(tmp_path / "ae.onnx")
    served = _serving_model(tmp_path, monkeypatch, model)
    rng = np.random.default_rng(5)
    good1, good2 = rng.random((2, 784), dtype=np.float32), rng.random((3, 784), dtype=np.float32)
    bad = good1.copy()
    bad[1, 3] = np.nan
    responses = served.execute([{"pixels": good1}, {"pixels": bad}, {"pixels": good2}])
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.code == "INVALID_ARG"
    assert responses[1].error.message.startswith(
        "tiedonnx: Input 'pixels' contains NaN or inf (first at row 1)")
    reference = load(model, providers="cpu", memory="lean").run(np.concatenate([good1, good2]))
    for response, rows in ((responses[0], slice(0, 2)), (responses[2], slice(2, 5))):
        assert sorted(response.outputs) == ["code", "out"]
        for name, value in response.outputs.items():
            np.testing.assert_array_equal(value, reference[name][rows])  # one merged run


def test_serving_int8_runs_each_request_alone(tmp_path, monkeypatch):
    """Dynamic int8 picks its activation scale per run: a request's answer must not
    depend on the requests batched with it."""
    from tiedonnx.runtime import load
    from tiedonnx.runtime.graph.quantize import to_precision

    int8 = tmp_path / "ae_int8.onnx"
    onnx.save(to_precision(onnx.load(_tied_ae(tmp_path / "ae.onnx")), "int8"), int8)
    served = _serving_model(tmp_path, monkeypatch, int8)
    rng = np.random.default_rng(6)
    small, large = rng.random((2, 784), dtype=np.float32) * 0.1, rng.random((2, 784),
                                                                             dtype=np.float32) * 9
    alone = load(int8, providers="cpu", memory="lean").run(small)["out"]
    merged = load(int8, providers="cpu", memory="lean").run(np.concatenate([small, large]))["out"]
    assert np.abs(alone - merged[:2]).max() > 1e-4  # merging would change the answer
    responses = served.execute([{"pixels": small}, {"pixels": large}])
    np.testing.assert_array_equal(responses[0].outputs["out"], alone)


@pytest.mark.parametrize("suffix", ["my env", "env;touch x", "$(id)", "env'"])
def test_python_env_paths_triton_would_paste_into_bash(tmp_path, suffix):
    """Triton starts the stub with `bash -c "source $EXECUTION_ENV_PATH/bin/activate ..."`
    unquoted: such paths would break it or run as shell code in the server."""
    env = tmp_path / suffix
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text("")
    with pytest.raises(UsageError, match=r"EXECUTION_ENV_PATH unquoted into a bash command"):
        write_model_repository(_tied_ae(tmp_path / "ae.onnx"), tmp_path / "repo",
                               backend="python", python_env=env)
    with pytest.raises(UsageError, match=r"contains \[' ', ';'\]"):
        write_model_repository(_tied_ae(tmp_path / "ae.onnx"), tmp_path / "repo",
                               backend="python", python_env="$$TRITON_MODEL_DIRECTORY/a b;.tar.gz")
    assert not (tmp_path / "repo").exists()
