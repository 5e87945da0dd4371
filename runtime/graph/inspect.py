"""Describe an ONNX file: I/O, opset, initializers, and its ties re-checked against the graph.

"Untied size" is defined once, here (:func:`untied_bytes`): the file's own
size plus one more copy of each tied tensor, at its stored precision, for
every use that plain exporters store separately (a transposed or copied use),
and for a cast use (the float16 copy a ``mixed_float16`` model keeps beside
its float32 variable) one copy at the cast's dtype (:func:`copied_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import helper

from .duplicates import find_duplicates, initializer_arrays
from .edit import producers, transpose_perm
from .metadata import TIES_KEY, TieRecord, read_ties

__all__ = ["InspectReport", "copied_bytes", "copied_uses", "dtype_name", "inspect_file", "inspect_model",
           "tensor_nbytes", "untied_bytes"]

# Ops through which a use still reads the one stored tensor (no second copy in the file).
# DequantizeNBits is the int4 read of a packed tensor (int4_blocks.dequantize_function); Gather a lookup of
# the stored rows or columns (lookup_axis: an int8 tie gathered on axis 1).
_PASS_THROUGH = {"Cast", "DequantizeLinear", "Transpose", "Identity", "Reshape", "Gather",
                 "GatherBlockQuantized", "Squeeze", "Unsqueeze", "DequantizeNBits"}
# Uses that a plain exporter would have stored as a copy of their own.
_COPY_RELATIONS = {"transpose", "identity", "dequantize"}


@dataclass
class InspectReport:
    """What :func:`inspect_model` found; ``as_dict()`` is the ``--json`` output."""

    bytes: int
    untied_bytes: int
    opset: dict[str, int]
    ir_version: int
    producer: str
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    initializers: list[dict] = field(default_factory=list)
    ties: list[dict] = field(default_factory=list)
    untied_duplicates: list[dict] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ties_ok(self) -> bool:
        return all(t["status"] == "ok" for t in self.ties) and not self.untied_duplicates

    def as_dict(self) -> dict:
        return asdict(self)


def dtype_name(data_type: int) -> str:
    """numpy's name for an ONNX element type, or ONNX's own name (INT4, BFLOAT16...)."""
    try:
        return helper.tensor_dtype_to_np_dtype(data_type).name
    except KeyError:
        return onnx.TensorProto.DataType.Name(data_type) if data_type else "undefined"


def copied_uses(tie: TieRecord) -> int:
    """How many extra copies of the stored tensor, at its own dtype, a plain exporter would write for ``tie``.

    Cast copies are stored at another dtype; :func:`copied_bytes` counts them too.
    """
    return sum(u.relation in _COPY_RELATIONS for u in tie.uses)


def _cast_copies(tie: TieRecord) -> list[str]:
    """Target dtypes of the cast uses that a plain exporter stores as copies of their own.

    A ``mixed_float16`` model's untied file holds the float32 variable and a
    (transposed) float16 copy; retie records that copy as a cast use, to a
    narrower dtype. The cast that reads a float16-stored tensor back to float32
    (an fp16 file) widens: it is how the one copy is read, not a second copy.
    Without dtypes, that read-back is the use named as the tensor it replaced
    (``source``; short names rename it, so the dtype rule comes first).
    """
    def read_back(use) -> bool:
        try:
            if use.to and tie.dtype:
                return np.dtype(use.to).itemsize > np.dtype(tie.dtype).itemsize
        except TypeError:  # a dtype numpy does not name
            pass
        return tie.source is not None and use.output == tie.source

    return [u.to or "" for u in tie.uses if u.relation == "cast" and not read_back(u)]


def copied_bytes(tie: TieRecord, stored_bytes: int) -> int:
    """Bytes a plain exporter would write for ``tie`` beyond its one stored tensor of ``stored_bytes``.

    Each copied use (:func:`copied_uses`) weighs as much as the stored tensor.
    A cast copy weighs its element count times the cast dtype's size, never
    more than the stored tensor: a file stored narrower (fp16, int8) would
    store that copy narrower too.
    """
    extra = stored_bytes * copied_uses(tie)
    elements = math.prod(tie.shape) if tie.shape else 0
    for to in _cast_copies(tie):
        try:
            itemsize = np.dtype(to).itemsize
        except TypeError:  # no dtype recorded: the stored tensor's own size
            itemsize = None
        extra += stored_bytes if itemsize is None or not elements else min(stored_bytes, elements * itemsize)
    return extra


def _type_name(tp: onnx.TypeProto) -> tuple[str, list | None]:
    """Readable dtype and shape of any ONNX type (tensor, sequence, map, optional...)."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        t = getattr(tp, kind)
        dtype = dtype_name(t.elem_type)
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return (dtype if kind == "tensor_type" else f"sparse({dtype})"), dims
    if kind == "sequence_type":
        return f"sequence({_type_name(tp.sequence_type.elem_type)[0]})", None
    if kind == "optional_type":
        return f"optional({_type_name(tp.optional_type.elem_type)[0]})", None
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(tp.map_type.key_type).lower()
        return f"map({key}, {_type_name(tp.map_type.value_type)[0]})", None
    return kind or "undefined", None


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    dtype, shape = _type_name(vi.type)
    return {"name": vi.name, "shape": shape, "dtype": dtype}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data once loaded (packed 4-bit types count half a byte)."""
    count = 1
    for d in tensor.dims:
        count *= d
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    try:
        return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:
        return len(tensor.raw_data)


def untied_bytes(model: onnx.ModelProto, file_bytes: int | None = None) -> int:
    """What the file would weigh with each tie's copied uses stored separately (see module doc)."""
    sizes = {i.name: tensor_nbytes(i) for i in model.graph.initializer}
    extra = sum(copied_bytes(t, sizes.get(t.initializer, 0)) for t in read_ties(model))
    return (file_bytes if file_bytes is not None else model.ByteSize()) + extra


