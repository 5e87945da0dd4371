"""Untrusted .keras/.h5 files: code is refused unless the caller opts in, loudly."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiedonnx.converter.errors import ModelFileError, UnsafeModelError  # noqa: E402
from tiedonnx.converter.keras_io import load_keras_model  # noqa: E402
from tiedonnx.runtime.cli import main  # noqa: E402

from . import models  # noqa: E402


@pytest.fixture
def lambda_file(tmp_path):
    inputs = keras.Input((4,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(3)(inputs))
    keras.Model(inputs, out).save(tmp_path / "lam.keras")
    return tmp_path / "lam.keras"


def _rewrite_config(src, dst, edit):
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    edit(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_lambda_refused_by_default_and_loaded_with_opt_in(lambda_file, tmp_path, capsys):
    with pytest.raises(UnsafeModelError, match=r"Python bytecode.*unsafe=True \(CLI: --unsafe-load-code\)"):
        load_keras_model(lambda_file)
    model = load_keras_model(lambda_file, unsafe=True)
    np.testing.assert_allclose(model(np.ones((1, 4), "float32")).numpy(),
                               2.0 * model.layers[1](np.ones((1, 4), "float32")).numpy(), rtol=1e-6)
    assert main(["export", str(lambda_file), "-o", str(tmp_path / "l.onnx")]) == 2
    assert "Python bytecode" in capsys.readouterr().err
    assert not (tmp_path / "l.onnx").exists()
    assert main(["export", str(lambda_file), "-o", str(tmp_path / "l.onnx"), "--unsafe-load-code"]) == 0


def test_reference_to_arbitrary_module_refused(tmp_path):
    models.untied_model().save(tmp_path / "plain.keras")

    def point_at_os_system(config):
        layer = config["config"]["layers"][1]
        layer.update(module="os", class_name="system", registered_name=None)

    _rewrite_config(tmp_path / "plain.keras", tmp_path / "evil.keras", point_at_os_system)
    with pytest.raises(UnsafeModelError, match=r"refers to os\.system, which is neither part of Keras"):
        load_keras_model(tmp_path / "evil.keras")


def test_tied_layers_load_in_safe_mode(tmp_path):
    model = models.stacked_ae()
    model.save(tmp_path / "s.keras")
    loaded = load_keras_model(tmp_path / "s.keras")
    x = np.random.default_rng(0).random((3, 48)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_h5_needs_opt_in(tmp_path):
    path = tmp_path / "legacy.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(UnsafeModelError, match=r"legacy HDF5.*does not apply safe mode"):
        load_keras_model(path)


def test_oversized_config_refused(tmp_path, monkeypatch):
    from tiedonnx.converter import keras_io

    models.untied_model().save(tmp_path / "m.keras")
    monkeypatch.setattr(keras_io, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(ModelFileError, match=r"possible zip bomb"):
        load_keras_model(tmp_path / "m.keras")


@pytest.mark.parametrize("name, content, message", [
    ("m.keras", b"not a zip at all", "not a valid .keras file"),
    ("m.txt", b"x", "Expected a .keras model file"),
])
def test_bad_files(name, content, message, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_keras_model(tmp_path / name)
    with pytest.raises(ModelFileError, match="directory"):
        load_keras_model(tmp_path)
