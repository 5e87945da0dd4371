"""Reading ORT-format (``.ort``) files: the identifier check, size caps and metadata.

:func:`read_ort_model` checks an ``.ort`` file before onnxruntime loads it, with the
caps ``runtime.model_file.read_model`` applies to ``.onnx`` files; the writing side
is :mod:`.ort_format` (which re-exports these names).

Imports onnx, numpy and onnxruntime only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UnsafeModelError, short_error

__all__ = ["ORT_IDENTIFIER", "is_ort_file", "ort_schema", "read_ort_metadata", "read_ort_model"]


def ort_schema():
    """onnxruntime's flatbuffers schema of ORT files (``ort_flatbuffers_py.fbs``).

    onnxruntime exposes it only as a side effect: importing
    ``onnxruntime.tools.ort_format_model`` puts ``ort_flatbuffers_py`` on ``sys.path``.
    """
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts the flatbuffers schema on sys.path)
    from ort_flatbuffers_py import fbs

    return fbs


#: The file identifier of an ORT-format flatbuffer (bytes 4-8).
ORT_IDENTIFIER = b"ORTM"


def is_ort_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ORT-format file: named ``*.ort`` or carrying the ORTM identifier."""
    path = Path(path)
    if path.suffix.lower() == ".ort":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(8)[4:8] == ORT_IDENTIFIER
    except OSError:
        return False  # read_model reports the path problem


def read_ort_model(path: str | os.PathLike, *, max_bytes: int) -> bytes:
    """Read and check an ``.ort`` file for onnxruntime, with the caps :func:`read_model` applies.

    Refused with :class:`ModelFileError`: a missing, empty or oversized file,
    bytes without the ORTM identifier or that do not parse as an ORT-format
    model, tensors whose declared size differs from the bytes they hold or
    adds up past ``max_bytes``. Tensors kept in an external file are refused
    with :class:`UnsafeModelError` (tiedonnx never writes them). onnxruntime
    verifies the flatbuffer again when it loads the bytes.

    Returns:
        The file's bytes, to pass to ``InferenceSession`` with
        ``session.load_model_format=ORT``.
    """
    from ..model_file import _check_path

    path = _check_path(Path(path), max_bytes=max_bytes)
    data = path.read_bytes()
    if data[4:8] != ORT_IDENTIFIER:
        raise ModelFileError(
            f"{str(path)!r} is not an ORT-format model (bytes 4-8 are {data[4:8]!r}, expected "
            f"{ORT_IDENTIFIER!r}). Pass an .onnx file, or write an .ort with `tiedonnx ort`.")
    try:
        declared = _declared_ort_bytes(data, str(path))
        read_ort_metadata(data, path, check=False)  # UTF-8: onnxruntime's metadata map needs it
    except (ModelFileError, UnsafeModelError):
        raise
    except Exception as exc:  # flatbuffers reads past the buffer: IndexError, struct.error...
        raise ModelFileError(
            f"{str(path)!r} is not a readable ORT-format model ({short_error(exc)}): the file is "
            "corrupt or truncated. Write it again with `tiedonnx ort`.") from None
    if declared > max_bytes:
        raise ModelFileError(
            f"Tensors in {str(path)!r} declare {declared} bytes, over the limit of {max_bytes}. "
            "If you trust the model, pass a larger max_bytes=.")
    return data


