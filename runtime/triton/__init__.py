"""Triton Inference Server model repositories for tied ONNX files.

Two backends (``backend=``):

* ``"onnxruntime"`` (default): Triton's ONNX Runtime backend runs the file::

      REPO_DIR/NAME/
        config.pbtxt      # backend, real input/output names, dtypes, dims,
                          # max_batch_size, dynamic batching, instance group
        1/model.onnx      # the tied file, byte for byte

* ``"python"``: Triton's Python backend runs ``1/model.py``, which serves
  ``1/model.onnx`` through :func:`tiedonnx.runtime.load` (tiedonnx's input
  checks, providers, ``memory="lean"``); ``EXECUTION_ENV_PATH`` in the config
  names the Python environment that has tiedonnx
  (:mod:`tiedonnx.runtime.triton.python_env`).

The model is validated like every model tiedonnx reads
(:func:`tiedonnx.runtime.model_file.read_model`: onnx checker, size caps,
safe paths). Importing this package imports nothing heavy (``onnx`` is
imported when a model is read; numpy only by :mod:`.serving` and
:mod:`.local_server`), so the CLI reads its defaults from here.

Example:
    >>> from tiedonnx.runtime.triton import write_model_repository
    >>> report = write_model_repository("ae.onnx", "models", max_batch_size=64)  # doctest: +SKIP
    >>> report.config_path  # doctest: +SKIP
    'models/ae/config.pbtxt'
"""

from __future__ import annotations

from .config import (
    BACKENDS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_SERVING_MEMORY,
    MAX_QUEUE_DELAY_US,
    TritonTensor,
    render_config,
)
from .python_env import SERVER_ENV
from .repository import TritonRepositoryReport, write_model_repository

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_SERVING_MEMORY",
    "MAX_QUEUE_DELAY_US",
    "SERVER_ENV",
    "TritonRepositoryReport",
    "TritonTensor",
    "render_config",
    "write_model_repository",
]
