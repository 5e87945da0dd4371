"""Retie pass: store each tied tensor once, with the transpose as a graph op.

Exporters (tf2onnx, Keras's ``model.export``, TFLite) constant-fold
``transpose(W)`` and write the tied matrix twice. This pass finds every
initializer that is a bit-exact copy or axis permutation of another, or (in
``mixed_float16`` models) a float16 cast of one, and replaces it: a copy by
the original's name, a permutation by a ``Transpose`` node over the
original, a cast by a ``Cast`` (then ``Transpose``) node over it. Consumers are untouched (the node produces the removed
initializer's name), so the pass is safe on any graph and idempotent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from .duplicates import Duplicate, find_duplicates, initializer_arrays
from .edit import copy_model, prepend_nodes, remove_initializers, rename_uses
from .metadata import TieRecord, TieUse, read_ties, write_ties

logger = logging.getLogger(__name__)

__all__ = ["RetieReport", "record_ties", "retie", "retie_file"]


@dataclass
class RetieReport:
    """What :func:`retie` changed.

    Attributes:
        folded: one entry per removed initializer.
        bytes_before, bytes_after: serialized model size.
        path: the file written, for :func:`retie_file`.
    """

    folded: list[Duplicate] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    path: str | None = None

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict:
        return {"path": self.path, "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_saved": self.bytes_saved,
                "folded": [{"source": d.source, "copy": d.copy, "relation": d.relation,
                            "perm": list(d.perm)} for d in self.folded]}


def retie(model: onnx.ModelProto, *, prefer: list[str] | None = None,
          keras_ties: dict[str, dict] | None = None, measure: bool = True) -> tuple[onnx.ModelProto, RetieReport]:
    """Fold duplicate and transposed initializers into one per tie.

    Args:
        model: the model; not modified (a copy is returned).
        prefer: initializer names to keep when a group has several candidates.
        keras_ties: initializer name -> Keras description of the tie
            (decoder, tied_to, variable), recorded in the metadata.
        measure: fill the report's ``bytes_before``/``bytes_after``; each is a
            serialization of the whole model (1.3 s for a 271 MB one), so a
            pipeline that does not report them passes False (they stay 0).

    Returns:
        ``(new_model, report)``. The new model records every tie in its
        ``tiedonnx.ties`` metadata, merged with any record already there.
    """
    out = copy_model(model)  # a pipeline's one copy (see .passes)
    report = RetieReport(bytes_before=model.ByteSize() if measure else 0)
    graph = out.graph
    dups = find_duplicates(initializer_arrays(graph), prefer=prefer)
    if dups:
        remove_initializers(graph, {d.copy for d in dups})
        rename_uses(graph, {d.copy: d.source for d in dups if d.relation == "identity"})
        prepend_nodes(graph, _fold_nodes(dups))
        for d in dups:
            logger.info("retie: %s is %s of %s; stored once", d.copy, d.relation, d.source)
    record_ties(out, dups=dups, keras_ties=keras_ties)
    report.folded = dups
    report.bytes_after = out.ByteSize() if measure else 0
    return out, report


def _fold_nodes(dups: list[Duplicate]) -> list[onnx.NodeProto]:
    """The ops that recompute each removed transposed or cast copy from the tensor kept.

    Unnamed (names are optional): the output already says what it is, and on
    small models every byte of the file counts. A cast copy casts first, then
    transposes: the transpose moves half the bytes in float16.
    """
    nodes = []
    for d in dups:
        if d.relation == "transpose":
            nodes.append(helper.make_node("Transpose", [d.source], [d.copy], perm=list(d.perm)))
        elif d.relation == "cast":
            to = helper.np_dtype_to_tensor_dtype(np.dtype(d.cast))
            cast_out = f"{d.copy}__cast" if d.transposed else d.copy
            nodes.append(helper.make_node("Cast", [d.source], [cast_out], to=to))
            if d.transposed:
                nodes.append(helper.make_node("Transpose", [cast_out], [d.copy], perm=list(d.perm)))
    return nodes


def record_ties(model: onnx.ModelProto, *, dups: list[Duplicate] = (),
                keras_ties: dict[str, dict] | None = None) -> None:
    """Merge folded duplicates and Keras tie descriptions into the tie record (in place)."""
    meta = {i.name: (list(i.dims), helper.tensor_dtype_to_np_dtype(i.data_type).name)
            for i in model.graph.initializer}
    by_init = {t.initializer: t for t in read_ties(model)}

    def entry(name: str) -> TieRecord:
        if name not in by_init:
            shape, dtype = meta.get(name, ([], ""))
            by_init[name] = TieRecord(initializer=name, shape=shape, dtype=dtype)
        return by_init[name]

    for d in dups:  # an exact copy is recorded too: the untied file had it
        perm = list(d.perm) if d.transposed else None
        entry(d.source).add_use(TieUse(relation=d.relation, perm=perm, output=d.copy, to=d.cast))
    for name, desc in (keras_ties or {}).items():  # what inspect shows; shape and relation are in the graph
        entry(name).keras = {k: desc[k] for k in ("decoder", "tied_to", "variable", "layers") if k in desc}
    if by_init:
        write_ties(model, list(by_init.values()))


def retie_file(source: str | os.PathLike, target: str | os.PathLike, *,
               force: bool = False) -> RetieReport:
    """Retie the ONNX file ``source`` and write the result to ``target`` atomically.

    The input is read with the same checks as any model the toolkit runs
    (:func:`tiedonnx.runtime.model_file.read_model`), and the output is
    checked with ``onnx.checker`` (full check) before it is written.
    """
    from ..model_file import read_model
    from ..model_save import check_model_targets, save_model

    check_model_targets(target, force=force)
    model = read_model(source).proto
    out, report = retie(model)
    onnx.checker.check_model(out, full_check=True)
    save_model(out, target, force=force)
    report.path = str(target)
    return report
