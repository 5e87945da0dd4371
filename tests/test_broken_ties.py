"""A tie its author wrote that Keras already broke: export says so in one line."""

from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from .models import dense_ae  # noqa: E402

from tiedonnx.converter.broken_ties import NEAR_COPY_RATIO, find_broken_ties  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402


class NaiveDenseTied(keras.layers.Layer):
    """The Stack Overflow recipe in Keras 3: the transpose taken once, in build()."""

    def __init__(self, units, tied_to, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.tied_to, self.activation = units, tied_to, keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = keras.ops.transpose(self.tied_to.kernel)  # a value, not the variable
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return self.activation(keras.ops.matmul(inputs, self.kernel) + self.bias)


def _recipe(epochs: int):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    enc = keras.layers.Dense(4, activation="sigmoid", name="enc")
    model = keras.Model(inputs, NaiveDenseTied(8, tied_to=enc, activation="sigmoid", name="dec")(enc(inputs)))
    if epochs:
        model.compile(optimizer="adam", loss="mse")
        x = np.random.default_rng(0).random((256, 8), dtype=np.float32)
        model.fit(x, x, epochs=epochs, verbose=0)
    return model


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "tiedonnx.converter.broken_ties"]


def test_trained_recipe_export_warns_once_naming_both_layers_and_the_drift(tmp_path, caplog):
    model = _recipe(epochs=2)
    drift = float(np.abs(model.get_layer("dec").kernel - model.get_layer("enc").kernel.numpy().T).max())
    assert drift > 0  # the copy stayed behind while the encoder trained
    with caplog.at_level(logging.WARNING):
        report = export(model, tmp_path / "m.onnx")
    (line,) = _warnings(caplog)
    assert "layer 'dec'" in line and "'enc/kernel'" in line and "transposed copy" in line
    assert f"max diff {drift:.3g}" in line and "tiedonnx.converter.DenseTied" in line
    assert report.ties == []  # faithful to Keras: two different matrices


def test_untrained_recipe_is_reported_before_it_drifts():
    (broken,) = find_broken_ties(_recipe(epochs=0))
    assert (broken.layer, broken.variable, broken.transposed, broken.max_diff) == ("dec", "enc/kernel", True, 0.0)
    assert "will not follow it" in broken.message()


def test_functional_model_transposing_at_build_time_is_reported():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    emb = keras.layers.Embedding(50, 8, name="emb")
    h = keras.layers.Dense(8, name="mix")(emb(tokens))
    model = keras.Model(tokens, keras.ops.matmul(h, keras.ops.transpose(emb.embeddings)), name="lm")
    emb.embeddings.assign(emb.embeddings + 0.01)  # as one training step would
    (broken,) = find_broken_ties(model)
    assert broken.variable == "emb/embeddings" and broken.by_model and broken.layer == "lm"
    assert broken.max_diff == pytest.approx(0.01, abs=1e-6)
    assert "model 'lm'" in broken.message()


def test_real_ties_and_unrelated_constants_are_not_reported(tmp_path, caplog):
    keras.utils.set_random_seed(0)
    assert find_broken_ties(dense_ae()) == []  # DenseTied reads the variable itself
    inputs = keras.Input((8,), name="x")
    enc = keras.layers.Dense(4, name="enc")
    other = np.asarray(keras.initializers.GlorotUniform(seed=7)((8, 4)))  # a constant of the same shape
    model = keras.Model(inputs, keras.ops.matmul(enc(inputs), other.T))
    assert np.linalg.norm(other - enc.kernel.numpy()) / np.linalg.norm(enc.kernel.numpy()) > NEAR_COPY_RATIO
    with caplog.at_level(logging.WARNING):
        export(model, tmp_path / "m.onnx")
    assert _warnings(caplog) == []


def test_readme_problem_example_prints_the_warning(tmp_path):
    """The README's "The problem" block, run as pasted, prints the line the README quotes."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "NaiveDenseTied" in b]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    quoted = re.search(r"It prints: `(.*?)`\.", readme, re.S)[1].replace("\n", " ")
    assert quoted in proc.stdout and quoted in proc.stderr  # printed, and logged by export