def read_ort_metadata(data: bytes, path: str | os.PathLike, *, check: bool = True) -> dict[str, str]:
    """An ORT-format model's metadata, key -> value; with ``check``, like an ``.onnx`` file's:
    malformed tiedonnx values are left out, with one warning each (:mod:`.metadata_check`).

    Raises:
        ModelFileError: a key or value that is not UTF-8.
    """
    fbs = ort_schema()

    from .metadata_check import drop_malformed

    model = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(bytearray(data), 0).Model()
    entries: dict[str, str] = {}
    for i in range(model.MetadataPropsLength()):
        prop = model.MetadataProps(i)
        try:
            entries[(prop.Key() or b"").decode("utf-8")] = (prop.Value() or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{str(path)!r} has metadata that is not UTF-8 text (entry {i}): the file "
                                 "is corrupt. Write it again with `tiedonnx ort`.") from None
    graph = model.Graph()  # onnxruntime hands these names to Python as str: they must decode
    names = [graph.Inputs(i) for i in range(graph.InputsLength())] + \
        [graph.Outputs(i) for i in range(graph.OutputsLength())] if graph is not None else []
    if any(not _is_utf8(name) for name in names):
        raise ModelFileError(f"{str(path)!r} has a graph input or output name that is not UTF-8 text: the "
                             "file is corrupt. Write it again with `tiedonnx ort`.")
    for key in drop_malformed(entries, path) if check else ():
        del entries[key]
    return entries


def _is_utf8(name: bytes | None) -> bool:
    try:
        (name or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _declared_ort_bytes(data: bytes, label: str) -> int:
    """Bytes declared by every tensor of every graph (subgraphs included) of an ORT-format model."""
    fbs = ort_schema()

    root = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(bytearray(data), 0)
    model = root.Model()
    graph = model.Graph() if model is not None else None
    if graph is None:
        raise ModelFileError(f"{label!r} is an ORT-format file without a model graph: it is corrupt. "
                             "Write it again with `tiedonnx ort`.")
    total, pending, seen = 0, [graph], set()
    while pending:
        graph = pending.pop()
        if graph._tab.Pos in seen:  # a crafted buffer can point a subgraph at itself
            raise ModelFileError(f"{label!r} has a graph that contains itself: the file is corrupt "
                                 "or crafted. Write it again with `tiedonnx ort`.")
        seen.add(graph._tab.Pos)
        for i in range(graph.InitializersLength()):
            total += _tensor_bytes(graph.Initializers(i), label)
        for i in range(graph.SparseInitializersLength()):
            sparse = graph.SparseInitializers(i)
            dense = int(np.prod([int(d) for d in sparse.DimsAsNumpy()], dtype=np.float64)) \
                if sparse.DimsLength() else 0
            total += dense * _itemsize(sparse.Values().DataType())
        for i in range(graph.NodesLength()):
            node = graph.Nodes(i)
            for j in range(node.AttributesLength()):
                attr = node.Attributes(j)
                if attr.T() is not None:
                    total += _tensor_bytes(attr.T(), label)
                total += sum(_tensor_bytes(attr.Tensors(k), label) for k in range(attr.TensorsLength()))
                if attr.G() is not None:
                    pending.append(attr.G())
                pending.extend(attr.Graphs(k) for k in range(attr.GraphsLength()))
    return total


def _itemsize(data_type: int) -> int:
    from onnx import helper

    try:
        return helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except Exception:  # strings and unknown types: count elements
        return 1


def _tensor_bytes(tensor, label: str) -> int:
    name = (tensor.Name() or b"").decode(errors="replace")
    if tensor.ExternalDataOffset() >= 0:
        raise UnsafeModelError(
            f"Tensor {name!r} in {label!r} keeps its data in an external file. Refused: tiedonnx "
            "loads self-contained .ort files only. Write it again with `tiedonnx ort`.")
    dims = [int(d) for d in tensor.DimsAsNumpy()] if tensor.DimsLength() else []
    if any(d < 0 for d in dims):
        raise ModelFileError(f"Tensor {name!r} in {label!r} has a negative dimension {dims}: the "
                             "file is corrupt. Write it again with `tiedonnx ort`.")
    declared = int(np.prod(dims, dtype=np.float64)) * _itemsize(tensor.DataType())
    if tensor.StringDataLength() == 0 and tensor.RawDataLength() != declared:
        raise ModelFileError(
            f"Tensor {name!r} in {label!r} declares shape {dims} ({declared} bytes) but holds "
            f"{tensor.RawDataLength()} bytes: the file is truncated or corrupt. Write it again "
            "with `tiedonnx ort`.")
    return declared
