"""Retie pass: store each tied tensor once, with the transpose as a graph op.

Exporters (tf2onnx, Keras's ``model.export``, TFLite) constant-fold
``transpose(W)`` and write the tied matrix twice. This pass finds every
initializer that is a bit-exact copy or axis permutation of another and
replaces it: a copy by the original's name, a permutation by a ``Transpose``
node over the original. Consumers are untouched (the node produces the removed
initializer's name), so the pass is safe on any graph and idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx
from onnx import helper

from .duplicates import Duplicate, find_duplicates, initializer_arrays
from .metadata import TIES_KEY, read_ties, ties_json, write_metadata

logger = logging.getLogger(__name__)

__all__ = ["RetieReport", "record_ties", "retie"]


@dataclass
class RetieReport:
    """What :func:`retie` changed.

    Attributes:
        folded: one entry per removed initializer.
        bytes_before, bytes_after: serialized model size.
    """

    folded: list[Duplicate] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after


def _transpose_node_name(copy: str) -> str:
    return f"tiedonnx_retie/{copy}"


def retie(model: onnx.ModelProto, *, prefer: list[str] | None = None,
          keras_ties: dict[str, dict] | None = None) -> tuple[onnx.ModelProto, RetieReport]:
    """Fold duplicate and transposed initializers into one per tie.

    Args:
        model: the model; not modified (a copy is returned).
        prefer: initializer names to keep when a group has several candidates.
        keras_ties: initializer name -> Keras description of the tie
            (decoder, tied_to, variable), recorded in the metadata.

    Returns:
        ``(new_model, report)``. The new model records every tie in its
        ``tiedonnx.ties`` metadata, merged with any record already there.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    report = RetieReport(bytes_before=model.ByteSize())
    graph = out.graph
    dups = find_duplicates(initializer_arrays(graph), prefer=prefer)

    removed = {d.copy for d in dups}
    renames = {d.copy: d.source for d in dups if d.relation == "identity"}
    new_nodes = [
        helper.make_node("Transpose", [d.source], [d.copy], name=_transpose_node_name(d.copy),
                         perm=list(d.perm))
        for d in dups if d.relation == "transpose"
    ]
    if dups:
        kept_inits = [i for i in graph.initializer if i.name not in removed]
        del graph.initializer[:]
        graph.initializer.extend(kept_inits)
        kept_inputs = [i for i in graph.input if i.name not in removed]
        del graph.input[:]
        graph.input.extend(kept_inputs)
        _rename_uses(graph, renames)
        # Transposes read only initializers, so they can lead the node list.
        nodes = new_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        for d in dups:
            logger.info("retie: %s is %s of %s; stored once", d.copy, d.relation, d.source)

    record_ties(out, dups=dups, keras_ties=keras_ties)
    report.folded = dups
    report.bytes_after = out.ByteSize()
    return out, report


def record_ties(model: onnx.ModelProto, *, dups: list[Duplicate] = (),
                keras_ties: dict[str, dict] | None = None) -> None:
    """Merge folded duplicates and Keras tie descriptions into the metadata (in place)."""
    ties = _merge_record(read_ties(model), list(dups), _initializer_meta(model.graph), keras_ties or {})
    if ties:
        write_metadata(model, {TIES_KEY: ties_json(ties)})


def _initializer_meta(graph: onnx.GraphProto) -> dict[str, tuple[list[int], str]]:
    return {
        i.name: (list(i.dims), onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name)
        for i in graph.initializer
    }


def _rename_uses(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    if not renames:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:  # subgraphs (If/Loop/Scan) may read outer initializers
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_uses(sub, renames)
    for output in graph.output:
        if output.name in renames:
            # A graph output cannot simply be renamed: keep its name via Identity.
            graph.node.append(helper.make_node("Identity", [renames[output.name]], [output.name],
                                               name=f"tiedonnx_retie/identity/{output.name}"))


def _merge_record(existing: list[dict], dups: list[Duplicate],
                  meta: dict[str, tuple[list[int], str]], keras_ties: dict[str, dict]) -> list[dict]:
    by_init = {entry.get("initializer"): entry for entry in existing if isinstance(entry, dict)}
    for d in dups:
        shape, dtype = meta.get(d.source, ([], ""))
        entry = by_init.setdefault(d.source, {"initializer": d.source, "shape": shape,
                                              "dtype": dtype, "uses": []})
        use = {"relation": d.relation, "perm": list(d.perm), "output": d.copy}
        if use not in entry["uses"]:
            entry["uses"].append(use)
    for name, desc in keras_ties.items():
        shape, dtype = meta.get(name, ([], ""))
        entry = by_init.setdefault(name, {"initializer": name, "shape": shape,
                                          "dtype": dtype, "uses": []})
        entry["keras"] = desc
    return list(by_init.values())


def retie_file(source, target, *, force: bool = False) -> dict:
    """Retie the ONNX file ``source`` and write the result to ``target`` atomically.

    The input is read with the same checks as any model the toolkit runs
    (:func:`tiedonnx.runtime.model_file.read_model`), and the output is
    checked with ``onnx.checker`` (full check) before it is written.

    Returns:
        A JSON-friendly report: bytes before/after/saved and the folded tensors.
    """
    from tiedonnx.runtime.atomic import check_output_path, write_bytes_atomic
    from tiedonnx.runtime.model_file import read_model

    check_output_path(target, force=force)
    model = read_model(source).proto
    out, report = retie(model)
    onnx.checker.check_model(out, full_check=True)
    write_bytes_atomic(target, out.SerializeToString(), force=force)
    return {
        "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
        "bytes_saved": report.bytes_saved,
        "folded": [{"source": d.source, "copy": d.copy, "relation": d.relation, "perm": list(d.perm)}
                   for d in report.folded],
    }