def _reachable(graph: onnx.GraphProto, start: str) -> set[str]:
    """Names computed from ``start`` through ops that read it without storing a copy."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type in _PASS_THROUGH and node.input:
            readers.setdefault(node.input[0], []).append(node)
    reached, todo = {start}, [start]
    while todo:
        for node in readers.get(todo.pop(), []):
            for out in node.output:
                if out not in reached:
                    reached.add(out)
                    todo.append(out)
    return reached


def check_tie(tie: TieRecord, graph: onnx.GraphProto, inits: dict) -> list[str]:
    """Problems with one recorded tie (empty when the graph still has it)."""
    if tie.initializer not in inits:
        return [f"stored tensor {tie.initializer!r} is not an initializer of the graph"]
    reached = _reachable(graph, tie.initializer)
    made_by = producers(graph)
    problems = [f"{field} {name!r} is not an initializer of the graph"
                for field, name in (("scale", tie.scale), ("zero point", tie.zero_point))
                if name is not None and name not in inits]
    for use in tie.uses:
        if use.relation == "identity" and use.output not in made_by:
            continue  # an exact copy folded by retie: its readers read the stored tensor
        if use.output not in reached:
            problems.append(f"use {use.output!r} does not read {tie.initializer!r} "
                            "(a second copy?)")
            continue
        node = made_by.get(use.output)
        if use.relation == "transpose" and node is not None and node.op_type == "Transpose":
            rank = len(tie.shape) or len(inits[tie.initializer].dims)
            if use.perm is not None and transpose_perm(node, rank) != list(use.perm):
                problems.append(f"use {use.output!r} transposes with another perm")
    return problems


def inspect_model(model: onnx.ModelProto, *, file_bytes: int | None = None) -> InspectReport:
    """Describe ``model``: I/O, opsets, initializers, ties re-checked, duplicates left, untied size.

    Args:
        model: the model.
        file_bytes: the file's size on disk (default: the serialized size).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ties = []
    for tie in read_ties(model):
        problems = check_tie(tie, graph, inits)
        ties.append({**tie.as_dict(), "status": "ok" if not problems else "; ".join(problems)})
    total = file_bytes if file_bytes is not None else model.ByteSize()
    dups = find_duplicates(initializer_arrays(graph))
    return InspectReport(
        bytes=total, untied_bytes=untied_bytes(model, total),
        opset={o.domain or "ai.onnx": o.version for o in model.opset_import},
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value_info(v) for v in graph.input if v.name not in inits],
        outputs=[_value_info(v) for v in graph.output],
        initializers=[{"name": n, "shape": list(t.dims), "dtype": dtype_name(t.data_type),
                       "bytes": tensor_nbytes(t)} for n, t in inits.items()],
        ties=ties,
        untied_duplicates=[{"source": d.source, "copy": d.copy, "relation": d.relation} for d in dups],
        metadata={p.key: p.value for p in model.metadata_props if p.key != TIES_KEY},
    )


def inspect_file(path) -> InspectReport:
    """:func:`inspect_model` of a file read with the runtime's checks (``.onnx`` or ``.ort``)."""
    from ..model_file import read_model
    from .ort_format import is_ort_file

    if is_ort_file(path):  # onnxruntime's own format, as `tiedonnx ort` writes it
        from .inspect_ort import inspect_ort_file

        return inspect_ort_file(path)
    checked = read_model(path)
    return inspect_model(checked.proto, file_bytes=checked.path.stat().st_size)
