"""Typed errors of the converter (the Keras side).

They share :class:`tiedonnx.runtime.errors.TiedOnnxError` as base class, so the
CLI handles both packages' errors the same way.
"""

from __future__ import annotations

from tiedonnx.runtime.errors import (  # noqa: F401  (re-exported)
    ConversionError,
    InputError,
    ModelFileError,
    OutputExistsError,
    ParityError,
    TiedOnnxError,
    UnsafeModelError,
    UsageError,
)


class TieError(TiedOnnxError, ValueError):
    """A tie is malformed: wrong layer kind, contradicting sizes, unresolved name."""
