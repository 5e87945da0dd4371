"""Parity: run Keras and onnxruntime on the same inputs and compare every output.

Every mismatch (missing or extra output, shape, dtype, values beyond the
tolerance) is collected and raised once, as one :class:`ParityError` that
lists them all. Inputs are checked at batch sizes that were not used to
trace the model (tracing uses a symbolic batch; the probe call uses 1).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, ParityError, UsageError
from .parity_compare import VALUES, Mismatch, OutputParity, compare, keep_worst  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

# Tolerances per stored precision, as |onnx - keras| <= atol * max(1, peak) + rtol * |keras|,
# where peak is the output's largest |keras| value: weight rounding moves each
# output in proportion to the output's scale, so logits that reach 2 get twice
# the room of a sigmoid in [0, 1] (for which the bound is exactly atol).
# fp32: same math, different kernels (oneDNN vs MLAS) and op order. Measured
# max abs difference 1.8e-7 on the 784-256 sigmoid AE and up to 1.4e-6 on a
# Dense+exponential model with outputs near 3; 1e-5 + 1e-5 * |y| keeps a 5x margin
# over the worst case seen while still catching any wrong weight or op.
FP32_TOL = (1e-5, 1e-5)
# fp16 weights (11 significant bits), fp32 compute: measured max abs 2e-4 on the
# digits-trained 784-256 AE (scripts/bench_edge.py) and 6e-4 on the demo's 64-32
# AE; on the tiny KerasHub LMs of tests/test_keras_hub.py 6e-5 to 7e-5 (GPT-2,
# Qwen, Llama; logits peak ~0.2) and 3.0e-3 at a logits peak of 1.6 (Gemma,
# whose inputs are scaled by sqrt(hidden)): 1.9e-3 of the peak. 5e-3 x max(1, peak)
# keeps a 2.6x margin over Gemma and 8x over the AEs; a wrong weight or op
# moves outputs by a sizeable fraction of their peak.
FP16_TOL = (5e-3, 0.0)
# int8 weights (7-bit range, per tensor) and activations quantized at run time:
# measured max abs 0.023 on the digits-trained 784-256 AE and 0.044 on the demo's
# 64-32 AE (coarser per-tensor scales on a small matrix). The bound 0.05.
INT8_TOL = (5e-2, 0.0)
# int4 block-wise weights (block 32, float16 scales), fp32 compute: measured max
# abs 0.132 on the digits-trained 784-256 AE (scripts/bench_edge.py), 0.19 on
# the demo-sized 64-32 AE (0.28 with --symmetric); on export's own random inputs
# about 3e-5. 0.3 keeps a margin over the symmetric small-matrix case; a wrong
# weight layout or block axis moves sigmoid outputs by far more.
INT4_TOL = (3e-1, 0.0)
TOLERANCES = {"fp32": FP32_TOL, "fp16": FP16_TOL, "int8": INT8_TOL, "int4": INT4_TOL}

# mixed_float16 / mixed_bfloat16 (compute in 16 bits, variables in float32):
# Keras (TensorFlow kernels) and onnxruntime each round every intermediate to
# 16 bits in their own order. Measured max abs diff on the tiny KerasHub LMs of
# tests/test_keras_hub.py (2 layers, hidden 16, seeded random weights; sequence
# lengths 1, 7, 33 with padding): GPT-2 1.0e-4, Qwen and Llama 1.1e-4 (logits
# peak ~0.2), Gemma 7.1e-3 at a logits peak of 1.6 (4.4e-3 of the peak, about
# 4 float16 spacings there). 2e-2 x max(1, peak) keeps a 4.5x margin over Gemma.
MIXED16_TOL = (2e-2, 0.0)

DEFAULT_BATCH_SIZES = (1, 3, 64)


@dataclass
class ParityReport:
    """Per-output figures of a Keras vs onnxruntime comparison.

    ``cases`` names every run (batch size and, for models with open axes,
    sequence length); figures are the worst per output over all of them.
    """

    outputs: list[OutputParity] = field(default_factory=list)
    batch_sizes: tuple = ()
    atol: float = 0.0
    rtol: float = 0.0
    sequence_lengths: tuple = ()
    cases: list[str] = field(default_factory=list)
    compute_dtype: str = "float32"

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "atol": self.atol, "rtol": self.rtol, "batch_sizes": list(self.batch_sizes),
            "sequence_lengths": list(self.sequence_lengths), "cases": list(self.cases),
            "compute_dtype": self.compute_dtype, "max_abs": self.max_abs,
            "outputs": [o.__dict__ | {"shape": list(o.shape)} for o in self.outputs],
        }


def make_inputs(model, specs, batch: int, *, seed: int = 0, length: int | None = None) -> list[np.ndarray]:
    """Deterministic inputs for ``model`` at one batch size, one array per input in ``specs`` order.

    Floats in [0, 1); integer ids below the vocabulary of the embedding that
    reads them; masks with real padding (see :mod:`.samples`).
    """
    from .samples import Case, make_case_inputs, sample_plan
    from .signature import input_signature

    signature = input_signature(model)
    plan = sample_plan(model, signature)
    arrays = make_case_inputs(signature, Case(batch, length), plan.vocab, positions=plan.positions, seed=seed)
    return [arrays[s.name] for s in specs]


def compute_dtype(model) -> str:
    """The narrowest float type any layer of ``model`` computes in ("float32" for plain models)."""
    found = {getattr(layer, "compute_dtype", None)
             for layer in model._flatten_layers(include_self=True, recursive=True)}
    for dtype in ("float16", "bfloat16"):
        if dtype in found:
            return dtype
    return "float32"


def tolerance(model, precision: str) -> tuple[float, float]:
    """``(atol, rtol)`` for ``precision``, widened for models that compute in 16 bits."""
    if precision not in TOLERANCES:
        raise UsageError(f"No parity tolerance for precision {precision!r}. Received: "
                         f"precision={precision!r}. Use one of {sorted(TOLERANCES)}, or pass atol=.")
    atol, rtol = TOLERANCES[precision]
    if compute_dtype(model) != "float32":
        atol, rtol = max(atol, MIXED16_TOL[0]), max(rtol, MIXED16_TOL[1])
    return atol, rtol


def _to_numpy(outputs, names) -> dict[str, np.ndarray]:
    import keras

    return {n: np.asarray(keras.ops.convert_to_numpy(t)) for n, t in zip(names, keras.tree.flatten(outputs))}


def _open(onnx_model):
    """A CPU session over a path, serialized bytes or a proto (of any size: see open_proto_session)."""
    from tiedonnx.runtime.sessions import open_proto_session, open_session

    if isinstance(onnx_model, (str, os.PathLike)):
        return open_session(str(onnx_model), providers=["CPUExecutionProvider"], label=str(onnx_model))
    if isinstance(onnx_model, bytes):
        return open_session(onnx_model, providers=["CPUExecutionProvider"], label="the exported model")
    return open_proto_session(onnx_model, providers=["CPUExecutionProvider"], label="the exported model")


def _declared_by_file(session, signature):
    """For a model that declares no inputs (``signature.inferred``): the file's inputs, when as many.

    A subclassed model records only the shapes of its first call; the file
    exported with ``input_spec`` knows the dtypes and open axes.
    """
    from .signature import InputSpec

    inputs = session.get_inputs()
    if len(inputs) != len(signature.specs):
        return signature
    specs = []
    for value in inputs:
        dtype = value.type[len("tensor("):-1] if value.type.startswith("tensor(") else ""
        dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
        specs.append(InputSpec(value.name, tuple(d if isinstance(d, int) else None for d in value.shape), dtype))
    logger.info("the Keras model declares no inputs; parity uses the file's: %s", specs)
    return type(signature)(tuple(specs), signature.structure)


def _onnx_input_names(session, signature) -> dict[str, str]:
    """Keras input name -> ONNX input name: by name, or by position for files named otherwise."""
    onnx_names = [i.name for i in session.get_inputs()]
    if set(onnx_names) == set(signature.names):
        return {n: n for n in signature.names}
    if len(onnx_names) != len(signature.names):
        raise InputError(f"The ONNX model has {len(onnx_names)} input(s) {onnx_names}; the Keras model "
                         f"takes {len(signature.names)}: {signature.names}. Compare the export of this "
                         "very Keras model.")
    logger.warning("ONNX inputs %s do not carry the Keras names %s; feeding them by position",
                   onnx_names, signature.names)
    return dict(zip(signature.names, onnx_names))


def _user_feed(inputs, signature, session) -> dict[str, np.ndarray]:
    """The user's arrays (a list in input order, or a dict by name), checked like the runtime does."""
    from tiedonnx.runtime.inputs import TensorSpec, check_inputs, materialize

    mapping = _onnx_input_names(session, signature)
    if isinstance(inputs, dict):
        if not set(signature.names) <= set(inputs) and set(mapping.values()) <= set(inputs):
            inputs = {n: inputs[o] for n, o in mapping.items()}  # keyed by the file's own input names
        feed = {n: inputs[n] for n in signature.names if n in inputs}
        missing = [n for n in signature.names if n not in inputs]
        if missing:
            raise InputError(f"Missing input(s) {missing}. Received: {sorted(inputs)}. "
                             f"The model takes {signature.names}; pass one array per input name.")
    else:
        inputs = list(inputs)
        if len(inputs) != len(signature.specs):
            raise InputError(f"The model has {len(signature.specs)} input(s) {signature.names}; received "
                             f"{len(inputs)} array(s). Pass one array per input.")
        feed = dict(zip(signature.names, inputs))
    # The runtime's checks before running (names, ranks, sizes, dtypes), then its
    # cast and value checks (NaN/inf, float64 values that overflow float32).
    specs = tuple(TensorSpec.from_ort(i) for i in session.get_inputs())
    arrays, _ = check_inputs({mapping[n]: feed[n] for n in signature.names}, specs)
    checked = materialize(arrays, specs, nonfinite_fix="or drop those rows: NaN and inf outputs "
                          "cannot be compared, so parity needs finite inputs.")
    return {s.name: np.asarray(checked[mapping[s.name]], dtype=s.dtype) for s in signature.specs}


