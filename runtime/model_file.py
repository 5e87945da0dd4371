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
  that declares a multi-GB external tensor, or a sparse tensor whose dense
  form is that large);
* external-data entries that are not what onnx writes (unknown or repeated
  keys, a NUL byte in the location, an offset or length that is not a plain
  whole number).

``onnx`` is imported lazily here so ``import tiedonnx.runtime`` stays light.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelFileError, short_error

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger(__name__)

#: Default cap on a model's file plus declared tensor bytes. Override with
#: ``max_bytes=`` (``load(..., max_bytes=...)``) for larger models.
DEFAULT_MAX_BYTES = 4 * 1024**3

#: Protobuf cannot serialize a message of 2 GiB or more.
#: Largest message protobuf serializes (2 GiB - 1); bigger models need external data.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class ModelFile:
    """A checked model: the proto (external data loaded) and where it came from."""

    path: Path
    proto: onnx.ModelProto
    has_external_data: bool


def read_model(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
               check_graph: bool = True) -> ModelFile:
    """Read, validate and check an ONNX file.

    Args:
        path: the ``.onnx`` file.
        max_bytes: cap on file size plus declared tensor bytes (external data
            included), against allocation bombs.
        check_graph: run ``onnx.checker.check_model(full_check=True)``. Only a
            caller that hands the proto straight to ``onnxruntime.InferenceSession``
            passes False (``load``): onnxruntime checks every node against its
            own copy of the ONNX schemas (``checker::check_node``, type and shape
            inference) when it creates the session, and ``session.open_session``
            turns its refusal into a :class:`ModelFileError`. onnx's checker
            would build onnx's operator-schema registry a second time in the
            process (6.8 MiB resident for as long as it lives). Every check
            above the graph (path, size caps, protobuf decode, structure,
            tensor sizes, external data) runs either way.

    Returns:
        A :class:`ModelFile`; its proto passed ``check_model(full_check=True)``
        unless ``check_graph`` is False.

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
            f"{str(path)!r} is not a readable ONNX model (protobuf decode failed: {short_error(exc)}). "
            "The file is corrupt, truncated or not ONNX; re-export it."
        ) from exc
    del data
    _check_structure(proto, path)
    external = _check_tensors(proto, path, max_bytes=max_bytes)
    if external:
        _load_external(proto, path)
    _check_unambiguous(proto, path)
    if check_graph:
        _run_checker(proto, path)
    _drop_malformed_metadata(proto, path)  # last: a file refused above gets one error line, no warning
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
    # onnx.proto is proto2: a string field may hold bytes that are not UTF-8, and
    # protobuf then hands Python bytes. Metadata is parsed (ties as JSON): refuse it here.
    broken = [repr(prop.key)[:60] for prop in proto.metadata_props
              if not isinstance(prop.key, str) or not isinstance(prop.value, str)]
    if broken:
        raise ModelFileError(
            f"{str(path)!r} has metadata that is not UTF-8 text (entries {broken[:3]}): the file is "
            "corrupt. Re-export it."
        )
    where = _first_non_utf8_text(proto)
    if where is not None:  # a name or dimension onnxruntime's Python binding would fail to decode
        raise ModelFileError(f"{str(path)!r} has text that is not UTF-8 ({where}): the file is corrupt. "
                             "Re-export it.")


def _first_non_utf8_text(proto: onnx.ModelProto) -> str | None:
    """Where the first proto2 ``string`` field holding non-UTF-8 bytes is (names, dims, domains...),
    over every message (subgraphs nest): protobuf hands it to Python as ``bytes``, which onnxruntime's
    binding later fails to decode (``UnicodeDecodeError`` from ``get_inputs()``, or a print)."""
    from google.protobuf.descriptor import FieldDescriptor as Field

    pending = [(proto, "model")]
    while pending:
        item, where = pending.pop()
        if item.DESCRIPTOR.name == "TensorProto":  # its text fields only: listing them all copies raw_data
            fields = [(item.DESCRIPTOR.fields_by_name[n], getattr(item, n)) for n in ("name", "doc_string")]
            fields.append((item.DESCRIPTOR.fields_by_name["external_data"], item.external_data))
        else:
            fields = item.ListFields()
        for field, value in fields:
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            values = value if repeated else [value]
            if field.type == Field.TYPE_STRING:
                bad = next((v for v in values if isinstance(v, bytes)), None)
                if bad is not None:
                    return f"{where}.{field.name} = {bad[:40]!r}"
            elif field.type == Field.TYPE_MESSAGE:
                pending.extend((v, f"{where}.{field.name}") for v in values)
    return None


def _drop_malformed_metadata(proto: onnx.ModelProto, path: Path) -> None:
    """tiedonnx's own metadata that it never writes is dropped, one warning each (graph/metadata_check)."""
    from .graph.metadata import write_metadata
    from .graph.metadata_check import drop_malformed

    entries = {p.key: p.value for p in proto.metadata_props}
    ranks = {i.name: len(i.dims) for i in proto.graph.initializer} if entries else None
    dropped = drop_malformed(entries, path, ranks)
    write_metadata(proto, dict.fromkeys(dropped))


