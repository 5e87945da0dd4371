"""Optional dependencies (extras): one :class:`LazyModule` per optional package, one install hint.

As Keras's ``LazyModule`` (``keras/src/utils/module_utils.py``): each optional
package is one object here, imported on first use; a missing package is one
:class:`MissingExtraError` line naming the extra to install, not a
``ModuleNotFoundError`` traceback. Commands check their extras up front with
:func:`require` (without importing anything); code that uses a package calls
its object's :meth:`LazyModule.load`. Version floors that guard against known
CVEs are checked from package metadata, before the package is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import re

from .errors import MissingExtraError, OldExtraError


class LazyModule:
    """One optional package, imported when :meth:`load` is first called.

    Args:
        name: the module to import (``"ray"``).
        extra: the pyproject extra that installs it (``"ray"``).
        submodules: also imported by :meth:`load` (``("ray.data",)``: Ray Data's own dependencies).
        dist: the distribution whose version :data:`FLOORS` checks (default ``name``).
    """

    def __init__(self, name: str, *, extra: str, submodules: tuple[str, ...] = (), dist: str | None = None):
        self.name, self.extra, self.submodules = name, extra, submodules
        self.dist = dist or name

    def __repr__(self) -> str:
        return f"LazyModule({self.name!r}, extra={self.extra!r})"

    @property
    def available(self) -> bool:
        """Whether the package can be found, without importing it."""
        try:
            return importlib.util.find_spec(self.name) is not None
        except (ImportError, ValueError, AttributeError):  # a parent package is broken or blocked
            return False

    def load(self, what: str):
        """Import the package (and its :attr:`submodules`) and return it.

        Args:
            what: who needs it, for the message (``"Scoring on Ray (run --ray)"``).

        Raises:
            MissingExtraError: it (or a package it imports) is not installed.
        """
        # Not cached here: importlib answers from sys.modules once imported.
        try:
            module = importlib.import_module(self.name)
            for sub in self.submodules:
                importlib.import_module(sub)
        except ImportError as exc:
            raise MissingExtraError(what, self.extra, getattr(exc, "name", None) or self.name) from exc
        return module


#: One object per optional package.
TENSORFLOW = LazyModule("tensorflow", extra="convert")
KERAS = LazyModule("keras", extra="convert")
TF2ONNX = LazyModule("tf2onnx", extra="convert")
SKLEARN = LazyModule("sklearn", extra="demo", dist="scikit-learn")
MATPLOTLIB = LazyModule("matplotlib", extra="demo")
RAY = LazyModule("ray", extra="ray", submodules=("ray.data",))  # the [data] extra: pandas, pyarrow
TRITONCLIENT = LazyModule("tritonclient", extra="triton")
TOKENIZERS = LazyModule("tokenizers", extra="text")
KERAS_HUB = LazyModule("keras_hub", extra="hub", dist="keras-hub")

#: extra name -> its packages (checked in this order).
EXTRAS = {
    "convert": (TENSORFLOW, KERAS, TF2ONNX),
    "demo": (SKLEARN, MATPLOTLIB),
    "ray": (RAY,),
    "triton": (TRITONCLIENT,),
    "text": (TOKENIZERS,),
    "hub": (KERAS_HUB,),
}

#: Lowest versions tiedonnx accepts, with the reason (pyproject.toml's extras say the same;
#: tests/test_packaging.py keeps them equal).
FLOORS = {"keras": ("3.13.2", "earlier Keras 3 releases have safe-mode bypass CVEs")}


def missing_module(extra: str) -> str | None:
    """The first module of ``extra`` that cannot be found, or None."""
    return next((lazy.name for lazy in EXTRAS[extra] if not lazy.available), None)


def require(*extras: str, what: str) -> None:
    """Raise unless every package of ``extras`` is installed, at no less than its :data:`FLOORS` version.

    Nothing is imported (versions come from package metadata).

    Args:
        extras: names in :data:`EXTRAS`, e.g. ``"convert"``.
        what: who needs it, for the message (``"tiedonnx export"``).

    Raises:
        MissingExtraError: naming every extra the caller needs (so one install
            command is enough) and the first missing module.
        OldExtraError: a package is older than its floor.
    """
    missing = {extra: missing_module(extra) for extra in extras}
    first = next((module for module in missing.values() if module is not None), None)
    if first is not None:
        raise MissingExtraError(what, extras, first)
    for extra in extras:
        for lazy in EXTRAS[extra]:
            check_floor(lazy, what=what)


def check_floor(lazy: LazyModule, *, what: str) -> None:
    """Raise :class:`OldExtraError` if ``lazy``'s installed distribution is below its floor."""
    if lazy.dist not in FLOORS:
        return
    from importlib import metadata

    floor, why = FLOORS[lazy.dist]
    try:
        installed = metadata.version(lazy.dist)
    except metadata.PackageNotFoundError:  # importable but not pip-installed (a source tree)
        return
    if version_tuple(installed) < version_tuple(floor):
        raise OldExtraError(what, lazy.extra, lazy.dist, installed=installed, floor=floor, why=why)


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"3.14.0rc1"`` -> ``(3, 14, 0)``."""
    numbers = []
    for part in version.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)
