"""Atomic writing of ONNX files, with external data when the model is too large.

Protobuf cannot serialize a message of 2 GiB or more. :func:`save_model`
writes a model whose serialized size passes :data:`EXTERNAL_DATA_THRESHOLD`
as two files, the layout ``onnx.save(..., save_as_external_data=True)``
writes and :func:`tiedonnx.runtime.model_file.read_model` reads:

* ``<name>.data`` beside the model (``model.onnx`` -> ``model.onnx.data``):
  the raw bytes of every tensor of at least :data:`EXTERNAL_MIN_TENSOR_BYTES`;
* ``<name>``: the model proto, whose moved tensors carry ``external_data``
  entries (``location`` = the data file's name, ``offset``, ``length``).

Both are written with :func:`~tiedonnx.runtime.atomic.atomic_path`: the data
file is published first, then the model, so a reader never sees a model whose
data is missing. Both targets are checked before any work
(:func:`check_model_targets`).

``onnx`` is imported lazily here so ``import tiedonnx.runtime`` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_path, check_output_path, write_bytes_atomic
from .errors import OutputWriteError
from .model_file import PROTOBUF_LIMIT, loaded_tensors

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

#: A model whose serialized size is over this many bytes is saved with external
#: data. Leaves 64 MiB below protobuf's 2 GiB limit for the graph and metadata.
#: Read at each call: tests lower it with ``monkeypatch`` (or pass ``threshold=``).
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20

#: Smaller tensors stay in the model file (what onnx does by default).
EXTERNAL_MIN_TENSOR_BYTES = 1024

#: Tensors of at least 1 MiB start at a multiple of this offset (mmap-friendly).
_ALIGN = 4096
_ALIGN_FROM = 2**20


@dataclass
class SavedModel:
    """What :func:`save_model` wrote."""

    path: Path
    bytes: int
    data_path: Path | None = None
    data_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.bytes + self.data_bytes


def data_path_for(path: str | os.PathLike) -> Path:
    """The external-data file of ``path``: ``model.onnx`` -> ``model.onnx.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def check_model_targets(path: str | os.PathLike, *, force: bool = False) -> Path:
    """:func:`check_output_path` for the model and its external-data file.

    Whether the data file will be written is known only once the model is
    built, so both are checked before any work.
    """
    path = check_output_path(path, force=force)
    check_output_path(data_path_for(path), force=force)
    return path


def needs_external_data(proto: onnx.ModelProto, *, threshold: int | None = None) -> bool:
    """Whether :func:`save_model` would write ``proto`` with external data."""
    limit = EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    return proto.ByteSize() > limit


def save_model(proto: onnx.ModelProto, path: str | os.PathLike, *, force: bool = False,
               threshold: int | None = None) -> SavedModel:
    """Write ``proto`` to ``path`` atomically; with external data when it is too large.

    Args:
        proto: the model; left unchanged (moved tensors get their bytes back).
        path: the ``.onnx`` file; the data file, when needed, is
            :func:`data_path_for` ``(path)``.
        force: overwrite existing files.
        threshold: serialized size above which tensors go to the data file
            (default :data:`EXTERNAL_DATA_THRESHOLD`, read at call time).

    Raises:
        OutputExistsError, OutputWriteError: see :func:`~tiedonnx.runtime.atomic.atomic_path`.
    """
    path = Path(path)
    if not needs_external_data(proto, threshold=threshold):
        data = proto.SerializeToString()
        write_bytes_atomic(path, data, force=force)
        return SavedModel(path=path, bytes=len(data))
    return _save_external(proto, path, force=force)


def _save_external(proto: onnx.ModelProto, path: Path, *, force: bool) -> SavedModel:
    check_model_targets(path, force=force)
    data_path = data_path_for(path)
    moved: list = []
    try:
        with atomic_path(data_path, force=force) as tmp:
            with open(tmp, "wb") as fh:
                data_bytes = _move_tensors(proto, fh, data_path.name, moved)
            model_bytes = proto.SerializeToString() if proto.ByteSize() < PROTOBUF_LIMIT else None
            if model_bytes is None:
                raise OutputWriteError(
                    f"Could not write {str(path)!r}: the model is over 2 GiB even with its "
                    f"{len(moved)} large tensor(s) in {data_path.name!r} (small tensors or graph "
                    "structure too large). Nothing was written.")
        try:
            write_bytes_atomic(path, model_bytes, force=force)
        except Exception:
            if not force:  # the data file is new and ours: leave nothing behind
                with contextlib.suppress(OSError):
                    data_path.unlink()
            raise
    finally:
        _restore(moved)
    logger.info("wrote %s (%d bytes) with external data %s (%d bytes, %d tensors)", path,
                len(model_bytes), data_path, data_bytes, len(moved))
    return SavedModel(path=path, bytes=len(model_bytes), data_path=data_path, data_bytes=data_bytes)


def _move_tensors(proto: onnx.ModelProto, fh, location: str, moved: list) -> int:
    """Write large tensors' raw bytes to ``fh`` and mark them external; return the bytes written."""
    import onnx

    offset = 0
    for tensor in loaded_tensors(proto):  # exactly the tensors onnx's loader reads
        if tensor.data_location == onnx.TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        raw = tensor.raw_data
        if len(raw) < EXTERNAL_MIN_TENSOR_BYTES:
            continue
        if len(raw) >= _ALIGN_FROM and offset % _ALIGN:
            pad = _ALIGN - offset % _ALIGN
            fh.write(b"\0" * pad)
            offset += pad
        fh.write(raw)
        moved.append((tensor, raw))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += len(raw)
    return offset


def _restore(moved: list) -> None:
    """Give moved tensors their bytes back: the caller's proto is as it was."""
    import onnx

    for tensor, raw in moved:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = raw
