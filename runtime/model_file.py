"""Validated reading of ONNX files before onnxruntime sees them.

A model file is untrusted input. :func:`read_model` refuses, with a
:class:`ModelFileError` that says what was wrong and how to fix it:

* a missing path, a directory, an empty file, a file over the size cap;
* bytes that are not an ONNX model (protobuf decode failure, no graph, no
  IR version), truncated tensors, or anything ``onnx.checker.check_model(
  full_check=True)`` rejects;
* external data that points outside the model's folder (absolute paths,
  ``..``, symlinks out): :class:`UnsafeModelError`;
* tensors whose declared size exceeds the cap (allocation bombs: a tiny file
  that declares a multi-GB external tensor).

``onnx`` is imported lazily here so ``import tiedonnx.runtime`` stays light.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelFileError, UnsafeModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

#: Default cap on a model's file plus declared tensor bytes. Override with
#: ``max_bytes=`` (``load(..., max_bytes=...)``) for larger models.
DEFAULT_MAX_BYTES = 4 * 1024**3

#: Protobuf cannot serialize a message of 2 GiB or more.
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class ModelFile:
    """A checked model: the proto (external data loaded) and where it came from."""

    path: Path
    proto: onnx.ModelProto
    has_external_data: bool


def read_model(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelFile:
    """Read, validate and check an ONNX file.

    Args:
        path: the ``.onnx`` file.
        max_bytes: cap on file size plus declared tensor bytes (external data
            included), against allocation bombs.

    Returns:
        A :class:`ModelFile` whose proto passed ``check_model(full_check=True)``.

    Raises:
        ModelFileError: missing, empty, a directory, too large, corrupt, truncated
            or invalid.
        UnsafeModelError: external data outside the model's folder.
    """
    import onnx

    path = _check_path(Path(path), max_bytes=max_bytes)
    data = path.read_bytes()
    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as exc:  # google.protobuf DecodeError and friends
        raise ModelFileError(
            f"{str(path)!r} is not a readable ONNX model (protobuf decode failed: {exc}). "
            "The file is corrupt, truncated or not ONNX; re-export it."
        ) from exc
    del data
    _check_structure(proto, path)
    external = _check_tensors(proto, path, max_bytes=max_bytes)
    if external:
        _load_external(proto, path)
    _run_checker(proto, path)
    logger.debug("read %s: %d nodes, external data: %s", path, len(proto.graph.node), external)
    return ModelFile(path=path, proto=proto, has_external_data=external)


def _check_path(path: Path, *, max_bytes: int) -> Path:
    if not path.exists():
        raise ModelFileError(f"Model file not found: {str(path)!r}. Check the path.")
    if path.is_dir():
        raise ModelFileError(
            f"Model path is a directory, expected an .onnx file. Received: {str(path)!r}."
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"Model file is empty (0 bytes): {str(path)!r}. Re-export it.")
    if size > max_bytes:
        raise ModelFileError(
            f"Model file {str(path)!r} is {size} bytes, over the limit of {max_bytes}. "
            "If you trust it, pass a larger max_bytes=."
        )
    return path


def _check_structure(proto: onnx.ModelProto, path: Path) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise ModelFileError(
            f"{str(path)!r} parsed but is not an ONNX model (no IR version, graph or opset). "
            "The file is corrupt, truncated or not ONNX; re-export it."
        )
    if not proto.graph.output:
        raise ModelFileError(f"{str(path)!r} has a graph with no outputs; re-export it.")


def _all_tensors(graph) -> list:
    """Every TensorProto in ``graph``: initializers, Constant values, subgraphs."""
    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            if attr.HasField("g"):
                tensors.extend(_all_tensors(attr.g))
            for sub in attr.graphs:
                tensors.extend(_all_tensors(sub))
    return tensors


def _check_tensors(proto: onnx.ModelProto, path: Path, *, max_bytes: int) -> bool:
    """Check sizes and external locations; return whether any tensor is external."""
    import onnx

    declared, external = 0, False
    for tensor in _all_tensors(proto.graph):
        nbytes = _declared_bytes(tensor)
        declared += nbytes
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external = True
            _check_external(tensor, path, nbytes)
        elif tensor.raw_data and len(tensor.raw_data) != nbytes:
            raise ModelFileError(
                f"Tensor {tensor.name!r} in {str(path)!r} declares shape {list(tensor.dims)} "
                f"({nbytes} bytes) but holds {len(tensor.raw_data)} bytes: the file is "
                "truncated or corrupt. Re-export it."
            )
    if declared > max_bytes:
        raise ModelFileError(
            f"Tensors in {str(path)!r} declare {declared} bytes, over the limit of {max_bytes}. "
            "If you trust the model, pass a larger max_bytes=."
        )
    return external


def _declared_bytes(tensor) -> int:
    from onnx import helper

    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # string or unknown types: count the elements only
        itemsize = 1
    if any(d < 0 for d in tensor.dims):
        raise ModelFileError(f"Tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}.")
    return math.prod(tensor.dims) * itemsize


def _check_external(tensor, path: Path, nbytes: int) -> None:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    folder = path.parent.resolve()
    target = (folder / location).resolve()
    if not location or os.path.isabs(location) or not target.is_relative_to(folder):
        raise UnsafeModelError(
            f"Tensor {tensor.name!r} in {str(path)!r} keeps its data at {location!r}, outside "
            f"the model's folder {str(folder)!r}. Refused: external data must sit next to the "
            "model. Move the data file into that folder and re-save the model."
        )
    if not target.is_file():
        raise ModelFileError(
            f"External data file {location!r} of tensor {tensor.name!r} is missing next to "
            f"{str(path)!r}. Copy it next to the model."
        )
    offset, length = int(info.get("offset", 0) or 0), int(info.get("length", nbytes) or nbytes)
    if length != nbytes or offset < 0 or offset + length > target.stat().st_size:
        raise ModelFileError(
            f"External data of tensor {tensor.name!r} ({location!r}, offset {offset}, length "
            f"{length}) does not match its declared {nbytes} bytes or runs past the end of the "
            "file. The data file is truncated or from another model."
        )


def _load_external(proto: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelFileError(f"Could not load external data of {str(path)!r}: {exc}") from exc


def _run_checker(proto: onnx.ModelProto, path: Path) -> None:
    import onnx

    try:
        if proto.ByteSize() < _PROTOBUF_LIMIT:
            onnx.checker.check_model(proto, full_check=True)
        else:  # too large to serialize: the checker reads it from disk instead
            onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, protobuf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{str(path)!r} failed the ONNX checker: {first}. Re-export the model or fix the graph."
        ) from exc
