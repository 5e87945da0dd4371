"""tiedonnx.converter: the Keras side of tiedonnx.

Tied layers, tie discovery, export through tf2onnx, ONNX graph passes and
parity checks against Keras. Importing this package registers the tied layers
with Keras, so ``keras.saving.load_model`` finds them in safe mode.

The ONNX graph passes (:mod:`tiedonnx.converter.graph`) need only onnx and
numpy; on an install without the ``convert`` extra they still work, and the
Keras-side names raise an error that says how to install it.
"""

from __future__ import annotations

import importlib.util

from .graph import RetieReport, find_duplicates, retie

_KERAS_NAMES = {
    "DenseTied": ".layers",
    "Conv2DTransposeTied": ".layers",
    "Tie": ".ties",
    "find_ties": ".ties",
    "export": ".export",
    "ExportReport": ".export",
    "verify": ".parity",
    "ParityReport": ".parity",
    "load_keras_model": ".keras_io",
}

__all__ = sorted([*_KERAS_NAMES, "retie", "RetieReport", "find_duplicates"])

if importlib.util.find_spec("keras") is not None:
    # Eager import: registers DenseTied and Conv2DTransposeTied with Keras.
    from .layers import Conv2DTransposeTied, DenseTied  # noqa: E402
    from .ties import Tie, find_ties  # noqa: E402


def __getattr__(name: str):
    module = _KERAS_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'tiedonnx.converter' has no attribute {name!r}")
    if importlib.util.find_spec("keras") is None:
        from .errors import UsageError

        raise UsageError(
            f"tiedonnx.converter.{name} needs Keras and TensorFlow, which are not installed. "
            "Install them with: pip install 'tiedonnx[convert]'"
        )
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
