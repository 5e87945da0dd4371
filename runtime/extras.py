"""Optional dependencies (extras): one place that says which extra to install.

Commands and modules that need an extra call :func:`require` before importing
it, so a missing package is one :class:`MissingExtraError` line naming the
extra, not a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

#: extra name -> the top-level modules it provides (checked in this order).
EXTRAS = {
    "convert": ("tensorflow", "keras", "tf2onnx"),
    "demo": ("sklearn", "matplotlib"),
    "ray": ("ray",),
    "triton": ("tritonclient",),
}


def missing_module(extra: str) -> str | None:
    """The first module of ``extra`` that cannot be imported, or None."""
    for module in EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):  # a parent package is broken or blocked
            return module
    return None


def require(*extras: str, what: str) -> None:
    """Raise :class:`MissingExtraError` if a module of any of ``extras`` is missing.

    Args:
        extras: names in :data:`EXTRAS`, e.g. ``"convert"``.
        what: who needs it, for the message (``"tiedonnx export"``).

    Raises:
        MissingExtraError: naming every extra the caller needs (so one install
            command is enough) and the first missing module.
    """
    missing = {extra: missing_module(extra) for extra in extras}
    first = next((module for module in missing.values() if module is not None), None)
    if first is not None:
        raise MissingExtraError(what, extras, first)
