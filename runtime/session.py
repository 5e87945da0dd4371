"""Load a tied ONNX model into onnxruntime and run it.

Example:
    >>> from tiedonnx.runtime import load  # doctest: +SKIP
    >>> model = load("ae.onnx", providers="cpu", memory="lean")
    >>> y = model.run(x, batch_size=1024)["out"]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from . import providers as _providers
from .errors import ModelFileError, ProviderError, UsageError
from .fast_run import fast_runner, session_runner
from .inputs import TensorSpec, check_inputs, materialize
from .model_file import DEFAULT_MAX_BYTES
from .options import FULL_RANGE_KEY, MEMORY_MODES, check_positive_int
# Re-exported: these lived here before the split, and callers import them from here.
from .providers import CPU, CUDA, TENSORRT, ProviderArg, cpu_has_int8_dot, resolve_providers  # noqa: F401
from .sessions import (  # noqa: F401
    DETACH_BYTES,
    onnx_session,
    open_proto_session,
    open_session,
    ort_format_session,
    release_freed_memory,
)

logger = logging.getLogger(__name__)

def load(path: str | os.PathLike, *, providers: ProviderArg = "auto", memory: str = "fast",
         threads: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> TiedModel:
    """Load an ONNX model for inference.

    Args:
        path: the ``.onnx`` file, or an ``.ort`` file (ORT format, run as saved:
            ``memory="fast"`` only); validated before onnxruntime reads it (the
            graph itself by onnxruntime in ``fast``, by ``onnx.checker`` first in ``lean``).
        providers: "auto" (CUDA if available, else CPU), "cpu", "cuda",
            "tensorrt", or a list of onnxruntime provider names / (name, options).
        memory: "fast" (full optimizations) or "lean" (one copy per tied weight).
        threads: intra-op threads; None lets onnxruntime choose.
        max_bytes: cap on model size, against allocation bombs.

    Returns:
        A :class:`TiedModel`, safe to share between threads.

    Raises:
        ModelFileError, UnsafeModelError: the file is refused.
        ProviderError: a provider asked for by name is unavailable or inactive.
        UsageError: a bad ``memory``, ``threads`` or ``providers`` value.
    """
    if memory not in MEMORY_MODES:
        raise UsageError(f"memory must be one of {list(MEMORY_MODES)}; received {memory!r}.")
    check_positive_int("threads", threads, allow_none=True)
    chosen, required = resolve_providers(providers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # fatal only: onnxruntime's errors reach the user as our one line
    if threads is not None:
        options.intra_op_num_threads = threads
    from .graph.ort_format import is_ort_file  # imports onnx: only when a model is loaded

    if is_ort_file(path):
        session = ort_format_session(path, options, chosen, memory=memory, max_bytes=max_bytes)
    else:
        session = onnx_session(path, options, chosen, memory=memory, max_bytes=max_bytes)
    # onnxruntime would otherwise retry a failing accelerator run on CPU (a
    # silent fallback), and it keeps the model bytes for that retry: a full
    # extra copy of every weight for the session's lifetime.
    session.disable_fallback()
    session._model_bytes = None
    release_freed_memory()
    _warn_full_range_int8(session, path)
    return TiedModel(session, path=path, memory=memory, required=required,
                     auto=isinstance(providers, str) and providers == "auto")


def _warn_full_range_int8(session, path) -> None:
    """Full-range int8 weights saturate in onnxruntime's x86 CPU kernels without VNNI: say so."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(FULL_RANGE_KEY) == "true" and "CPUExecutionProvider" in session.get_providers() \
            and _providers.cpu_has_int8_dot() is False:
        logger.warning(
            "%s has full-range int8 weights (%s): onnxruntime's int8 kernels on this CPU (x86 "
            "without VNNI) add pairs of products in 16 bits and can saturate, giving wrong "
            "outputs. Quantize again with reduce_range=True (the default; CLI: drop "
            "--no-reduce-range) for this CPU.", str(path), FULL_RANGE_KEY)


