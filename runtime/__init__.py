"""tiedonnx.runtime: run tied ONNX models on onnxruntime.

Imports numpy and onnxruntime only, so an edge install never pulls TensorFlow.
"""

from __future__ import annotations

__version__ = "0.1.0"