def _graphs_and_nodes(proto: onnx.ModelProto, *, training: bool = True) -> tuple[list, list]:
    """Every graph (main, subgraphs, training unless ``training=False``) and every node list
    (graphs' and local functions').

    An explicit work list, not nested recursive functions: two closures that
    call each other form a reference cycle, which held the tensors they
    collected (and through them the proto's whole protobuf arena, a copy of
    every weight) until the cycle collector ran.
    """
    pending = [proto.graph]
    for info in proto.training_info if training else ():
        pending.extend((info.initialization, info.algorithm))
    graphs: list = []
    node_lists = [function.node for function in proto.functions]
    walked = 0
    while pending or walked < len(node_lists):
        if pending:
            graph = pending.pop()
            graphs.append(graph)
            node_lists.append(graph.node)
            continue
        for node in node_lists[walked]:
            for attr in node.attribute:
                if attr.HasField("g"):
                    pending.append(attr.g)
                pending.extend(attr.graphs)
        walked += 1
    return graphs, node_lists


def _all_tensors(proto: onnx.ModelProto) -> tuple[list, list]:
    """Every TensorProto and SparseTensorProto in the model.

    Walks initializers, ``Constant``-style attributes (``value``,
    ``sparse_value``, tensor lists), subgraphs, local functions and training
    graphs. The values and indices of each sparse tensor are in the first list too.
    """
    tensors: list = []
    sparse: list = []
    _collect(*_graphs_and_nodes(proto), tensors, sparse)
    for item in sparse:
        tensors.extend((item.values, item.indices))
    return tensors, sparse


def loaded_tensors(proto: onnx.ModelProto) -> list:
    """The tensors onnx's external-data loader reads back (``onnx.load``).

    Initializers and attribute tensors of the main graph, its subgraphs and
    local functions; not sparse tensors nor training graphs, which onnx's
    loader leaves alone (so a writer must not move them out either). One
    difference: the initializers of a subgraph inside a local function are
    listed here and not read by onnx 1.23's loader (the one local function tiedonnx adds, DequantizeNBits, has no subgraph).
    """
    tensors: list = []
    _collect(*_graphs_and_nodes(proto, training=False), tensors, None)
    return tensors


def _collect(graphs: list, node_lists: list, tensors: list, sparse: list | None) -> None:
    """Append the initializers and tensor attributes to ``tensors``, and (unless None) the
    sparse ones to ``sparse``."""
    for graph in graphs:
        tensors.extend(graph.initializer)
        if sparse is not None:
            sparse.extend(graph.sparse_initializer)
    for nodes in node_lists:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if sparse is not None:
                    if attr.HasField("sparse_tensor"):
                        sparse.append(attr.sparse_tensor)
                    sparse.extend(attr.sparse_tensors)


def _check_tensors(proto: onnx.ModelProto, path: Path, *, max_bytes: int) -> bool:
    """Check sizes and external locations; return whether any tensor is external.

    A sparse tensor counts twice: its stored values and indices, and the dense
    tensor onnxruntime materialises from it (what it will allocate).
    """
    import onnx

    from .external_data import ExternalRanges

    declared, ranges = 0, ExternalRanges(path)
    tensors, sparse = _all_tensors(proto)
    for tensor in tensors:
        nbytes = _declared_bytes(tensor)
        declared += nbytes
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            ranges.add(tensor, nbytes)
        elif tensor.HasField("raw_data") and (held := len(tensor.raw_data)) != nbytes:  # one copy
            raise ModelFileError(
                f"Tensor {tensor.name!r} in {str(path)!r} declares shape {list(tensor.dims)} "
                f"({nbytes} bytes) but holds {held} bytes: the file is "
                "truncated or corrupt. Re-export it."
            )
    ranges.check_overlaps()
    external = bool(ranges.by_file)
    for item in sparse:
        declared += _declared_bytes(item.values, dims=item.dims)
    if declared > max_bytes:
        raise ModelFileError(
            f"Tensors in {str(path)!r} declare {declared} bytes, over the limit of {max_bytes} "
            "(sparse tensors count at their dense size). If you trust the model, pass a larger "
            "max_bytes=."
        )
    return external


