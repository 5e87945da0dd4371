"""``tiedonnx quantize``: an ONNX file's weights stored at another precision, one file in, one out.

The graph work is :func:`tiedonnx.runtime.graph.quantize.to_precision`; this module adds the file
checks and the atomic write around it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .graph.metadata import TieRecord, read_ties
from .graph.quantize import check_precision_options, to_precision

__all__ = ["QuantizeReport", "quantize_file"]


@dataclass
class QuantizeReport:
    """What :func:`quantize_file` wrote."""

    path: str
    precision: str
    bytes: int
    bytes_before: int
    ties: list[TieRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "precision": self.precision, "bytes": self.bytes,
                "bytes_before": self.bytes_before, "ties": [t.as_dict() for t in self.ties]}


def quantize_file(source: str | os.PathLike, target: str | os.PathLike, *, precision: str,
                  per_channel: bool | None = None, block_size: int | None = None,
                  symmetric: bool | None = None, short_names: bool | None = None,
                  reduce_range: bool | None = None, rounding: str | None = None,
                  int8_ties: bool | None = None, accuracy_level: int | None = None,
                  force: bool = False) -> QuantizeReport:
    """Read the ONNX file ``source``, store its weights at ``precision`` and write ``target``.

    The input is read with the checks every model gets
    (:func:`tiedonnx.runtime.model_file.read_model`); ``target`` is checked
    before any work and written atomically. See :func:`to_precision`.
    """
    from .model_file import read_model
    from .model_save import check_model_targets, save_model

    check_precision_options(precision, per_channel=per_channel, block_size=block_size, symmetric=symmetric,
                            reduce_range=reduce_range, short_names=short_names, rounding=rounding,
                            int8_ties=int8_ties, accuracy_level=accuracy_level)
    check_model_targets(target, force=force)
    checked = read_model(source)
    out = to_precision(checked.proto, precision, per_channel=per_channel, block_size=block_size,
                       symmetric=symmetric, short_names=short_names, reduce_range=reduce_range,
                       rounding=rounding, int8_ties=int8_ties, accuracy_level=accuracy_level)
    saved = save_model(out, target, force=force)
    return QuantizeReport(path=str(target), precision=precision, bytes=saved.total_bytes,
                          bytes_before=checked.path.stat().st_size, ties=read_ties(out))
