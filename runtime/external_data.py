"""External data of an ONNX file: each entry checked before a byte of it is read.

:func:`read_model` calls :class:`ExternalRanges` for every tensor stored outside
the file (see SECURITY.md, "ONNX model files", point 4): the entry must be what
onnx writes; its ``location`` must be a regular file inside the model's folder
(symlinks resolved) and not the model file itself; ``offset``/``length`` must
match the declared size and lie within the file; and no two tensors may share
bytes of one data file (onnx never writes that; one edit would change both).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .errors import ModelFileError, UnsafeModelError, short_error

__all__ = ["ExternalRanges"]


class ExternalRanges:
    """The byte ranges external tensors claim, per data file, for one model at ``path``."""

    def __init__(self, path: Path):
        self.path = path
        self.by_file: dict[Path, list[tuple[int, int, str]]] = {}

    def add(self, tensor, nbytes: int) -> None:
        """Check one external tensor's entry and record its range (raises on a bad entry)."""
        target, offset, length = _check_external(tensor, self.path, nbytes)
        if target == self.path.resolve():
            raise UnsafeModelError(
                f"Tensor {tensor.name!r} in {str(self.path)!r} names the model file itself as its "
                "external data. Refused: the model's own bytes are not tensor data. Re-save the model "
                "with onnx.save(..., save_as_external_data=True).")
        self.by_file.setdefault(target, []).append((offset, length, tensor.name))

    def check_overlaps(self) -> None:
        """Refuse two tensors whose ranges share bytes of one file (empty tensors share nothing)."""
        for target, ranges in self.by_file.items():
            ranges = sorted(r for r in ranges if r[1] > 0)
            for (start, length, name), (next_start, _, next_name) in zip(ranges, ranges[1:]):
                if next_start < start + length:
                    raise ModelFileError(
                        f"Tensors {name!r} and {next_name!r} in {str(self.path)!r} share bytes of "
                        f"{target.name!r} (offsets {start} and {next_start}); onnx never writes that. "
                        "The file was edited; re-save the model.")


_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
_MAX_DIGITS = 19  # int64


def _check_external(tensor, path: Path, nbytes: int) -> tuple[Path, int, int]:
    """The data file (resolved), offset and length of one external tensor, all checked."""
    info = _external_info(tensor, path)
    location = info.get("location", "")
    shown = repr(location[:80]) + ("..." if len(location) > 80 else "")
    folder = path.parent.resolve()
    try:  # a name too long for the OS, or a symlink loop, is an OSError or RuntimeError here
        target = (folder / location).resolve()
        inside = bool(location) and not os.path.isabs(location) and target.is_relative_to(folder)
        size = target.stat().st_size if inside and target.is_file() else None
    except (OSError, RuntimeError) as exc:
        raise ModelFileError(
            f"External data location {shown} of tensor {tensor.name!r} in {str(path)!r} cannot be "
            f"opened ({short_error(exc)}). The file is corrupt or was edited; re-save the model."
        ) from None
    if not inside:
        raise UnsafeModelError(
            f"Tensor {tensor.name!r} in {str(path)!r} keeps its data at {shown}, outside "
            f"the model's folder {str(folder)!r}. Refused: external data must sit next to the "
            "model. Move the data file into that folder and re-save the model."
        )
    if size is None:
        raise ModelFileError(
            f"External data file {shown} of tensor {tensor.name!r} is missing next to "
            f"{str(path)!r} (or is not a regular file). Copy it next to the model."
        )
    offset = _external_int(info, "offset", tensor, path, default=0)
    length = _external_int(info, "length", tensor, path, default=size - offset)
    if length != nbytes or offset + length > size:
        raise ModelFileError(
            f"External data of tensor {tensor.name!r} ({shown}, offset {offset}, length "
            f"{length}) does not match its declared {nbytes} bytes or runs past the end of the "
            f"file ({size} bytes). The data file is truncated or from another model."
        )
    return target, offset, length


def _external_info(tensor, path: Path) -> dict[str, str]:
    counts = Counter(entry.key for entry in tensor.external_data)
    bad = sorted(k[:40] for k, n in counts.items() if k not in _EXTERNAL_KEYS or n > 1)[:5]
    info = {entry.key: entry.value for entry in tensor.external_data}
    if bad:
        raise ModelFileError(
            f"External data entry of tensor {tensor.name!r} in {str(path)!r} has unknown or "
            f"repeated keys {bad}; onnx writes {sorted(_EXTERNAL_KEYS)}, once each. The file is "
            "corrupt or was edited; re-save it with onnx.save(..., save_as_external_data=True)."
        )
    if "\0" in info.get("location", ""):
        raise ModelFileError(
            f"External data location of tensor {tensor.name!r} in {str(path)!r} contains a NUL "
            f"byte: {info['location'][:80]!r}. No file has such a name; the file is corrupt or "
            "was edited. Re-save the model."
        )
    return info


def _external_int(info: dict[str, str], key: str, tensor, path: Path, *, default: int) -> int:
    """``offset``/``length`` as onnx writes them: a plain decimal integer."""
    if key not in info:
        return default
    text = info[key]
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS):
        raise ModelFileError(
            f"External data {key} of tensor {tensor.name!r} in {str(path)!r} must be a "
            f"non-negative whole number of bytes; received {text[:40]!r}. The file is corrupt "
            "or was edited; re-save the model."
        )
    return int(text)