# TensorProto fields that hold values; onnx's checker requires exactly one.
_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _check_unambiguous(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse what onnx's checker refuses and onnxruntime would read one way of several.

    onnxruntime validates the graph when ``check_graph=False``, but it loads a
    graph with two initializers of one name (it keeps one), a tensor holding
    both ``raw_data`` and a typed field (it reads one), and sparse indices out
    of order. Each leaves ``inspect`` and onnxruntime free to see different
    weights, so they are refused here whether or not onnx's checker runs.
    """
    graphs, _ = _graphs_and_nodes(proto)
    for graph in graphs:
        counts = Counter([*(t.name for t in graph.initializer),
                          *(s.values.name for s in graph.sparse_initializer)])
        repeated = sorted(name[:60] for name, n in counts.items() if n > 1)[:5]
        if repeated:
            raise ModelFileError(
                f"{str(path)!r} defines initializers {repeated} more than once in one graph: which "
                "value runs is ambiguous. The file is corrupt or was edited; re-export it.")
    tensors, sparse = _all_tensors(proto)
    for tensor in tensors:
        # HasField: reading ``raw_data`` would copy the whole buffer
        fields = [f for f in _VALUE_FIELDS if len(getattr(tensor, f))] + (
            ["raw_data"] if tensor.HasField("raw_data") else [])
        if len(fields) > 1:
            raise ModelFileError(
                f"Tensor {tensor.name!r} in {str(path)!r} holds its values twice ({', '.join(fields)}); "
                "onnx allows one value field. The file is corrupt or was edited; re-export it.")
    for item in sparse:
        _check_sparse_order(item, path)


def _check_sparse_order(item, path: Path) -> None:
    """Sparse indices strictly increasing (linear or per-coordinate), as onnx requires."""
    import numpy as np
    from onnx import numpy_helper

    try:
        indices = numpy_helper.to_array(item.indices).astype(np.int64)
    except Exception as exc:  # a corrupt indices tensor: onnxruntime refuses it too
        raise ModelFileError(
            f"Sparse tensor {item.values.name!r} in {str(path)!r} has unreadable indices "
            f"({short_error(exc)}). The file is corrupt; re-export it.") from None
    if indices.ndim == 2 and indices.shape[1] == len(item.dims) and len(item.dims):
        strides = np.cumprod([1, *list(item.dims)[:0:-1]], dtype=np.int64)[::-1]
        indices = indices @ strides
    linear = indices.reshape(-1)
    if linear.size > 1 and not bool(np.all(linear[1:] > linear[:-1])):
        raise ModelFileError(
            f"Sparse tensor {item.values.name!r} in {str(path)!r} has indices that are not in "
            "strictly increasing order, as onnx requires. The file is corrupt or was edited; "
            "re-export it.")


def _declared_bytes(tensor, dims=None) -> int:
    """Bytes ``tensor`` declares; with ``dims``, a sparse tensor's dense size."""
    from onnx import helper

    dims = list(tensor.dims if dims is None else dims)
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # string or unknown types: count the elements only
        itemsize = 1
    if any(d < 0 for d in dims):
        raise ModelFileError(
            f"Tensor {tensor.name!r} has a negative dimension {dims}. The file is corrupt; re-export it."
        )
    return math.prod(dims) * itemsize


# Keys onnx writes in TensorProto.external_data (basepath and checksum are unused
# when loading). onnx's loader sets any key as an attribute, so others are refused.
def _load_external(proto: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelFileError(
            f"Could not load external data of {str(path)!r}: {short_error(exc)}. Re-save the model."
        ) from exc


def _run_checker(proto: onnx.ModelProto, path: Path) -> None:
    import onnx

    try:
        if proto.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(proto, full_check=True)
        else:  # too large to serialize: the checker reads it from disk instead
            onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, protobuf errors
        raise ModelFileError(
            f"{str(path)!r} failed the ONNX checker: {short_error(exc, 300)}. Re-export the model "
            "or fix the graph."
        ) from exc
