"""tiedonnx.runtime: run tied ONNX models on onnxruntime.

Imports numpy and onnxruntime only, so an edge install never pulls TensorFlow
(``onnx`` is imported lazily when a model file is read). The names below load
on first use, so building the ``tiedonnx`` CLI parser imports neither.

Example:
    >>> from tiedonnx.runtime import load  # doctest: +SKIP
    >>> model = load("ae.onnx")
    >>> outputs = model.run(x)            # {output name: array}
"""

from __future__ import annotations

import importlib

from .errors import (
    ConversionError,
    InputError,
    MissingExtraError,
    ModelFileError,
    OutputExistsError,
    OutputWriteError,
    ProviderError,
    TiedOnnxError,
    UnsafeModelError,
    UsageError,
)

#: ``__version__`` of a source tree that was never installed (no package metadata to read).
UNINSTALLED_VERSION = "0+unknown"

_LAZY = {
    "load": ".session",
    "TiedModel": ".session",
    "TensorSpec": ".inputs",
    "load_array_file": ".inputs",
}

__all__ = sorted([
    *_LAZY,
    "ConversionError",
    "InputError",
    "MissingExtraError",
    "ModelFileError",
    "OutputExistsError",
    "OutputWriteError",
    "ProviderError",
    "TiedOnnxError",
    "UnsafeModelError",
    "UsageError",
    "__version__",
])


def __getattr__(name: str):
    if name == "__version__":  # on first use: importlib.metadata is not free to import
        value = installed_version()
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'tiedonnx.runtime' has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def installed_version() -> str:
    """The version in the installed distribution's metadata (pyproject.toml, the one place it is
    written), or :data:`UNINSTALLED_VERSION` in a source tree that was never installed."""
    from importlib import metadata

    try:
        return metadata.version("tiedonnx")
    except metadata.PackageNotFoundError:
        return UNINSTALLED_VERSION


def __dir__() -> list[str]:
    return __all__
