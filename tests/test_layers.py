"""Tied layers: the question's model in every form, every execution mode, save/load."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiedonnx.converter import Conv2DTransposeTied, DenseTied, find_ties  # noqa: E402
from tiedonnx.converter.errors import TieError  # noqa: E402

from .conftest import sigmoid  # noqa: E402

# float32 forward pass vs. the same formula in float64 numpy: measured max
# abs difference 1.8e-7 on the 4-2-4 sigmoid model; sigmoid outputs lie in
# (0, 1), so 1e-6 is a few float32 ulps with margin.
FORWARD_ATOL = 1e-6


def _sequential(with_input: bool):
    encoder = keras.layers.Dense(2, activation="sigmoid")
    decoder = DenseTied(4, activation="sigmoid", tied_to=encoder)  # the question's call, verbatim
    layers = [encoder, decoder]
    if with_input:
        layers = [keras.Input((4,))] + layers
    return keras.Sequential(layers), encoder, decoder


def _functional():
    inputs = keras.Input((4,), name="x")
    encoder = keras.layers.Dense(2, activation="sigmoid", name="enc")
    decoder = DenseTied(activation="sigmoid", tied_to=encoder, name="dec")
    return keras.Model(inputs, decoder(encoder(inputs))), encoder, decoder


@keras.saving.register_keras_serializable(package="tiedonnx_tests")
class TiedAE(keras.Model):
    def __init__(self, hidden=2, features=4, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.features = hidden, features
        self.encoder = keras.layers.Dense(hidden, activation="sigmoid", name="enc")
        self.decoder = DenseTied(features, activation="sigmoid", tied_to=self.encoder, name="dec")

    def call(self, x):
        return self.decoder(self.encoder(x))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "features": self.features}


def _subclassed():
    model = TiedAE()
    model(np.zeros((1, 4), "float32"))
    return model, model.encoder, model.decoder


BUILDERS = {
    "sequential_no_input": lambda: _sequential(False),
    "sequential_input": lambda: _sequential(True),
    "functional": _functional,
    "subclassed": _subclassed,
}


def _numpy_forward(x, encoder, decoder):
    w = encoder.kernel.numpy().astype(np.float64)
    b = encoder.bias.numpy().astype(np.float64)
    c = decoder.bias.numpy().astype(np.float64)
    return sigmoid(sigmoid(x @ w + b) @ w.T + c)


def _data(rng, n=64):
    return rng.random((n, 4)).astype("float32")


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_one_variable_per_tie(kind, rng):
    model, encoder, decoder = BUILDERS[kind]()
    model(_data(rng, 2))
    paths = [v.path for v in model.weights]
    assert len(paths) == 3, paths  # encoder kernel + bias, decoder bias: kernel once
    assert sum(1 for v in model.weights if v is encoder.kernel) == 1
    assert model.count_params() == 4 * 2 + 2 + 4
    own = decoder.get_weights()
    assert len(own) == 1 and own[0].shape == (4,)
    np.testing.assert_array_equal(np.asarray(decoder.kernel), encoder.kernel.numpy().T)
    ties = find_ties(model)
    assert len(ties) == 1
    assert ties[0].variable is encoder.kernel and ties[0].relation == "transpose"
    assert ties[0].decoder is decoder and ties[0].tied is encoder


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("mode", ["eager", "compiled", "jit"])
def test_trains_tied_in_every_mode(kind, mode, rng):
    model, encoder, decoder = BUILDERS[kind]()
    x = _data(rng)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss="mse",
        run_eagerly=(mode == "eager"), jit_compile=(mode == "jit"),
    )
    model(x[:2])  # builds the Sequential model that has no Input
    before = encoder.kernel.numpy().copy()
    model.fit(x, x, epochs=3, batch_size=16, verbose=0)
    after = encoder.kernel.numpy()
    assert not np.allclose(before, after), "the shared kernel did not train"
    # The decoder computes with the transpose of the encoder's *current* kernel.
    np.testing.assert_allclose(model(x).numpy(), _numpy_forward(x, encoder, decoder), atol=FORWARD_ATOL)
    np.testing.assert_array_equal(np.asarray(decoder.kernel), after.T)


def test_decoder_gradient_reaches_shared_kernel(rng):
    """Only the decoder's loss moves the kernel when the encoder's path is cut."""
    import tensorflow as tf

    model, encoder, decoder = _functional()
    h = tf.constant(rng.random((8, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(decoder(h))
    (grad,) = tape.gradient(loss, [encoder.kernel])
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_save_load_keeps_tie(kind, rng, tmp_path):
    model, encoder, decoder = BUILDERS[kind]()
    x = _data(rng)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, x, epochs=2, verbose=0)
    before_save = encoder.kernel.numpy().copy()
    path = tmp_path / "m.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)  # default safe_mode=True
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert len(loaded.weights) == 3
    ties = find_ties(loaded)
    assert len(ties) == 1
    enc2, dec2 = ties[0].tied, ties[0].decoder
    assert ties[0].variable is enc2.kernel
    np.testing.assert_array_equal(enc2.kernel.numpy(), encoder.kernel.numpy())

    loaded.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    loaded.fit(x, x, epochs=2, verbose=0)
    assert not np.array_equal(enc2.kernel.numpy(), before_save), "reloaded kernel did not train"
    np.testing.assert_array_equal(np.asarray(dec2.kernel), enc2.kernel.numpy().T)
    np.testing.assert_allclose(loaded(x).numpy(), _numpy_forward(x, enc2, dec2), atol=FORWARD_ATOL)


def test_stacked_ties_save_load(rng, tmp_path):
    inputs = keras.Input((12,))
    e1 = keras.layers.Dense(8, activation="relu", name="e1")
    e2 = keras.layers.Dense(3, activation="relu", name="e2")
    d2 = DenseTied(activation="relu", tied_to=e2, name="d2")
    d1 = DenseTied(activation="sigmoid", tied_to=e1, name="d1", use_bias=False)
    model = keras.Model(inputs, d1(d2(e2(e1(inputs)))))
    x = rng.random((5, 12)).astype("float32")
    model.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    rel = {(t.decoder.name, t.tied.name) for t in find_ties(loaded)}
    assert rel == {("d2", "e2"), ("d1", "e1")}
    assert len(loaded.weights) == 2 + 2 + 1  # e1 k,b; e2 k,b; d2 b (d1 has no bias)


def test_units_contradiction_names_both_numbers():
    encoder = keras.layers.Dense(2)
    encoder.build((None, 4))
    with pytest.raises(TieError, match=r"input size is 4.*units=5"):
        DenseTied(5, tied_to=encoder)


def test_units_contradiction_found_at_build_for_unbuilt_encoder():
    encoder = keras.layers.Dense(2)
    model = keras.Sequential([encoder, DenseTied(7, tied_to=encoder)])
    with pytest.raises(TieError, match=r"input size is 4.*units=7"):
        model(np.zeros((1, 4), "float32"))


def test_tied_to_must_be_dense():
    with pytest.raises(TieError, match=r"keras.layers.Dense.*Received: tied_to='c' of type Conv2D"):
        DenseTied(tied_to=keras.layers.Conv2D(2, 3, name="c"))
    with pytest.raises(TieError, match=r"Received: tied_to=None"):
        DenseTied(4)


def test_unresolvable_tie_names_missing_layer():
    layer = DenseTied.from_config({"tied_to": "ghost", "units": 4, "name": "dec"})
    inputs = keras.Input((2,))
    with pytest.raises(TieError, match=r"named 'ghost'"):
        layer(inputs)


def test_effective_kernel_is_read_only(rng):
    _, _, decoder = _functional()
    with pytest.raises(AttributeError):
        decoder.kernel = np.zeros((2, 4))


def _conv_model(padding="same", strides=2):
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(5, 3, strides=strides, padding=padding, activation="relu", name="conv")
    deconv = Conv2DTransposeTied(tied_to=conv, activation="sigmoid", name="deconv")
    return keras.Model(inputs, deconv(conv(inputs))), conv, deconv


def _conv_transpose_numpy(h, kernel, stride, out_hw):
    """Direct definition of a transposed convolution ('same' padding, stride s)."""
    n, hh, ww, _ = h.shape
    kh, kw, cin, _ = kernel.shape
    full = np.zeros((n, (hh - 1) * stride + kh, (ww - 1) * stride + kw, cin))
    for i in range(hh):
        for j in range(ww):
            full[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :] += np.einsum(
                "nc,hwkc->nhwk", h[:, i, j, :], kernel)
    pad_total = full.shape[1] - out_hw
    top = pad_total // 2
    return full[:, top:top + out_hw, top:top + out_hw, :]


def test_conv_tie_matches_numpy_and_trains(rng, tmp_path):
    model, conv, deconv = _conv_model()
    x = rng.random((4, 8, 8, 3)).astype("float32")
    assert model(x).shape == (4, 8, 8, 3)
    ties = find_ties(model)
    assert len(ties) == 1 and ties[0].relation == "identity" and ties[0].variable is conv.kernel
    assert len(model.weights) == 3

    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", jit_compile=True)
    model.fit(x, x, epochs=2, verbose=0)
    h = np.maximum(0, conv(x).numpy().astype(np.float64))
    k = conv.kernel.numpy().astype(np.float64)
    expected = sigmoid(_conv_transpose_numpy(h, k, 2, 8) + deconv.bias.numpy())
    np.testing.assert_allclose(model(x).numpy(), expected, atol=FORWARD_ATOL)

    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert len(loaded.weights) == 3 and find_ties(loaded)[0].relation == "identity"


def test_conv_tie_rejects_channel_mismatch():
    conv = keras.layers.Conv2D(5, 3, padding="same")
    conv.build((None, 8, 8, 3))
    with pytest.raises(TieError, match=r"expects 5 input channels"):
        Conv2DTransposeTied(tied_to=conv)(keras.Input((8, 8, 4)))


def test_model_without_ties():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert find_ties(model) == []


def test_reversible_embedding_is_a_tie():
    layer = keras.layers.ReversibleEmbedding(50, 8, tie_weights=True)
    layer.build((None, 5))
    ties = find_ties(keras.Sequential([keras.Input((5,), dtype="int32"), layer]))
    assert len(ties) == 1 and ties[0].variable is layer.embeddings and ties[0].relation == "transpose"
