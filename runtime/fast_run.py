"""The common call of :meth:`TiedModel.run`, checked and run with as little Python as possible.

One array that already fits the model's one input (dtype, rank, fixed axes,
C order) needs no cast, copy or error message; every value is still checked
for NaN/inf (:func:`~tiedonnx.runtime.inputs.all_finite`'s BLAS dot product,
inlined). Anything else returns None and takes the full path, which also
builds the error.

Two things make the wrapper cheaper than ``InferenceSession.run`` itself:

* it calls onnxruntime's C binding (``InferenceSession._sess.run``) directly,
  probed once at load (:func:`session_runner`: ``session.run`` if it changed).
  ``InferenceSession.run`` adds Python-side checks that this path has already
  made (input names, OrtValue ownership: only numpy arrays reach it, WebGPU
  graph capture: not a provider tiedonnx runs);
* a one-row call runs through an I/O binding made once per thread, with the
  input copied into a bound buffer and the outputs copied out of bound ones:
  onnxruntime then allocates and wraps nothing per call. Measured on the
  784-256 model (2-core AMD EPYC, onnxruntime 1.32): an Identity model's call
  costs 3.8 us through ``run`` and 3.0 us this way, copies included.

The binding is used only where every output's shape is known from the input's
(fixed axes, and the input's batch axis), and its first call per thread is
checked against a plain run; if the shapes disagree the binding is dropped.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from .inputs import TensorSpec, all_finite

logger = logging.getLogger(__name__)

_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: ``(inputs, allow_nonfinite) -> outputs by name``, or None to take the full path.
FastRun = Callable[[object, bool], "dict[str, np.ndarray] | None"]


# An output name no model has: onnxruntime checks output names before it runs
# anything, so probing the private call with it runs nothing.
_PROBE_OUTPUT = "\0tiedonnx-probe"


def session_runner(session: ort.InferenceSession):
    """``run(output_names, feeds)`` through onnxruntime's C binding, or the public API without it.

    ``InferenceSession._sess.run(names, feeds, run_options)`` is private: it is
    probed once here (with an output name no model has, so nothing runs), and
    a binding that is missing or takes other arguments (``TypeError``) falls
    back to the public ``session.run`` instead of failing every call.
    """
    native = getattr(session, "_sess", None)
    run = getattr(native, "run", None)
    if run is None or not _native_run_works(run):
        logger.debug("onnxruntime's InferenceSession._sess.run is missing or changed; using session.run")
        return session.run
    return lambda names, feeds: run(names, feeds, None)


def _native_run_works(run) -> bool:
    try:
        run([_PROBE_OUTPUT], {}, None)
    except (TypeError, AttributeError):  # pybind11: "incompatible function arguments"
        return False
    except Exception:  # noqa: BLE001 - onnxruntime's own refusal of the unknown name: the call works
        return True
    return True


def fast_runner(session: ort.InferenceSession, inputs: tuple[TensorSpec, ...],
                outputs: tuple[TensorSpec, ...], *, bind: bool, run=None) -> FastRun | None:
    """The fast path for a one-input numeric model, or None when the model has none.

    Args:
        session: the model's session.
        inputs, outputs: the model's specs.
        bind: allow the per-thread I/O binding for one-row calls (CPU sessions).
        run: the session's :func:`session_runner`, when the caller has probed it already.
    """
    if len(inputs) != 1 or inputs[0].dtype.kind not in "fiub":
        return None
    spec = inputs[0]
    name, dtype, ndim = spec.name, spec.dtype, len(spec.shape)
    fixed = tuple((axis, size) for axis, size in enumerate(spec.shape) if isinstance(size, int))
    dot_check = dtype in _BLAS_FLOATS
    other_float = dtype.kind == "f" and not dot_check
    names = [o.name for o in outputs]
    run = run or session_runner(session)
    one_row = _OneRow(session, spec, outputs, run) if bind else None
    bound = one_row.state if one_row is not None and one_row.possible else None
    single = names[0] if len(names) == 1 else None
    vdot, isfinite, ndarray = np.vdot, math.isfinite, np.ndarray

    def fast(x, allow_nonfinite: bool):
        if type(x) is not ndarray or (x.dtype is not dtype and x.dtype != dtype) or x.ndim != ndim:
            return None
        shape = x.shape
        rows = shape[0]
        for axis, size in fixed:
            if shape[axis] != size:
                return None
        if rows == 1 and bound is not None:
            state = bound(x)
            if state:  # copy in, check the copy while it is in cache, run the bound buffers
                buffer, flat, run_bound, binding, outs = state
                buffer[...] = x
                if not allow_nonfinite and (
                        (dot_check and not isfinite(flat.dot(flat)) and not all_finite(flat))
                        or (other_float and not all_finite(flat))):
                    return None  # the full path raises, naming the row
                run_bound(binding, None)
                if single is not None:
                    return {single: outs[0].copy()}
                return {n: out.copy() for n, out in zip(names, outs)}
        if not rows or not x.flags.c_contiguous:
            return None
        if not allow_nonfinite:
            # Exact: an overflowing sum of squares rechecks element-wise; a
            # non-finite input returns None and the full path raises.
            if dot_check and not isfinite(vdot(x, x)) and not all_finite(x):
                return None
            if other_float and not all_finite(x):
                return None
        return dict(zip(names, run(names, {name: x})))

    return fast


class _OneRow:
    """Per-thread I/O binding for one-row calls: bound input and output buffers."""

    def __init__(self, session, spec: TensorSpec, outputs: tuple[TensorSpec, ...], run):
        self._native = getattr(session, "_sess", None)
        self._spec, self._run = spec, run
        self._names = [o.name for o in outputs]
        self._shapes = _one_row_shapes(spec, outputs)
        self._dtypes = [o.dtype for o in outputs]
        self._local = threading.local()
        self.possible = (self._native is not None and self._shapes is not None
                         and hasattr(ort.capi._pybind_state, "SessionIOBinding")
                         and all(d.kind in "fiub" for d in self._dtypes))

    def state(self, x: np.ndarray) -> tuple:
        """This thread's ``(buffer, flat view, run, binding, outputs)``; empty if binding is off."""
        try:
            return self._local.state
        except AttributeError:  # this thread's first one-row call
            self._local.state = self._bind(x)
            return self._local.state

    def _bind(self, x: np.ndarray) -> tuple:
        """This thread's binding, or () when onnxruntime's private binding classes changed."""
        try:
            return self._bind_private(x)
        except (TypeError, AttributeError) as exc:  # a renamed class or changed signature
            logger.debug("onnxruntime's private I/O binding is unusable (%s); one-row calls "
                         "take the plain path", exc)
            return ()

    def _bind_private(self, x: np.ndarray) -> tuple:
        """Bind this thread's buffers, after checking the planned shapes against a plain run on zeros."""
        C = ort.capi._pybind_state
        plain = self._run(self._names, {self._spec.name: np.zeros(x.shape, x.dtype)})
        if ([tuple(v.shape) for v in plain] != self._shapes
                or [v.dtype for v in plain] != self._dtypes):
            logger.debug("one-row outputs %s differ from the declared shapes %s; not binding",
                         [v.shape for v in plain], self._shapes)
            return ()
        device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
        buffer = np.empty(x.shape, x.dtype)
        outs = [np.empty(shape, dtype) for shape, dtype in zip(self._shapes, self._dtypes)]
        binding = C.SessionIOBinding(self._native)
        binding.bind_ortvalue_input(self._spec.name, C.OrtValue.ortvalue_from_numpy(buffer, device))
        for name, out in zip(self._names, outs):
            binding.bind_ortvalue_output(name, C.OrtValue.ortvalue_from_numpy(out, device))
        return buffer, buffer.reshape(-1), self._native.run_with_iobinding, binding, outs


def _one_row_shapes(spec: TensorSpec, outputs: tuple[TensorSpec, ...]) -> list[tuple[int, ...]] | None:
    """Each output's shape for a one-row input, when the declared shapes tell it; else None."""
    batch = spec.shape[0] if spec.shape else None
    if batch is None or batch == "?" or (isinstance(batch, int) and batch != 1):
        return None
    shapes = []
    for out in outputs:
        shape = []
        for size in out.shape:
            if isinstance(size, int):
                shape.append(size)
            elif size == batch:
                shape.append(1)
            else:
                return None
        shapes.append(tuple(shape))
    return shapes
