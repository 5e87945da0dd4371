"""Serve a tied model inside Triton's Python backend (runs in the backend's stub process).

``model.py`` in a repository written with ``backend="python"`` imports
:class:`TritonPythonModel` from here. Each model instance loads ``model.onnx``
with :func:`tiedonnx.runtime.load` (providers from the instance's kind and
device, ``memory`` and ``threads`` from the config's parameters) and answers
each request with tiedonnx's input checks: a request whose values it refuses
(NaN/inf, integers out of range, ...) gets an ``INVALID_ARG`` error (HTTP 400)
carrying tiedonnx's message, and the other requests of the same batch are
served. Names, dtypes and shapes are checked before that by Triton itself,
against ``config.pbtxt``.

Requests grouped by Triton's dynamic batcher arrive together in one
:meth:`TritonPythonModel.execute` call; their rows are concatenated, run in
one call, and split back. Models whose rows depend on their batchmates
(dynamic int8 quantization takes one activation scale per batch) run each
request on its own instead (config parameter ``tiedonnx_merge_requests``), so
a response never depends on which other requests arrived at the same time.

Tensors cross the stub boundary through DLPack (``np.from_dlpack`` and
``pb_utils.Tensor.from_dlpack``), not ``Tensor.as_numpy()`` / ``Tensor(name,
ndarray)``: stubs built with pybind11 < 2.12 (Triton <= 24.10, e.g. the
``tritonserver`` 2.51 in ``nvidia-pytriton`` 0.7.0) read numpy 1's dtype
struct, and under numpy 2, whose ``PyArray_Descr`` moved ``elsize``, they
get item sizes wrong: ``as_numpy()`` returns wrong values without an error
(measured: ``[[1,2,3,4],[5,6,7,8]]`` read as all ones) and outputs fail with
"output tensor shape does not match size of output". DLPack carries dtype and
shape itself, so it is right under numpy 1 and 2 and any stub. (One more
stub quirk: ``Tensor.from_dlpack`` marks the capsule it consumed
``"used_dlpack"`` where the DLPack protocol says ``"used_dltensor"``, so
numpy's capsule destructor reports a harmless ``ValueError`` per output
tensor through ``sys.unraisablehook``; :func:`_quiet_used_capsules` drops
exactly those reports, and the stub still frees the tensor itself.)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..errors import TiedOnnxError
from ..inputs import check_inputs, materialize
from .config import (
    DEFAULT_SERVING_MEMORY,
    MODEL_FILENAME,
    PARAM_MEMORY,
    PARAM_MERGE,
    PARAM_THREADS,
)

logger = logging.getLogger(__name__)


class TritonPythonModel:
    """The model class Triton's Python backend instantiates once per model instance."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # exists only inside Triton's stub

        from ..session import load

        self._pb = pb_utils
        _quiet_used_capsules()
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = params.get(PARAM_THREADS) or None
        path = Path(args["model_repository"]) / str(args["model_version"]) / MODEL_FILENAME
        providers = instance_providers(args.get("model_instance_kind", "CPU"),
                                       args.get("model_instance_device_id", "0"))
        self._model = load(path, providers=providers,
                           memory=params.get(PARAM_MEMORY) or DEFAULT_SERVING_MEMORY,
                           threads=int(threads) if threads else None)
        # Merge the rows of requests grouped by the dynamic batcher into one call,
        # unless the config says rows depend on their batchmates (dynamic int8).
        self._merge = (int(config.get("max_batch_size", 0)) > 0
                       and params.get(PARAM_MERGE, "true") != "false")
        self._invalid = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        logger.info("%s: serving %s on %s (memory=%s)", args.get("model_instance_name"),
                    path, self._model.providers[0], self._model.memory)

    def execute(self, requests: list) -> list:
        """One response per request, in order; a refused request does not fail the others."""
        feeds: list[dict | TiedOnnxError] = []
        for request in requests:
            try:
                feeds.append(self._read(request))
            except TiedOnnxError as exc:
                feeds.append(exc)
        results = self._run(feeds)
        return [self._response(result) for result in results]

    def finalize(self) -> None:
        self._model = None

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for spec in self._model.inputs:
            tensor = self._pb.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                arrays[spec.name] = np.from_dlpack(tensor)
        checked, _ = check_inputs(arrays, self._model.inputs)  # names, ranks, shapes, dtypes
        return materialize(checked, self._model.inputs)          # casts, NaN/inf, int ranges

    def _run(self, feeds: list) -> list:
        """Outputs (or the error) per request; valid rows of a batch run in one call."""
        valid = [i for i, f in enumerate(feeds) if not isinstance(f, Exception)]
        results: list = list(feeds)
        if not valid:
            return results
        groups = [valid] if self._merge else [[i] for i in valid]
        for group in groups:
            try:
                outputs = self._model.run(merge_rows([feeds[i] for i in group]))
                for i, part in zip(group, split_rows(outputs, [_rows(feeds[i]) for i in group])):
                    results[i] = part
            except Exception as exc:  # an onnxruntime failure: every request of the call
                logger.exception("running %d request(s) failed", len(group))
                for i in group:
                    results[i] = exc
        return results

    def _response(self, result):
        pb = self._pb
        if isinstance(result, Exception):
            message = f"tiedonnx: {result}"
            if isinstance(result, TiedOnnxError) and self._invalid is not None:
                return pb.InferenceResponse(output_tensors=[],
                                            error=pb.TritonError(message, self._invalid))
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))
        tensors = [pb.Tensor.from_dlpack(name, np.ascontiguousarray(value))
                   for name, value in result.items()]
        return pb.InferenceResponse(output_tensors=tensors)


_CAPSULE_NAME_ERROR = "PyCapsule_GetPointer called with incorrect name"


def _quiet_used_capsules() -> None:
    """Drop the unraisable-error report numpy's DLPack capsule destructor makes for
    capsules the stub renamed ``"used_dlpack"`` (see the module docstring); pass
    every other report on."""
    previous = sys.unraisablehook
    if getattr(previous, "_tiedonnx", False):
        return

    def hook(unraisable) -> None:
        # numpy reports it without the capsule (object None), by this message alone.
        if (unraisable.exc_type is ValueError and unraisable.object is None
                and str(unraisable.exc_value) == _CAPSULE_NAME_ERROR):
            return
        previous(unraisable)

    hook._tiedonnx = True
    sys.unraisablehook = hook


def instance_providers(kind: str, device_id: str | int) -> list:
    """onnxruntime providers for a Triton model instance: its GPU, or the CPU."""
    if str(kind).upper() == "GPU":
        return [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0]


def merge_rows(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate several requests' inputs along the batch axis (one request: as is)."""
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def split_rows(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
    """Split merged outputs back into one dict per request, by each request's row count."""
    if len(rows) == 1:
        return [outputs]
    cuts = np.cumsum(rows)[:-1]
    pieces = {name: np.split(value, cuts, axis=0) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(rows))]
