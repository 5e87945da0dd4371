"""Parity: run Keras and onnxruntime on the same inputs and compare every output.

Every mismatch (missing or extra output, shape, dtype, values beyond the
tolerance) is collected and raised once, as one :class:`ParityError` that
lists them all. Inputs are checked at batch sizes that were not used to
trace the model (tracing uses a symbolic batch; the probe call uses 1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, ParityError

logger = logging.getLogger(__name__)

# Tolerances per stored precision, as |onnx - keras| <= atol + rtol * |keras|.
# fp32: same math, different kernels (oneDNN vs MLAS) and op order. Measured
# max abs difference 1.8e-7 on the 784-256 sigmoid AE and up to 1.4e-6 on a
# Dense+exponential model with outputs near 3; 1e-5 + 1e-5 * |y| keeps a 5x margin
# over the worst case seen while still catching any wrong weight or op.
FP32_TOL = (1e-5, 1e-5)
# fp16 weights (11 significant bits), fp32 compute: measured max abs 2e-4 on the
# digits-trained 784-256 AE (scripts/bench_edge.py) and 6e-4 on the demo's 64-32
# AE; the bound 2e-3 leaves a 3x margin.
FP16_TOL = (2e-3, 0.0)
# int8 weights (7-bit range, per tensor) and activations quantized at run time:
# measured max abs 0.023 on the digits-trained 784-256 AE and 0.044 on the demo's
# 64-32 AE (coarser per-tensor scales on a small matrix). The bound 0.05.
INT8_TOL = (5e-2, 0.0)
TOLERANCES = {"fp32": FP32_TOL, "fp16": FP16_TOL, "int8": INT8_TOL}

DEFAULT_BATCH_SIZES = (1, 3, 64)


@dataclass
class OutputParity:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class ParityReport:
    """Per-output figures of a Keras vs onnxruntime comparison."""

    outputs: list[OutputParity] = field(default_factory=list)
    batch_sizes: tuple = ()
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "atol": self.atol, "rtol": self.rtol, "batch_sizes": list(self.batch_sizes),
            "max_abs": self.max_abs,
            "outputs": [o.__dict__ | {"shape": list(o.shape)} for o in self.outputs],
        }


def make_inputs(model, specs, batch: int, *, seed: int = 0) -> list[np.ndarray]:
    """Deterministic random inputs for ``specs`` (floats in [0, 1); ints below the vocabulary)."""
    rng = np.random.default_rng(seed + batch)
    vocab = _smallest_vocabulary(model)
    arrays = []
    for spec in specs:
        shape = (batch, *[1 if d is None else d for d in spec.shape[1:]])
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            arrays.append(rng.integers(0, vocab, size=shape).astype(spec.dtype))
        else:
            arrays.append(rng.random(shape).astype(spec.dtype))
    return arrays


def _smallest_vocabulary(model) -> int:
    sizes = [layer.input_dim for layer in model._flatten_layers(include_self=False)
             if hasattr(layer, "input_dim") and isinstance(layer.input_dim, int)]
    return min(sizes) if sizes else 10


def _keras_outputs(model, arrays, names) -> dict[str, np.ndarray]:
    import keras

    out = model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)
    return {n: np.asarray(keras.ops.convert_to_numpy(t)) for n, t in zip(names, keras.tree.flatten(out))}


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
            atol: float, rtol: float) -> tuple[list[OutputParity], list[str]]:
    """Compare two output dicts; return per-output figures and problem descriptions."""
    figures, problems = [], []
    for name in sorted(set(expected) - set(actual)):
        problems.append(f"output {name!r} is missing from the ONNX model (it has {sorted(actual)})")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"ONNX output {name!r} has no Keras counterpart")
    for name in [n for n in expected if n in actual]:
        e, a = expected[name], actual[name]
        if e.shape != a.shape:
            problems.append(f"output {name!r}: shape {a.shape} in ONNX, {e.shape} in Keras")
            continue
        if a.dtype != e.dtype:
            problems.append(f"output {name!r}: dtype {a.dtype} in ONNX, {e.dtype} in Keras")
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(e.astype(np.float64)), 1e-12)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * np.abs(e))) and np.array_equal(np.isnan(a), np.isnan(e))
        figures.append(OutputParity(name, tuple(e.shape), max_abs, max_rel, ok))
        if not ok:
            problems.append(f"output {name!r}: max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} "
                            f"exceeds atol={atol:g}, rtol={rtol:g}")
    return figures, problems


def verify(keras_model, onnx_model, *, inputs: list[np.ndarray] | None = None,
           batch_sizes=DEFAULT_BATCH_SIZES, precision: str = "fp32",
           atol: float | None = None, rtol: float | None = None) -> ParityReport:
    """Check that an ONNX model computes what the Keras model computes.

    Args:
        keras_model: the Keras model.
        onnx_model: an ``onnx.ModelProto``, serialized bytes, or a file path.
        inputs: the user's own input arrays (one per model input); when None,
            random inputs at each of ``batch_sizes``.
        precision: selects the default tolerance (:data:`TOLERANCES`).
        atol, rtol: override the tolerance.

    Returns:
        A :class:`ParityReport` (merged over all batches: the worst figure per output).

    Raises:
        ParityError: any output missed; the message lists every one.
        InputError: ``inputs`` do not fit the model.
    """
    from .tf_convert import input_specs, output_names

    default_atol, default_rtol = TOLERANCES[precision]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    if isinstance(onnx_model, (str, os.PathLike)):
        source = str(onnx_model)
    elif isinstance(onnx_model, bytes):
        source = onnx_model
    else:
        source = onnx_model.SerializeToString()
    from tiedonnx.runtime.session import open_session

    session = open_session(source, providers=["CPUExecutionProvider"],
                           label=str(onnx_model) if isinstance(source, str) else "the exported model")
    specs = input_specs(keras_model)
    onnx_inputs = [i.name for i in session.get_inputs()]
    batches = [list(inputs)] if inputs is not None else [make_inputs(keras_model, specs, b) for b in batch_sizes]
    if inputs is not None:
        from tiedonnx.runtime.inputs import TensorSpec, check_inputs

        if len(inputs) != len(onnx_inputs):
            raise InputError(f"The model has {len(onnx_inputs)} input(s) {onnx_inputs}; received "
                             f"{len(inputs)} array(s). Pass one array per input.")
        # Same checks (names, ranks, sizes, dtypes) as tiedonnx.runtime before running.
        check_inputs(dict(zip(onnx_inputs, inputs)),
                     tuple(TensorSpec.from_ort(i) for i in session.get_inputs()))
    names = [o.name for o in session.get_outputs()]
    keras_names = output_names(keras_model, len(names))
    if set(keras_names) != set(names):
        # Files made by other exporters name outputs their own way (tf2onnx: output_0):
        # pair outputs by position, and say so.
        logger.warning("ONNX outputs %s do not carry the Keras names %s; comparing by position",
                       names, keras_names)
        keras_names = names
    worst: dict[str, OutputParity] = {}
    problems: list[str] = []
    for arrays in batches:
        feed = {n: np.asarray(a, dtype=s.dtype) for n, a, s in zip(onnx_inputs, arrays, specs)}
        try:
            actual = dict(zip(names, session.run(None, feed)))
        except Exception as exc:
            raise InputError(f"onnxruntime rejected the inputs: {str(exc).splitlines()[0][:300]}. "
                             f"Expected inputs {[(s.name, s.shape, s.dtype) for s in specs]}.") from None
        expected = _keras_outputs(keras_model, [feed[n] for n in onnx_inputs], keras_names)
        figures, found = compare(expected, actual, atol=atol, rtol=rtol)
        batch = len(arrays[0])
        problems += [f"batch {batch}: {p}" for p in found]
        for f in figures:
            if f.name not in worst or f.max_abs >= worst[f.name].max_abs:
                worst[f.name] = f
    report = ParityReport(list(worst.values()), tuple(len(b[0]) for b in batches), atol, rtol)
    logger.info("parity: max abs diff %.3g over batch sizes %s", report.max_abs, report.batch_sizes)
    if problems:
        raise ParityError(
            f"ONNX model does not match Keras ({len(problems)} problem(s)): " + "; ".join(problems)
            + ".", mismatches=problems)
    return report


def verify_files(keras_path, onnx_path, *, input_path=None, precision: str | None = None,
                 unsafe: bool = False) -> ParityReport:
    """:func:`verify` for files: a ``.keras`` model, an ``.onnx`` model, optional ``.npy``/``.npz`` inputs.

    The ONNX file is read with the runtime's checks; ``.npz`` inputs are matched
    by input name, a ``.npy`` goes to a model's single input. ``precision``
    (which selects the tolerance) defaults to the one the file records.
    """
    from tiedonnx.runtime.inputs import load_array_file
    from tiedonnx.runtime.model_file import read_model

    from .keras_io import load_keras_model
    from .tf_convert import input_specs

    proto = read_model(onnx_path).proto
    if precision is None:
        from tiedonnx.runtime.graph.metadata import read_precision

        precision = read_precision(proto)
    model = load_keras_model(keras_path, unsafe=unsafe)
    inputs = None
    if input_path is not None:
        loaded = load_array_file(input_path)
        specs = input_specs(model)
        if isinstance(loaded, dict):
            onnx_names = [i.name for i in proto.graph.input
                          if i.name not in {t.name for t in proto.graph.initializer}]
            missing = [n for n in onnx_names if n not in loaded]
            if missing:
                raise InputError(f"{input_path!s} lacks arrays for input(s) {missing}; it has "
                                 f"{sorted(loaded)}. Save one array per input name with np.savez.")
            inputs = [loaded[n] for n in onnx_names]
        else:
            if len(specs) != 1:
                raise InputError(f"The model has {len(specs)} inputs; a .npy holds one array. "
                                 f"Received: {str(input_path)!r}. Use an .npz with one array per input name.")
            inputs = [loaded]
    return verify(model, proto, inputs=inputs, precision=precision)
