"""A .keras file Keras cannot rebuild: the error names the real cause, not a missing import."""

from __future__ import annotations

from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from tiedonnx.converter.errors import ModelFileError  # noqa: E402
from tiedonnx.converter.keras_io import _load_error, load_keras_model  # noqa: E402


def test_keras_hub_tied_llama3_file_names_the_config_defect(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    m = keras_hub.models
    keras.utils.set_random_seed(0)
    backbone = m.Llama3Backbone(vocabulary_size=97, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                                hidden_dim=16, intermediate_dim=32, tie_word_embeddings=True)
    m.Llama3CausalLM(backbone, preprocessor=None).save(tmp_path / "llama3.keras")
    with pytest.raises(ModelFileError, match=r"rebuilt layer 'token_embedding' .* 2 variable\(s\) "
                                             r"\['embeddings', 'reverse_embeddings'\] but the file holds 0") as info:
        load_keras_model(tmp_path / "llama3.keras", import_modules=["keras_hub"])
    assert "import tiedonnx" not in str(info.value) and "export(model" in str(info.value)


@keras.saving.register_keras_serializable(package="tiedonnx_tests")
class NaiveDenseTied(keras.layers.Layer):
    """The Stack Overflow recipe with the get_config() Keras 3 demands: it cannot carry tied_to."""

    def __init__(self, units, tied_to, **kwargs):
        super().__init__(**kwargs)
        self.units, self.tied_to = units, tied_to

    def build(self, input_shape):
        self.kernel = keras.ops.transpose(self.tied_to.kernel)

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_naive_recipe_file_names_the_missing_tied_to(tmp_path):
    inputs = keras.Input((8,), name="x")
    enc = keras.layers.Dense(4, name="enc")
    keras.Model(inputs, NaiveDenseTied(8, tied_to=enc, name="dec")(enc(inputs))).save(tmp_path / "naive.keras")
    # unsafe=True: this test module is not a package tiedonnx may import in safe mode.
    with pytest.raises(ModelFileError, match=r"cannot rebuild NaiveDenseTied: .* lacks the constructor "
                                             r"argument\(s\) 'tied_to'.*tiedonnx.converter.DenseTied"):
        load_keras_model(tmp_path / "naive.keras", unsafe=True)


def test_unregistered_class_keeps_the_import_hint():
    exc = TypeError("Could not locate class 'DenseTied'. Make sure custom classes are decorated with "
                    "`@keras.saving.register_keras_serializable()`.")
    message = str(_load_error(Path("m.keras"), exc))
    assert "import tiedonnx.converter" in message
    assert "import tiedonnx" not in str(_load_error(Path("m.keras"), ValueError("bad zip")))
