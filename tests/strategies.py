"""Hypothesis strategies: random tied architectures (shared by the test and scripts/property_export.py)."""

from __future__ import annotations

from hypothesis import strategies as st

ACTIVATIONS = ["sigmoid", "relu", "tanh", "elu", "selu", "softplus", "gelu", "celu", "swish", "linear"]


@st.composite
def tied_architectures(draw):
    """depth 1-3 ties, random widths and activations, with/without bias, Sequential or functional."""
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 24))]
    for _ in range(depth):
        widths.append(draw(st.integers(1, 16)))
    return {
        "widths": widths,
        "activations": [draw(st.sampled_from(ACTIVATIONS)) for _ in range(2 * depth)],
        "bias": [draw(st.booleans()) for _ in range(2 * depth)],
        "sequential": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(arch):
    """The Keras model an architecture describes (weights seeded)."""
    import keras

    from tiedonnx.converter import DenseTied

    keras.utils.set_random_seed(arch["seed"])
    widths, acts, bias = arch["widths"], arch["activations"], arch["bias"]
    depth = len(widths) - 1
    encoders = [keras.layers.Dense(widths[i + 1], activation=acts[i], use_bias=bias[i],
                                   bias_initializer="random_normal") for i in range(depth)]
    decoders = [DenseTied(widths[i], activation=acts[depth + i], use_bias=bias[depth + i],
                          tied_to=encoders[i], bias_initializer="random_normal")
                for i in reversed(range(depth))]
    if arch["sequential"]:
        model = keras.Sequential([keras.Input((widths[0],)), *encoders, *decoders])
    else:
        inputs = keras.Input((widths[0],), name="x")
        x = inputs
        for layer in [*encoders, *decoders]:
            x = layer(x)
        model = keras.Model(inputs, x)
    return model
