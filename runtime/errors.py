"""Typed errors for tiedonnx.

Every error says what was wrong, what was received and how to fix it. The CLI
turns any :class:`TiedOnnxError` into one line on stderr and exits with the
error's ``exit_code`` (2 for bad input or usage, 1 for a parity failure).
"""

from __future__ import annotations

import re


# A hint that names both surfaces is written once in a message, as
# "force=True (CLI: --force)". Python callers read the parameter ("force=True"),
# the CLI prints the flag ("--force"): each surface names its own spelling.
_DUAL_HINT = re.compile(r"(\b[\w.]+=[^\s()]+) \(CLI: ([^)]*)\)")
_CLI_HINT = re.compile(r" \(CLI: ([^)]*)\)")


def api_text(message: str) -> str:
    """``message`` for Python callers: ``"force=True (CLI: --force)"`` -> ``"force=True"``."""
    return _CLI_HINT.sub("", _DUAL_HINT.sub(r"\1", message))


def cli_text(message: str) -> str:
    """``message`` for the command line: ``"force=True (CLI: --force)"`` -> ``"--force"``."""
    return _CLI_HINT.sub(r" (\1)", _DUAL_HINT.sub(r"\2", message))


class TiedOnnxError(Exception):
    """Base class of every error tiedonnx raises on purpose.

    ``str(error)`` names Python parameters; :meth:`cli_message` names CLI flags.
    """

    exit_code = 2

    def __str__(self) -> str:
        return api_text(super().__str__())

    def cli_message(self) -> str:
        return cli_text(super().__str__())


class UsageError(TiedOnnxError, ValueError):
    """An argument has a value the function cannot work with."""


class InputError(TiedOnnxError, ValueError):
    """Input data does not match the model: names, ranks, sizes or dtypes."""


class ModelFileError(TiedOnnxError, ValueError):
    """A model file is missing, empty, truncated, corrupt or not a model."""


class UnsafeModelError(ModelFileError):
    """A model file asks for something that is refused by default (code, paths)."""


class OutputExistsError(TiedOnnxError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class OutputWriteError(TiedOnnxError, OSError):
    """The output could not be written (read-only folder, full disk, size limit).

    Also an :class:`OSError`, so callers that caught the raw error still do.
    """


class ProviderError(TiedOnnxError, RuntimeError):
    """An execution provider that was asked for is not available or not active."""


class ConversionError(TiedOnnxError, RuntimeError):
    """A conversion or graph pass failed, or its result broke an invariant."""


class MissingExtraError(UsageError, ImportError):
    """A command or module needs an optional dependency (an extra) that is not installed.

    Also an :class:`ImportError`, so ``import tiedonnx.converter`` without the
    ``convert`` extra fails the way Python users expect, with the install hint.
    """

    def __init__(self, what: str, extra: str | tuple[str, ...], module: str | None = None):
        extras = (extra,) if isinstance(extra, str) else tuple(extra)
        names = ",".join(extras)
        missing = f" ({module} is not installed)" if module else ""
        # tiedonnx is installed from its checkout (it is not on PyPI): name the command that works.
        super().__init__(f"{what} needs the [{names}] extra{'s' if len(extras) > 1 else ''}{missing}. "
                         f"Install from the tiedonnx checkout with: pip install -e \".[{names}]\"")
        self.extra = names


class OldExtraError(MissingExtraError):
    """An optional dependency is installed at a version below tiedonnx's floor for it."""

    def __init__(self, what: str, extra: str, dist: str, *, installed: str, floor: str, why: str):
        super(MissingExtraError, self).__init__(
            f"{what} needs {dist} >= {floor} ({why}); installed: {dist} {installed}. Upgrade it "
            f"with: pip install '{dist}>={floor}' (or pip install -e \".[{extra}]\" from the "
            "tiedonnx checkout).")
        self.extra = extra


class ParityError(TiedOnnxError, RuntimeError):
    """Outputs of two runs of the same model differ beyond the tolerance.

    Attributes:
        mismatches: one entry per output and case that missed (the converter's
            ``parity_compare.Mismatch``: ``kind``, ``output``, ``detail``, ``case``).
    """

    exit_code = 1

    def __init__(self, message: str, mismatches: list | None = None):
        super().__init__(message)
        self.mismatches = list(mismatches or [])


def short_error(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message, at most ``limit`` characters.

    For wrapping a library's exception into one line of a tiedonnx error.
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
