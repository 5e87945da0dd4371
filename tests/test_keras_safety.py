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
    with pytest.raises(UnsafeModelError, match=r"Python bytecode.*unsafe=True"):
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


# ------------------------------------------------------------- issue 13: the scan


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - {"subclassed"}))
def test_the_scan_accepts_every_reference_model(name, tmp_path):
    """The markers and registered classes real files hold pass (subclassed models
    are not registered, so they are refused: tested above through os.system)."""
    from tiedonnx.converter.keras_io import scan_keras_archive

    models.MODELS[name]().save(tmp_path / "m.keras")
    scan_keras_archive(tmp_path / "m.keras")


def _tied_layer(config):
    return next(layer for layer in config["config"]["layers"] if layer["module"].startswith("tiedonnx"))


@pytest.mark.parametrize("edit, message", [
    (lambda c: _tied_layer(c).update(module="os"),
     r"refers to os\.DenseTied, which is neither part of Keras nor a custom object registered from that module"),
    (lambda c: _tied_layer(c).update(module="builtins", class_name="eval"), r"refers to builtins\.eval"),
    (lambda c: _tied_layer(c).update(class_name="__keras_tensor__", module="os"), r"refers to os\.__keras_tensor__"),
    (lambda c: _tied_layer(c).update(class_name="__typespec__", module="keras.layers"), r"keras\.layers\.__typespec__"),
    (lambda c: _tied_layer(c).update(class_name="__init__", module=None, registered_name=None), r"refers to \?\.__init__"),
])
def test_the_scan_does_not_trust_names_for_modules(edit, message, tmp_path):
    """Issue 13, case 11: a registered name, or a class_name starting with "__", used to skip
    the module check; now the module must be Keras's or the registered object's own."""
    models.dense_ae().save(tmp_path / "good.keras")
    _rewrite_config(tmp_path / "good.keras", tmp_path / "evil.keras", edit)
    with pytest.raises(UnsafeModelError, match=message):
        load_keras_model(tmp_path / "evil.keras")


@pytest.mark.parametrize("field, value", [("registered_name", ["a"]), ("registered_name", {"a": 1}),
                                          ("module", 5), ("class_name", None)])
def test_malformed_objects_are_model_file_errors(field, value, tmp_path):
    """Issue 13, case 1: a list registered_name was `TypeError: unhashable type`."""
    models.dense_ae().save(tmp_path / "good.keras")
    _rewrite_config(tmp_path / "good.keras", tmp_path / "bad.keras",
                    lambda c: _tied_layer(c).update({field: value}))
    with pytest.raises(ModelFileError, match=rf"malformed object in config.json \({field}="):
        load_keras_model(tmp_path / "bad.keras")


def test_nesting_cap(tmp_path):
    """Issue 13, case 1: 200k levels was a RecursionError; the scan caps nesting at 100."""
    from tiedonnx.converter import keras_io

    def nest(depth):
        node = 1
        for _ in range(depth):
            node = [node]
        return node

    models.untied_model().save(tmp_path / "m.keras")
    for depth, refused in ((keras_io.MAX_CONFIG_DEPTH - 10, False), (keras_io.MAX_CONFIG_DEPTH + 1, True)):
        _rewrite_config(tmp_path / "m.keras", tmp_path / "deep.keras",
                        lambda c, depth=depth: c["config"].update(deep=nest(depth)))
        if refused:
            with pytest.raises(ModelFileError, match="nested more than 100 levels deep"):
                keras_io.scan_keras_archive(tmp_path / "deep.keras")
        else:
            keras_io.scan_keras_archive(tmp_path / "deep.keras")


def test_every_archive_member_counts_toward_the_cap(tmp_path, monkeypatch):
    """Issue 13, case 10: members were summed by name, so duplicates counted once."""
    import warnings

    from tiedonnx.converter import keras_io

    models.untied_model().save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    total = sum(len(data) for _, data in members)
    with zipfile.ZipFile(tmp_path / "pad.keras", "w") as z:
        for name, data in [*members, ("pad1", b"\0" * 1000), ("pad2", b"\0" * 1000)]:
            z.writestr(name, data)
    monkeypatch.setattr(keras_io, "MAX_ARCHIVE_BYTES", total + 1500)  # one pad fits, not two
    with pytest.raises(ModelFileError, match=rf"unpacks to {total + 2000} bytes"):
        keras_io.scan_keras_archive(tmp_path / "pad.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: Duplicate name
        with zipfile.ZipFile(tmp_path / "dup.keras", "w") as z:
            for name, data in [*members, members[-1]]:
                z.writestr(name, data)
    with pytest.raises(ModelFileError, match=r"holds several members named \['"):
        keras_io.scan_keras_archive(tmp_path / "dup.keras")
