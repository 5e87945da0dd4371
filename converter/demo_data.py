"""Data and model of ``tiedonnx demo``: bundled digits at 28x28 and a 784 -> 256 tie.

scikit-learn's 1,797 bundled 8x8 digits are upscaled 3x (each pixel becomes a
3x3 block) and padded by 2 to 28x28, the MNIST frame, so the tie is the size
of a real model (a 784x256 kernel, 0.8 MB in fp32) while nothing is
downloaded. ``scripts/bench_edge.py`` uses the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 28             # image side after upscaling: 8 * 3 + 2 * 2
PIXELS = SIDE * SIDE  # 784
HIDDEN = 256
TEST_ROWS = 297       # digits has 1,797 images: 1,500 train, 297 held out
_UPSCALE, _PAD = 3, 2


@dataclass(frozen=True)
class DigitsSplit:
    """Train and held-out images (rows of ``PIXELS`` floats in [0, 1]) and held-out labels."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def one_per_class(self) -> np.ndarray:
        """Indices into ``x_test`` of the first held-out example of each class 0-9."""
        return np.array([int(np.flatnonzero(self.y_test == c)[0]) for c in range(10)])


def upscale(images: np.ndarray) -> np.ndarray:
    """``[n, 8, 8]`` images in [0, 1] -> ``[n, 784]`` rows of the 28x28 frame."""
    block = np.kron(images, np.ones((_UPSCALE, _UPSCALE), np.float32))
    framed = np.pad(block, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    return framed.reshape(len(images), PIXELS).astype(np.float32)


def load_digits_28(seed: int = 0) -> DigitsSplit:
    """The bundled digits at 28x28, shuffled with ``seed``, split 1,500 / 297."""
    from tiedonnx.runtime.extras import SKLEARN

    SKLEARN.load("The demo's digits data")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = upscale(digits.images.astype(np.float32) / 16.0)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:TEST_ROWS], order[TEST_ROWS:]
    return DigitsSplit(x[train], x[test], digits.target[test])


def build_model():
    """The tied autoencoder ``784 -> 256 -> 784``: one 784x256 kernel, two biases."""
    import keras

    from .layers import DenseTied

    inputs = keras.Input((PIXELS,), name="pixels")
    encoder = keras.layers.Dense(HIDDEN, activation="sigmoid", name="encoder")
    decoder = DenseTied(activation="sigmoid", tied_to=encoder, name="decoder")
    return keras.Model(inputs, decoder(encoder(inputs)), name="tied_digits_ae")


def train(x_train: np.ndarray, *, epochs: int, seed: int = 0):
    """Build and fit the model (Adam 1e-2, batch 64, MSE); returns the Keras model."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x_train, x_train, epochs=epochs, batch_size=64, verbose=0)
    return model