class TiedModel:
    """A loaded model. Create it with :func:`load`.

    Attributes:
        inputs, outputs: :class:`TensorSpec` of each, in model order.
        providers: execution providers active in the session, in priority order.
        memory: "fast" or "lean".
    """

    def __init__(self, session: ort.InferenceSession, *, path, memory: str,
                 required: Sequence[str] = (), auto: bool = False):
        self._session = session
        self.path = str(path)
        self.memory = memory
        self.providers = list(session.get_providers())
        inactive = [p for p in required if p not in self.providers]
        if inactive:
            raise ProviderError(
                f"Execution provider {inactive} was asked for but is not active after session "
                f"creation (active: {self.providers}); onnxruntime could not initialize it "
                "(check the CUDA/cuDNN install). Refusing to fall back silently; pass "
                "providers='auto' (CLI: --provider auto) to allow it."
            )
        if auto:
            logger.info("providers='auto': running %s on %s", self.path, self.providers[0])
        try:  # onnxruntime decodes names and dimension names only when Python asks for them
            self.inputs = tuple(TensorSpec.from_ort(a) for a in session.get_inputs())
            self.outputs = tuple(TensorSpec.from_ort(a) for a in session.get_outputs())
        except UnicodeDecodeError:
            raise ModelFileError(f"{str(path)!r} has a graph input or output whose dimension names are not "
                                 "UTF-8 text: the file is corrupt. Export or write it again.") from None
        self._output_names = [o.name for o in self.outputs]
        # I/O binding on accelerators: one explicit host->device copy of the
        # inputs per call, outputs copied back once; weights stay on the device.
        self._io_binding = self.providers[0] in (CUDA, TENSORRT)
        self._run_native = session_runner(session)
        self._fast = None if self._io_binding else fast_runner(
            session, self.inputs, self.outputs, bind=self.providers[0] == CPU, run=self._run_native)

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{s.shape_text()}" for s in self.inputs)
        return f"TiedModel({self.path!r}, inputs=[{ins}], providers={self.providers}, memory={self.memory!r})"

    def run(self, inputs, *, batch_size: int | None = None, allow_nonfinite: bool = False,
            out: Mapping[str, np.ndarray] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: one array (one-input models) or a dict by input name. Floats
                of another precision are cast to the model's dtype.
            batch_size: run in chunks of this many rows into a preallocated
                output (memory-mapped inputs then stream from disk).
            allow_nonfinite: accept NaN/inf inputs instead of raising.
            out: preallocated outputs by name (e.g. memory-mapped ``.npy``).
            progress: called as ``progress(rows_done, rows_total)`` after each chunk.

        Returns:
            Output name -> array.

        Raises:
            InputError: names, ranks, shapes, dtypes or values do not fit the model.
            UsageError: a bad ``batch_size`` or ``out``.
        """
        if self._fast is not None and batch_size is None and out is None and progress is None:
            results = self._fast(inputs, allow_nonfinite)
            if results is not None:
                return results
        arrays, n = check_inputs(inputs, self.inputs)
        check_positive_int("batch_size", batch_size, allow_none=True)
        step = n if batch_size is None else min(batch_size, n)
        results = dict(out) if out is not None else None
        for start in range(0, n, step):
            chunk = arrays if step == n else {k: a[start:start + step] for k, a in arrays.items()}
            feeds = materialize(chunk, self.inputs, allow_nonfinite=allow_nonfinite,
                                row_offset=start)
            values = self._run_feeds(feeds)
            if results is None and step == n:
                results = dict(zip(self._output_names, values))
            else:
                results = self._store(results, values, start, n, min(step, n - start))
            if progress is not None:
                progress(min(start + step, n), n)
        return results

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self._io_binding:
            return self._run_native(self._output_names, feeds)
        binding = self._session.io_binding()  # one per call: bindings are not shared
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name in self._output_names:
            binding.bind_output(name, self._device())
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _device(self) -> str:
        return "cuda" if self.providers[0] in (CUDA, TENSORRT) else "cpu"

    def _store(self, results, values, start: int, n: int, rows: int) -> dict[str, np.ndarray]:
        if results is None:
            results = {name: np.empty((n, *v.shape[1:]), v.dtype)
                       for name, v in zip(self._output_names, values)}
        for name, value in zip(self._output_names, values):
            target = results.get(name)
            fits = value.ndim > 0 and value.shape[0] == rows
            if (not fits or target is None or target.shape != (n, *value.shape[1:])
                    or target.dtype != value.dtype):
                raise UsageError(
                    f"Output {name!r} of one chunk has shape {value.shape} and dtype {value.dtype}; "
                    f"it cannot be written into {_describe(target)} for {n} rows. Outputs "
                    "without a leading batch axis cannot be chunked: run without batch_size."
                )
            target[start:start + rows] = value
        return results


def _describe(array) -> str:
    return "nothing" if array is None else f"an array of shape {array.shape} and dtype {array.dtype}"
