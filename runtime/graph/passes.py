"""One shape for every graph pass, and the runner that applies an ordered list of them.

The protocol (one for every pass in this package): a pass is
``pass(model, **options) -> (model, detail)``. It *consumes* ``model``: it
edits it in place and returns it, or returns a new model (onnxruntime's
``quantize_dynamic`` can only write a new one); either way the caller uses
the returned model and never the argument again. A pipeline copies its input
once at its entry (``retie`` returns a copy; :func:`copy_model` elsewhere), so
a 500 MB language model is not copied once per pass. ``detail`` is what the
pass did (names changed, a report dataclass); :func:`run_passes` wraps it in
a :class:`PassReport` with the graph's size before and after.

Pipelines are data, as in tf2onnx's optimizer registry: each is an ordered
list of :class:`GraphPass`, each entry saying why it sits where it does
(``EXPORT_PASSES`` in :mod:`tiedonnx.converter.export`, ``PRECISION_PASSES``
in :mod:`.quantize`). With the CLI's ``-v`` (info logs) every pass logs the node and
initializer counts and bytes before and after it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import onnx

logger = logging.getLogger(__name__)

__all__ = ["GraphPass", "GraphSize", "PassReport", "graph_size", "run_passes"]


@dataclass(frozen=True)
class GraphPass:
    """One named step of a pipeline.

    Attributes:
        name: short name, used in the log and the reports.
        run: ``run(model, options) -> (model, detail)``; ``options`` is the
            pipeline's options object (the same for every pass of a run).
        order: why the pass sits where it does in its list (the constraint a
            reordering would break).
    """

    name: str
    run: Callable[[onnx.ModelProto, Any], tuple[onnx.ModelProto, Any]]
    order: str = ""

    @classmethod
    def plain(cls, function: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, Any]],
              order: str = "") -> GraphPass:
        """A pass from a ``model -> (model, detail)`` function that takes no options."""
        return cls(getattr(function, "__name__", "pass"), lambda model, _options: function(model), order)


@dataclass(frozen=True)
class GraphSize:
    """How big a graph is: main-graph nodes, initializers and their serialized bytes."""

    nodes: int
    initializers: int
    initializer_bytes: int

    def __str__(self) -> str:
        return f"{self.nodes} nodes, {self.initializers} initializers ({self.initializer_bytes:,} bytes)"


@dataclass
class PassReport:
    """What one pass of :func:`run_passes` did."""

    name: str
    detail: Any = None
    before: GraphSize | None = None
    after: GraphSize | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        sizes = {k: vars(v) if v else None for k, v in (("before", self.before), ("after", self.after))}
        return {"name": self.name, "seconds": self.seconds, **sizes}


def graph_size(model: onnx.ModelProto) -> GraphSize:
    """Counts of the main graph; initializer bytes are their data's (elements x element size).

    From the dims alone: ``ByteSize`` serializes (1.3 s for GPT-2 with 4 layers, 271 MB, upb
    protobuf) and ``raw_data`` copies, which would make ``-v`` slow the passes it reports.
    """
    graph = model.graph
    return GraphSize(len(graph.node), len(graph.initializer), sum(map(_data_bytes, graph.initializer)))


def _data_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_type in _PACKED_4BIT:
        return (math.prod(tensor.dims) + 1) // 2
    itemsize = _ITEMSIZE.get(tensor.data_type)
    return math.prod(tensor.dims) * itemsize if itemsize else tensor.ByteSize()  # strings: their own size


_PACKED_4BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_ITEMSIZE = {t: onnx.helper.tensor_dtype_to_np_dtype(t).itemsize for t in (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL)}


def run_passes(model: onnx.ModelProto, passes: Iterable[GraphPass], options: Any = None, *,
               pipeline: str = "passes") -> tuple[onnx.ModelProto, list[PassReport]]:
    """Apply ``passes`` in order (each consumes the model, see the module docstring).

    Args:
        model: the model; consumed (use the returned one).
        passes: the ordered steps.
        options: handed to every pass's ``run``.
        pipeline: a name for the log lines (``"export"``, ``"int4"``).

    Returns:
        ``(model, reports)``: the final model and one :class:`PassReport` per pass.
    """
    sizes = logger.isEnabledFor(logging.INFO)  # the CLI's -v
    reports = []
    for step in passes:
        report = PassReport(step.name, before=graph_size(model) if sizes else None)
        start = time.perf_counter()
        model, report.detail = step.run(model, options)
        report.seconds = time.perf_counter() - start
        if sizes:
            report.after = graph_size(model)
            logger.info("%s pass %s (%.2f s): %s -> %s", pipeline, step.name, report.seconds, report.before,
                         report.after)
        reports.append(report)
    return model, reports