def _run_case(keras_model, session, signature, feed, mapping) -> tuple[dict, dict]:
    """(Keras outputs, ONNX outputs) by output name for one feed."""
    from .signature import output_structure_names

    names = [o.name for o in session.get_outputs()]
    try:
        actual = dict(zip(names, session.run(None, {mapping[n]: a for n, a in feed.items()})))
    except Exception as exc:
        raise InputError(f"onnxruntime rejected the inputs: {str(exc).splitlines()[0][:300]}. "
                         f"Expected inputs {[(s.name, s.shape, s.dtype) for s in signature.specs]}.") from None
    with warnings.catch_warnings():
        # Keras warns that a softmax over one key is constant: true, and expected at length 1.
        warnings.filterwarnings("ignore", message="You are using a softmax over axis")
        outputs = keras_model(signature.pack(feed), training=False)
    keras_names = output_structure_names(keras_model, outputs)
    if set(keras_names) != set(names) and len(keras_names) == len(names):
        # Files made by other exporters name outputs their own way (tf2onnx: output_0):
        # pair outputs by position, and say so.
        logger.warning("ONNX outputs %s do not carry the Keras names %s; comparing by position",
                       names, keras_names)
        keras_names = names
    return _to_numpy(outputs, keras_names), actual


def verify(keras_model, onnx_model, *, inputs: list[np.ndarray] | dict[str, np.ndarray] | None = None,
           batch_sizes=DEFAULT_BATCH_SIZES, sequence_lengths=None, precision: str = "fp32",
           atol: float | None = None, rtol: float | None = None, input_spec=None) -> ParityReport:
    """Check that an ONNX model computes what the Keras model computes.

    Args:
        keras_model: the Keras model (any input structure).
        onnx_model: an ``onnx.ModelProto``, serialized bytes, or a file path.
        inputs: the user's own arrays (a list in input order, or a dict by input
            name); when None, generated inputs (:mod:`.samples`) for each batch
            size and, for models with open axes, each sequence length.
        sequence_lengths: sizes for open non-batch axes (default
            :data:`~tiedonnx.converter.samples.DEFAULT_SEQUENCE_LENGTHS`).
        precision: selects the default tolerance (:data:`TOLERANCES`), widened
            to :data:`MIXED16_TOL` for models that compute in 16 bits.
        atol, rtol: override the tolerance.
        input_spec: the inputs as declared at export (:mod:`.input_specs`),
            for a model that declares none itself.

    Returns:
        A :class:`ParityReport` (the worst figure per output over all cases).

    Raises:
        ParityError: any output missed; the message lists every case and output.
        InputError: ``inputs`` do not fit the model.
    """
    from .signature import input_signature
    from .tf_convert import check_numeric_inputs

    if atol is None or rtol is None:
        default_atol, default_rtol = tolerance(keras_model, precision)
        atol = default_atol if atol is None else atol
        rtol = default_rtol if rtol is None else rtol
    session = _open(onnx_model)
    signature = input_signature(keras_model, input_spec)
    if signature.inferred and input_spec is None:
        signature = _declared_by_file(session, signature)
    check_numeric_inputs(keras_model, list(signature.specs))  # a "string" InputLayer: refuse, one line
    mapping = _onnx_input_names(session, signature)
    runs = _runs(keras_model, session, signature, inputs, batch_sizes, sequence_lengths)
    worst: dict[str, OutputParity] = {}
    problems: list[Mismatch] = []
    for case, feed in runs:
        expected, actual = _run_case(keras_model, session, signature, feed, mapping)
        figures, found = compare(expected, actual, atol=atol, rtol=rtol)
        problems += [p.in_case(case) for p in found]
        keep_worst(worst, figures)
    report = ParityReport(
        list(worst.values()), tuple(dict.fromkeys(c.batch for c, _ in runs)), atol, rtol,
        sequence_lengths=tuple(dict.fromkeys(c.length for c, _ in runs if c.length is not None)),
        cases=[str(c) for c, _ in runs], compute_dtype=compute_dtype(keras_model))
    logger.info("parity: max abs diff %.3g over %s", report.max_abs, report.cases)
    if problems:
        raise ParityError(
            f"ONNX model does not match Keras ({len(problems)} problem(s)): "
            + "; ".join(map(str, problems)) + "." + precision_hint(precision, problems),
            mismatches=problems)
    return report


