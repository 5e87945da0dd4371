"""Describe an ONNX file: I/O, opset, initializers, and its ties re-checked against the graph."""

from __future__ import annotations

import onnx
from onnx import helper

from .duplicates import find_duplicates, initializer_arrays
from .metadata import read_ties

__all__ = ["inspect_model"]


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    t = vi.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
    return {"name": vi.name, "shape": dims, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def _nbytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize()
    count = 1
    for d in tensor.dims:
        count *= d
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _check_tie(entry: dict, inits: dict, producers: dict) -> list[str]:
    """Problems with one recorded tie (empty when the graph still has it)."""
    name = entry.get("initializer")
    if name not in inits:
        return [f"stored tensor {name!r} is not an initializer of the graph"]
    problems = []
    for use in entry.get("uses", []):
        if use.get("relation") != "transpose":
            continue
        node = producers.get(use.get("output"))
        if node is None or node.op_type != "Transpose" or list(node.input) != [name]:
            problems.append(f"use {use.get('output')!r} is not a Transpose of {name!r}")
        elif [a for a in node.attribute if a.name == "perm"][0].ints != use.get("perm"):
            problems.append(f"use {use.get('output')!r} transposes with another perm")
    return problems


def inspect_model(model: onnx.ModelProto, *, file_bytes: int | None = None) -> dict:
    """Return a JSON-friendly description of ``model``.

    Includes inputs, outputs, opsets, initializers with sizes, the recorded
    ties with a re-check against the graph (``"ok"`` or the problems found),
    exact duplicates still present (what ``retie`` would fold), and
    ``untied_bytes``: what the file would weigh with every transposed use
    stored as its own copy, as plain exporters write it.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    sizes = {name: _nbytes(t) for name, t in inits.items()}
    producers = {out: node for node in graph.node for out in node.output}
    ties = []
    extra = 0
    for entry in read_ties(model):
        problems = _check_tie(entry, inits, producers)
        copies = sum(1 for u in entry.get("uses", []) if u.get("relation") == "transpose")
        extra += copies * sizes.get(entry.get("initializer"), 0)
        ties.append({**entry, "status": "ok" if not problems else "; ".join(problems)})
    total = file_bytes if file_bytes is not None else model.ByteSize()
    dups = find_duplicates(initializer_arrays(graph))
    return {
        "inputs": [_value_info(v) for v in graph.input if v.name not in inits],
        "outputs": [_value_info(v) for v in graph.output],
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "initializers": [
            {"name": n, "shape": list(t.dims), "dtype": helper.tensor_dtype_to_np_dtype(t.data_type).name,
             "bytes": sizes[n]} for n, t in inits.items()
        ],
        "ties": ties,
        "untied_duplicates": [{"source": d.source, "copy": d.copy, "relation": d.relation} for d in dups],
        "bytes": total,
        "untied_bytes": total + extra,
        "metadata": {p.key: p.value for p in model.metadata_props if p.key != "tiedonnx.ties"},
    }
