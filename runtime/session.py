"""Load a tied ONNX model into onnxruntime and run it.

Example:
    >>> from tiedonnx.runtime import load  # doctest: +SKIP
    >>> model = load("ae.onnx", providers="cpu", memory="lean")
    >>> y = model.run(x, batch_size=1024)["out"]
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from .errors import ModelFileError, ProviderError, UsageError, short_error
from .fast_run import fast_runner, session_runner
from .inputs import TensorSpec, check_inputs, materialize
from .model_file import PROTOBUF_LIMIT, DEFAULT_MAX_BYTES, read_model
from .options import FULL_RANGE_KEY, MEMORY_MODES, PROVIDER_CHOICES, check_positive_int

logger = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
# Shorthand -> (providers in priority order, the ones that must end up active).
# CPU stays last for "cuda"/"tensorrt": onnxruntime places nodes an accelerator
# cannot run there, which is partitioning, not a fallback of the whole model.
_SHORTHANDS = {
    "cpu": ([CPU], [CPU]),
    "cuda": ([CUDA, CPU], [CUDA]),
    "tensorrt": ([TENSORRT, CUDA, CPU], [TENSORRT]),
}

ProviderArg = str | Sequence[str | tuple[str, dict]]


def resolve_providers(providers: ProviderArg, *, available: Sequence[str] | None = None):
    """Normalize ``providers`` into onnxruntime's list and the names that must be active.

    Returns:
        ``(providers for InferenceSession, required active names)``; ``auto``
        requires nothing (it is the one case allowed to fall back).

    Raises:
        UsageError: an unknown shorthand or malformed list.
        ProviderError: a named provider that this onnxruntime install lacks.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if isinstance(providers, str):
        if providers == "auto":
            return ([CUDA, CPU] if CUDA in available else [CPU]), []
        if providers not in _SHORTHANDS:
            raise UsageError(
                f"Unknown provider {providers!r}. Choose one of {list(PROVIDER_CHOICES)} "
                "or pass a list of onnxruntime provider names."
            )
        chosen, required = _SHORTHANDS[providers]
        chosen = [p for p in chosen if p in available or p in required]
    else:
        chosen = [_provider_entry(p) for p in providers]
        if not chosen:
            raise UsageError("providers is an empty list. Pass 'auto' or at least one provider.")
        required = [p if isinstance(p, str) else p[0] for p in chosen]
    missing = [p for p in required if p not in available]
    if missing:
        raise ProviderError(
            f"Execution provider {missing} was asked for but is not available in this "
            f"onnxruntime install (available: {available}). For CUDA, replace the CPU wheel "
            "with onnxruntime-gpu (README, Deployment: GPU), or pass providers='auto' (CLI: --provider auto) "
            "or providers='cpu' (CLI: --provider cpu)."
        )
    return chosen, required


def _provider_entry(entry):
    if isinstance(entry, str):
        return _ALIASES.get(entry, entry)
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Mapping):
        return (_ALIASES.get(entry[0], entry[0]), dict(entry[1]))
    raise UsageError(
        f"Each provider must be a name or a (name, options) pair; received {entry!r}."
    )


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
        session = _ort_format_session(path, options, chosen, memory=memory, max_bytes=max_bytes)
    else:
        session = _onnx_session(path, options, chosen, memory=memory, max_bytes=max_bytes)
    # onnxruntime would otherwise retry a failing accelerator run on CPU (a
    # silent fallback), and it keeps the model bytes for that retry: a full
    # extra copy of every weight for the session's lifetime.
    session.disable_fallback()
    session._model_bytes = None
    release_freed_memory()
    _warn_full_range_int8(session, path)
    return TiedModel(session, path=path, memory=memory, required=required,
                     auto=isinstance(providers, str) and providers == "auto")


def _onnx_session(path, options, providers, *, memory: str, max_bytes: int) -> ort.InferenceSession:
    """Session over a checked ``.onnx`` (lean: rewritten first); our copies freed before it returns."""
    # fast: onnxruntime validates the graph (see read_model's check_graph); lean
    # rewrites the graph first, so onnx's checker sees it before the rewrite.
    model_file = read_model(path, max_bytes=max_bytes, check_graph=memory != "fast")
    extra: dict = {}
    proto = model_file.proto
    if memory == "lean":
        from .lean import lean_rewrite

        proto, report = lean_rewrite(proto)
        for key, value in report.session_config.items():
            options.add_session_config_entry(key, value)
        if report.disabled_optimizers:
            extra["disabled_optimizers"] = report.disabled_optimizers
    if proto.ByteSize() >= PROTOBUF_LIMIT:
        if memory == "lean":  # the rewritten graph exists in memory only
            return open_proto_session(proto, options, providers=providers, label=str(path), **extra)
        del proto, model_file.proto
        return open_session(str(path), options, providers=providers, label=str(path), **extra)
    source = proto.SerializeToString()
    del proto, model_file.proto
    return open_session(source, options, providers=providers, label=str(path), **extra)


def _ort_format_session(path, options, providers, *, memory: str,
                        max_bytes: int) -> ort.InferenceSession:
    """Session over a checked ``.ort`` file, which onnxruntime runs as saved (no graph rewrite)."""
    from .graph.ort_format import read_ort_model

    if memory != "fast":
        raise UsageError(
            f"memory={memory!r} rewrites the ONNX graph, and {str(path)!r} is an ORT-format file, "
            "which onnxruntime runs as saved. Load the .onnx it was made from with memory='lean', "
            "or load the .ort with memory='fast'.")
    data = read_ort_model(path, max_bytes=max_bytes)
    options.add_session_config_entry("session.load_model_format", "ORT")
    return open_session(data, options, providers=providers, label=str(path),
                        fix="The file is not a valid ORT-format model for this onnxruntime; write "
                            "it again with `tiedonnx ort` from the .onnx.")