def _runs(keras_model, session, signature, inputs, batch_sizes, sequence_lengths) -> list[tuple]:
    """``(case, feed)`` pairs: the user's one feed, or generated inputs for every case."""
    from .samples import DEFAULT_SEQUENCE_LENGTHS, Case, cases, make_case_inputs, sample_plan

    if inputs is not None:
        feed = _user_feed(inputs, signature, session)
        return [(Case(len(next(iter(feed.values())))), feed)]
    plan = sample_plan(keras_model, signature)
    lengths = DEFAULT_SEQUENCE_LENGTHS if sequence_lengths is None else tuple(sequence_lengths)
    return [(c, make_case_inputs(signature, c, plan.vocab, positions=plan.positions))
            for c in cases(signature, keras_model, batch_sizes, lengths)]


def precision_hint(precision: str, problems: list[Mismatch]) -> str:
    """The precision's options that round less, when every mismatch is one of values (not of
    names, shapes or dtypes, which rounding does not cause); else nothing."""
    if problems and all(p.kind == VALUES for p in problems):
        return _PRECISION_HINTS.get(precision, "")
    return ""


_PRECISION_HINTS = {
    "int8": (" int8 options that round less: per_channel=True (CLI: --per-channel), and, for CPUs "
             "with VNNI or ARM only, reduce_range=False (CLI: --no-reduce-range); or precision='fp16'."),
    "int4": " A smaller block rounds less: block_size=16 (CLI: --block-size 16); or precision='int8'.",
}


