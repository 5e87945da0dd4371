"""ONNX graph passes (numpy and onnx only; onnxruntime for int8 and ORT format).

Like ``onnxruntime.quantization`` beside onnxruntime's inference API, these
live in the TensorFlow-free runtime package: ``tiedonnx retie``, ``quantize``,
``ort`` and ``inspect`` never import Keras. Every pass edits graphs through
:mod:`.edit` and reads and writes ties as :class:`.metadata.TieRecord`.

Every pass has one shape (:mod:`.passes`): ``pass(model, **options) ->
(model, detail)``; it consumes ``model`` (edits it in place and returns it, or
returns a new one) and is idempotent. A pipeline copies once at its entry
(``retie`` returns a copy). Pipelines are ordered lists of
:class:`.passes.GraphPass`, each entry saying why it sits where it does:

1. the export's (:data:`tiedonnx.converter.export_passes.EXPORT_PASSES`):
   ``retie`` (fold exact copies / transposes of initializers back into one
   initializer per tie; first, so later passes see the tie structure), the
   shape fold, the tie record, then the precision;
2. each precision's (:data:`.quantize.PRECISION_PASSES`): fp16, int8 or int4
   storage, each tied initializer converted once and every use reading that
   one tensor, then optionally short names;
3. ``save_ort`` (optional): ORT format without the constant folding that
   would split a tie again.

A pass that looks up producers or readers inside a loop builds a
:class:`.index.GraphIndex` once; the helpers of :mod:`.edit` keep it correct.
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