def cpu_has_int8_dot() -> bool | None:
    """Whether full 8-bit int8 weights are safe on this CPU: True on ARM or with x86 VNNI
    (AVX512-VNNI, AVX-VNNI), False on x86 without it, None where /proc/cpuinfo is unreadable."""
    import platform

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return None
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _warn_full_range_int8(session, path) -> None:
    """Full-range int8 weights saturate in onnxruntime's x86 CPU kernels without VNNI: say so."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(FULL_RANGE_KEY) == "true" and "CPUExecutionProvider" in session.get_providers() \
            and cpu_has_int8_dot() is False:
        logger.warning(
            "%s has full-range int8 weights (%s): onnxruntime's int8 kernels on this CPU (x86 "
            "without VNNI) add pairs of products in 16 bits and can saturate, giving wrong "
            "outputs. Quantize again with reduce_range=True (the default; CLI: drop "
            "--no-reduce-range) for this CPU.", str(path), FULL_RANGE_KEY)


def release_freed_memory() -> None:
    """Give the heap pages freed by loading back to the system.

    Loading holds the parsed proto and its serialized bytes (two copies of
    every weight) until the session exists; both are freed by reference
    counting as soon as ``load`` drops them (``model_file._all_tensors`` no
    longer leaves a reference cycle that kept the proto for the cycle
    collector). glibc then keeps freed pages below the top of its heap
    resident until ``malloc_trim`` (a no-op where libc has none). Measured on
    a 4096x2048 tie (2-core AMD EPYC, onnxruntime 1.32, fresh process): RSS
    growth over ``load`` 73.45 MiB, ``InferenceSession(path)`` 73.45 MiB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once; None off Linux or without glibc (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def open_session(source, options=None, *, providers, label: str, fix: str | None = None,
                 **kwargs) -> ort.InferenceSession:
    """``ort.InferenceSession`` whose refusals become one-line :class:`ModelFileError`.

    A model can pass ``onnx.checker`` and still be refused by onnxruntime (an
    opset it does not implement, an op without a kernel); that is bad input,
    not a crash.
    """
    try:
        return ort.InferenceSession(source, options, providers=providers, **kwargs)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        fix = fix or "Re-export it with a supported opset and standard ops (see `tiedonnx inspect`)."
        raise ModelFileError(f"onnxruntime cannot load model {label!r}: {short_error(exc, 300)}. {fix}") from None


#: Above protobuf's limit, initializers of at least this many bytes go to
#: onnxruntime beside the serialized graph (:func:`open_proto_session`).
DETACH_BYTES = 1 << 20
_IN_MEMORY = "tiedonnx-in-memory"  # the location the detached tensors claim; never read


def open_proto_session(proto, options=None, *, providers, label: str,
                       limit: int | None = None, **kwargs) -> ort.InferenceSession:
    """:func:`open_session` over an in-memory model (an ``onnx.ModelProto``) of any size.

    Under ``limit`` (default: protobuf's 2 GiB) the model is serialized. Above
    it, protobuf cannot serialize it: its large initializers are handed to
    onnxruntime as external initializers (``add_external_initializers``, which
    copies them into the session) and only the rest is serialized. ``proto``
    is restored before this returns, also when onnxruntime refuses the model.
    """
    import onnx  # only when a model is loaded (see test_runtime_light)

    limit = PROTOBUF_LIMIT if limit is None else limit
    if proto.ByteSize() < limit:
        return open_session(proto.SerializeToString(), options, providers=providers, label=label, **kwargs)
    options = options or ort.SessionOptions()
    detached = []
    try:
        for init in proto.graph.initializer:
            if len(init.raw_data) >= DETACH_BYTES and init.data_type != onnx.TensorProto.BFLOAT16:
                detached.append((init, init.raw_data, init.HasField("data_location")))
        names, values = [], []
        for init, raw, _ in detached:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            values.append(ort.OrtValue.ortvalue_from_numpy(
                np.frombuffer(raw, dtype).reshape(tuple(init.dims))))
            names.append(init.name)
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(len(raw)))):
                init.external_data.add(key=key, value=value)
        options.add_external_initializers(names, values)
        return open_session(proto.SerializeToString(), options, providers=providers, label=label, **kwargs)
    finally:
        for init, raw, had_location in detached:  # as it was, byte for byte
            del init.external_data[:]
            if had_location:
                init.data_location = onnx.TensorProto.DEFAULT
            else:
                init.ClearField("data_location")
            init.raw_data = raw


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
        self.inputs = tuple(TensorSpec.from_ort(a) for a in session.get_inputs())
        self.outputs = tuple(TensorSpec.from_ort(a) for a in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        # I/O binding on accelerators: one explicit host->device copy of the
        # inputs per call, outputs copied back once; weights stay on the device.
        self._io_binding = self.providers[0] in (CUDA, TENSORRT)
        self._run_native = session_runner(session)
        self._fast = None if self._io_binding else fast_runner(
            session, self.inputs, self.outputs, bind=self.providers[0] == CPU)

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
