"""tiedonnx.converter: the Keras side of tiedonnx (needs the ``convert`` extra).

The only package that imports TensorFlow, Keras or tf2onnx: tied layers, tie
discovery, safe Keras loading, tf2onnx conversion, parity against Keras,
export and the demo. Everything that needs only numpy, onnx and onnxruntime
(graph passes, sessions, the CLI) lives in :mod:`tiedonnx.runtime`; imports
run one way, converter -> runtime.

Importing this package registers the tied layers with Keras, so
``keras.saving.load_model`` finds them in safe mode. Without the ``convert``
extra it raises :class:`~tiedonnx.runtime.errors.MissingExtraError` (an
``ImportError``) that names the install command.
"""

from __future__ import annotations

import importlib

from tiedonnx.runtime.extras import require

require("convert", what="tiedonnx.converter")

from ._quiet import import_tensorflow  # noqa: E402

import_tensorflow()

# Eager: registers DenseTied and Conv2DTransposeTied with Keras.
from .layers import Conv2DTransposeTied, DenseTied  # noqa: E402
from .ties import Tie, find_ties  # noqa: E402

_LAZY = {
    "export": ".export",
    "ExportReport": ".export",
    "verify": ".parity",
    "ParityReport": ".parity",
    "load_keras_model": ".keras_io",
}

__all__ = sorted([*_LAZY, "Conv2DTransposeTied", "DenseTied", "Tie", "find_ties"])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiedonnx.converter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
