"""ONNX graph passes (numpy and onnx only; onnxruntime for int8 and ORT format).

Like ``onnxruntime.quantization`` beside onnxruntime's inference API, these
live in the TensorFlow-free runtime package: ``tiedonnx retie``, ``quantize``,
``ort`` and ``inspect`` never import Keras. Every pass edits graphs through
:mod:`.edit` and reads and writes ties as :class:`.metadata.TieRecord`.

Each pass is ``ModelProto -> ModelProto`` on a copy, idempotent, and logs what
it changed. The export pipeline applies them in this order:

1. ``retie``: fold exact copies / transposes of initializers back into one
   initializer per tie (must run first: later passes see the tie structure).
2. ``to_precision`` (optional): fp16 or int8 storage, each tied initializer
   converted once and every use reading that one tensor.
3. ``save_ort`` (optional): ORT format without the constant folding that
   would split a tie again.
"""

from .duplicates import Duplicate, find_duplicates
from .inspect import InspectReport, inspect_model, untied_bytes
from .metadata import TIES_KEY, TieRecord, TieUse, read_ties, write_metadata, write_ties
from .retie import RetieReport, retie, retie_file

__all__ = [
    "Duplicate",
    "InspectReport",
    "RetieReport",
    "TIES_KEY",
    "TieRecord",
    "TieUse",
    "find_duplicates",
    "inspect_model",
    "read_ties",
    "retie",
    "retie_file",
    "untied_bytes",
    "write_metadata",
    "write_ties",
]
