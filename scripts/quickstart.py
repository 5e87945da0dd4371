"""The question's tied autoencoder (4 -> 2 -> 4, sigmoid), done right.

Trains it, shows that the decoder follows the encoder, saves and reloads it.
Run: python scripts/quickstart.py
"""

import numpy as np

import keras
from tiedonnx.converter import DenseTied, find_ties

encoded1 = keras.layers.Dense(2, activation="sigmoid")
decoded1 = DenseTied(4, activation="sigmoid", tied_to=encoded1)
autoencoder = keras.Sequential([encoded1, decoded1])
autoencoder.compile(optimizer="adam", loss="mse")

x = np.random.default_rng(0).random((256, 4)).astype("float32")
autoencoder.fit(x, x, epochs=20, verbose=0)
autoencoder.summary()
print("encoder kernel:\n", encoded1.get_weights()[0])
print("decoder kernel (transposed, shared):\n", np.asarray(decoded1.kernel))
print("ties:", [t.as_dict() for t in find_ties(autoencoder)])
autoencoder.save("/tmp/tiedonnx-quickstart.keras")
reloaded = keras.saving.load_model("/tmp/tiedonnx-quickstart.keras")
print("reloaded max abs diff:", float(np.abs(reloaded(x) - autoencoder(x)).max()))