def verify_files(keras_path, onnx_path, *, input_path=None, precision: str | None = None,
                 unsafe: bool = False, import_modules=()) -> ParityReport:
    """:func:`verify` for files: a ``.keras`` model, an ``.onnx`` model, optional ``.npy``/``.npz`` inputs.

    The ONNX file is read with the runtime's checks; ``.npz`` inputs are matched
    by input name (dict models included), a ``.npy`` goes to a model's single
    input. ``precision`` (which selects the tolerance) defaults to the one the
    file records. ``import_modules``: see :func:`~tiedonnx.converter.keras_io.load_keras_model`.
    """
    from tiedonnx.runtime.inputs import load_array_file
    from tiedonnx.runtime.model_file import read_model

    from .keras_io import load_keras_model
    from .signature import input_signature

    proto = read_model(onnx_path).proto
    if precision is None:
        from tiedonnx.runtime.graph.metadata import read_precision

        precision = read_precision(proto)
    model = load_keras_model(keras_path, unsafe=unsafe, import_modules=import_modules)
    inputs = None
    if input_path is not None:
        loaded = load_array_file(input_path)
        names = input_signature(model).names
        if isinstance(loaded, dict):
            onnx_names = [i.name for i in proto.graph.input
                          if i.name not in {t.name for t in proto.graph.initializer}]
            if not (set(names) <= set(loaded) or set(onnx_names) <= set(loaded)):
                missing = [n for n in names if n not in loaded]
                raise InputError(f"{input_path!s} lacks arrays for input(s) {missing}; it has "
                                 f"{sorted(loaded)}. Save one array per input name with np.savez.")
            inputs = dict(loaded)
        else:
            if len(names) != 1:
                raise InputError(f"The model has {len(names)} inputs {names}; a .npy holds one array. "
                                 f"Received: {str(input_path)!r}. Use an .npz with one array per input name.")
            inputs = [loaded]
    return verify(model, proto, inputs=inputs, precision=precision)
