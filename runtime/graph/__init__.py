"""ONNX graph passes. These import onnx and numpy only, never TensorFlow.

Each pass is ``ModelProto -> ModelProto`` on a copy, idempotent, and logs what
it changed. The export pipeline applies them in this order:

1. ``retie``: fold exact copies / transposes of initializers back into one
   initializer per tie (must run first: later passes see the tie structure).
2. ``quantize`` / ``fp16`` (optional, precision-dependent): convert each tied
   initializer once and keep every use reading that one tensor.
"""

from .duplicates import Duplicate, find_duplicates
from .metadata import TIES_KEY, read_ties, write_metadata
from .retie import RetieReport, retie

__all__ = [
    "Duplicate",
    "find_duplicates",
    "RetieReport",
    "retie",
    "TIES_KEY",
    "read_ties",
    "write_metadata",
]
