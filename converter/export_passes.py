"""The export's graph passes, in order (tf2onnx-optimizer style: the order is data, each entry says why).

Every pass has the shape of :mod:`tiedonnx.runtime.graph.passes`:
``run(model, options) -> (model, detail)``, consuming its input. ``retie``
runs first and is the pipeline's one copy of tf2onnx's model. Extra passes
(``export(graph_passes=...)``, the generation export's stack folding) run
between ``fold_shapes`` and ``record``. With the CLI's ``-v`` each pass logs
node and initializer counts and bytes before and after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tiedonnx.runtime.graph import retie
from tiedonnx.runtime.graph.passes import GraphPass, PassReport, run_passes
from tiedonnx.runtime.graph.retie import record_ties
from tiedonnx.runtime.graph.shape_fold import fold_initializer_shapes

__all__ = ["EXPORT_PASSES", "ExportPassOptions", "run_export_passes"]


@dataclass
class ExportPassOptions:
    """What the export's passes need to know, computed once before they run.

    Attributes:
        prefer: initializers that hold a tied Keras kernel in its Keras layout (kept by retie).
        describe: ``describe(proto) -> {initializer: Keras description}`` for the tie record.
        precision, precision_options, short_names: the storage :func:`to_precision` applies.
        on_step: called with a short message as a long pass starts (the CLI prints it).
    """

    prefer: list[str] = field(default_factory=list)
    describe: Callable[[Any], dict[str, dict]] | None = None
    precision: str = "fp32"
    precision_options: dict = field(default_factory=dict)
    short_names: bool | None = None
    on_step: Callable[[str], None] = lambda message: None


def _retie(model, options: ExportPassOptions):
    return retie(model, prefer=options.prefer)


def _fold_shapes(model, options: ExportPassOptions):
    return fold_initializer_shapes(model)


def _record(model, options: ExportPassOptions):
    keras_ties = options.describe(model) if options.describe is not None else None
    record_ties(model, keras_ties=keras_ties)
    return model, keras_ties


def _precision(model, options: ExportPassOptions):
    if options.precision == "fp32" and not options.short_names:
        return model, None
    from tiedonnx.runtime.graph.quantize import apply_precision  # retie and the option checks ran before

    options.on_step(f"converting weights to {options.precision}")
    return apply_precision(model, options.precision, short_names=options.short_names,
                           **options.precision_options), options.precision


#: The export's passes in order; ``graph_passes=`` are inserted before ``record``.
EXPORT_PASSES: tuple[GraphPass, ...] = (
    GraphPass("retie", _retie, "first, and the one copy of tf2onnx's model: every later pass sees one "
              "initializer per tie"),
    GraphPass("fold_shapes", _fold_shapes, "after retie: drops einsum kernels that only a Shape reads; a "
              "tie's stored tensor is read by its uses, so it stays"),
    GraphPass("record", _record, "after every pass that renames or removes initializers: the tie record "
              "and its Keras description name the tensors that are finally stored"),
    GraphPass("precision", _precision, "last: int8 and int4 re-tie from the record, and short names "
              "rename everything before them"),
)


def run_export_passes(model, options: ExportPassOptions, extra: Iterable[Callable] = (),
                      ) -> tuple[Any, list[PassReport]]:
    """Run :data:`EXPORT_PASSES` on tf2onnx's model, with ``extra`` ``model -> (model, detail)``
    passes before ``record``. Returns the final model and one report per pass."""
    names = [p.name for p in EXPORT_PASSES]
    at = names.index("record")
    extra_passes = [GraphPass.plain(f, "after retie and fold_shapes, before record (export(graph_passes=))")
                    for f in extra]
    passes = [*EXPORT_PASSES[:at], *extra_passes, *EXPORT_PASSES[at:]]
    return run_passes(model, passes, options, pipeline="export")
