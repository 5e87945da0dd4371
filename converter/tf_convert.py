"""Keras model -> ONNX through tf2onnx, with an explicit input signature.

``tf2onnx.convert.from_keras`` fails on Keras 3 ``Sequential`` models
(``KeyError: 'keras_tensor_...'``), so the model is wrapped in a
``tf.function`` with one ``TensorSpec`` per input (batch dimension ``None``)
and converted with ``from_function``. Outputs are returned as a dict so the
ONNX outputs carry the Keras output names.

tf2onnx cannot convert two TensorFlow ops that standard Keras 3 activations
emit (measured with tf2onnx 1.17 / TF 2.21): ``Expm1`` (``celu``) and
``Erfc`` (exact ``gelu``). :data:`CUSTOM_HANDLERS` maps them to ONNX ops for
each conversion, without touching tf2onnx's global registry.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from ._tf2onnx_large import LARGE_MODEL_BYTES, large_model_conversion
from .errors import ConversionError
from .signature import (BATCH_AXIS, InputSignature, InputSpec, axis_names,  # noqa: F401
                        declared_output_names, input_signature, open_axis_name, output_structure_names)

logger = logging.getLogger(__name__)

# Defined beside the CLI's other choices (see tiedonnx.runtime.options).
from tiedonnx.runtime.options import DEFAULT_OPSET, SUPPORTED_OPSETS  # noqa: E402,F401  (re-exported)


def _unary_then(onnx_op: str, follow: str, const_first: bool):
    """Handler: turn the TF node into ``onnx_op`` and apply ``follow`` with the constant 1."""

    def handler(ctx, node, name, args):
        from tf2onnx import utils

        node.type = onnx_op
        out = node.output[0]
        dtype = ctx.get_dtype(out)
        one = ctx.make_const(utils.make_name(f"{name}_one"),
                             np.array(1, dtype=utils.map_onnx_to_numpy_type(dtype)))
        inputs = [one.output[0], out] if const_first else [out, one.output[0]]
        new = ctx.insert_new_node_on_output(follow, out, inputs=inputs,
                                            name=utils.make_name(f"{name}_{follow}"))
        ctx.set_dtype(new.output[0], dtype)
        ctx.copy_shape(out, new.output[0])

    return handler


# expm1(x) = exp(x) - 1; erfc(x) = 1 - erf(x).
CUSTOM_HANDLERS = {
    "Expm1": (_unary_then("Exp", "Sub", const_first=False), []),
    "Erfc": (_unary_then("Erf", "Sub", const_first=True), []),
}


def input_specs(model) -> list[InputSpec]:
    """The model's ONNX inputs, flattened from any input structure (see :mod:`.signature`)."""
    return check_numeric_inputs(model, list(input_signature(model).specs))


def check_numeric_inputs(model, specs: list[InputSpec]) -> list[InputSpec]:
    """Return ``specs``; refuse inputs numpy cannot hold as numbers (a ``string`` InputLayer)."""
    bad = []
    for spec in specs:
        try:
            numeric = np.dtype(spec.dtype).kind in "biuf"
        except TypeError:  # "string" and other names numpy does not know
            numeric = False
        if not numeric:
            bad.append(f"{spec.name!r} ({spec.dtype})")
    if bad:
        raise ConversionError(
            f"Model {model.name!r} has input(s) of a non-numeric dtype: {', '.join(bad)}. tiedonnx "
            "exports and checks models with numeric inputs only; move text preprocessing (e.g. "
            "StringLookup, TextVectorization) out of the model and feed it token ids."
        )
    return specs


def output_names(model, count: int) -> list[str]:
    """ONNX output names for a model with ``count`` outputs (no dict outputs; see
    :func:`~tiedonnx.converter.signature.output_structure_names`)."""
    return declared_output_names(model, count)


def _model_outputs(model, signature: InputSignature):
    """The model's output structure: declared (functional) or from one probe call."""
    try:
        outputs = model.output
    except (AttributeError, ValueError):
        outputs = None
    return outputs if outputs is not None else model(signature.zeros(), training=False)


def keras_to_onnx(model, *, opset: int = DEFAULT_OPSET, input_spec=None):
    """Convert a built Keras model to an ONNX ``ModelProto`` with tf2onnx.

    Any input structure (single tensor, list, dict, nested) becomes one named
    ONNX input per leaf (:func:`~tiedonnx.converter.signature.input_signature`),
    and constants that TensorFlow captured from outside the traced function
    are stored as initializers, so the file's inputs are exactly the model's.
    ``input_spec`` declares the inputs instead (:mod:`.input_specs`); a model
    that declares none gets a warning saying what was inferred.

    Raises:
        ConversionError: tf2onnx failed or left ops it cannot map.
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    signature = input_signature(model, input_spec)
    if signature.inferred and input_spec is None:
        from .input_specs import describe_inferred

        logger.warning(describe_inferred(model, signature))
    check_numeric_inputs(model, list(signature.specs))
    names = output_structure_names(model, _model_outputs(model, signature))

    def call(*args):
        outputs = model(signature.pack(args), training=False)
        return dict(zip(names, keras.tree.flatten(outputs)))

    tf_specs = signature.tf_specs()
    fn = tf.function(call, input_signature=tf_specs)
    try:
        concrete = fn.get_concrete_function()
        large = weight_bytes(model) > LARGE_MODEL_BYTES
        with large_model_conversion() if large else contextlib.nullcontext():
            proto, _ = tf2onnx.convert.from_function(
                fn, input_signature=tf_specs, opset=opset, custom_op_handlers=CUSTOM_HANDLERS,
            )
    except Exception as exc:
        raise ConversionError(
            f"tf2onnx could not convert model {model.name!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:400] if str(exc) else ''}"
        ) from exc
    _check_ops(proto, model.name)
    fold_captured_inputs(proto, concrete, keep=signature.names)
    from .broken_ties import report_broken_ties

    report_broken_ties(model, concrete=concrete)  # a tie the author wrote that Keras already broke
    name_dynamic_axes(proto, model, signature, names)
    return proto


# Sizes given to the open axes when probing which output axis follows which input
# axis: primes, two rounds, so an output axis matches a name only if it follows it
# in both (a fixed size such as a vocabulary of 5 cannot match twice).
_PROBE_SIZES = ((3, 5, 7, 11, 13), (17, 19, 23, 29, 31))


def name_dynamic_axes(proto, model, signature: InputSignature, output_names: list[str]) -> dict[str, list]:
    """Replace tf2onnx's ``unk__N`` axis names with :func:`~.signature.axis_names` (in place).

    Inputs get their names directly. An output axis left open gets the name of
    the input axis it follows, found by asking Keras for the output shapes
    (``compute_output_spec``, no computation) with a distinct size per name;
    one it does not follow gets ``<output>_axis<i>``.

    Returns:
        ONNX value name -> the names set on its axes (``None`` for fixed axes).
    """
    by_input = axis_names(signature.specs)
    follows = _output_axis_names(model, signature, by_input, output_names)
    done = {}
    for value in proto.graph.input:
        if value.name in by_input:
            done[value.name] = _set_dim_params(value, by_input[value.name])
    for value in proto.graph.output:
        rank = len(value.type.tensor_type.shape.dim)
        probed = value.name in follows  # else: assume axis 0 is the batch, as tf2onnx's graph says
        found = follows.get(value.name) or [None] * rank
        wanted = [found[i] if i < len(found) and found[i] else
                  (BATCH_AXIS if i == 0 and not probed else open_axis_name(value.name, i))
                  for i in range(rank)]
        done[value.name] = _set_dim_params(value, wanted)
    logger.debug("axis names: %s", done)
    return done


def _set_dim_params(value, wanted: list) -> list:
    """Name each open (not fixed) axis of ``value``; fixed sizes are kept."""
    dims = value.type.tensor_type.shape.dim
    named = []
    for dim, name in zip(dims, wanted):
        if dim.HasField("dim_value") or not name:
            named.append(None)
            continue
        dim.dim_param = name
        named.append(name)
    return named


def _output_axis_names(model, signature: InputSignature, by_input: dict, output_names: list[str]) -> dict:
    """Output name -> per axis, the input axis name whose size it follows in every probe (else None)."""
    import keras

    distinct = sorted({n for axes in by_input.values() for n in axes if n})
    if not distinct or len(distinct) > len(_PROBE_SIZES[0]):
        return {}
    found: dict[str, list] | None = None
    for sizes in _PROBE_SIZES:
        size_of = dict(zip(distinct, sizes))
        probe = [keras.KerasTensor(tuple(size_of[n] if n else d for n, d in zip(by_input[s.name], s.shape)),
                                   dtype=s.dtype) for s in signature.specs]
        try:
            outputs = keras.tree.flatten(model.compute_output_spec(signature.pack(probe)))
        except Exception as exc:  # a model Keras cannot trace symbolically: names stay per output
            logger.debug("output axis names not probed: %s: %s", type(exc).__name__, exc)
            return {}
        name_of = {v: k for k, v in size_of.items()}
        round_names = {name: [name_of.get(d) for d in out.shape] for name, out in zip(output_names, outputs)}
        found = round_names if found is None else {
            k: [a if a == b else None for a, b in zip(v, round_names.get(k, []))] for k, v in found.items()}
    return found or {}


def weight_bytes(model) -> int:
    """Bytes of the model's variables (each counted once)."""
    seen = {id(v): v for v in model.weights}
    return sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in seen.values())


def _check_ops(proto, model_name: str) -> None:
    import onnx

    # tf2onnx logs unmapped TF ops and leaves them in the graph under their TF names.
    bad = [n.op_type for n in proto.graph.node
           if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if bad:
        raise ConversionError(
            f"tf2onnx left TensorFlow ops it cannot map in model {model_name!r}: {sorted(set(bad))}. "
            "Replace those layers or activations; supported Keras activations are listed in the README."
        )


def captured_values(concrete) -> dict:
    """The concrete function's captured values by the name of the graph tensor standing for each.

    Read through ``FuncGraph.captures`` (public: ``(external value, internal
    placeholder)`` pairs), not ``internal_captures``.

    Raises:
        ConversionError: this TensorFlow's FuncGraph has no usable ``captures``.
    """
    try:
        return {internal.name: value for value, internal in concrete.graph.captures}
    except (AttributeError, TypeError, ValueError) as exc:
        import tensorflow as tf

        raise ConversionError(
            f"TensorFlow {tf.__version__}'s FuncGraph.captures is not a list of (value, placeholder) "
            f"pairs ({type(exc).__name__}: {exc}); tiedonnx reads captured constants through it. "
            "Install a TensorFlow from 2.18 to 2.21, or report this version.") from None


def fold_captured_inputs(proto, concrete, *, keep: list[str]) -> list[str]:
    """Store as initializers the graph inputs that are constants TensorFlow captured (in place).

    tf2onnx freezes captured *variables* but leaves a captured eager tensor
    (Gemma's ``sqrt(hidden_dim)`` scale, computed when the functional model
    was built) as a graph input, which a caller would have to feed. Its value
    is known: it is the concrete function's captured input.

    Returns:
        The names folded (logged).

    Raises:
        ConversionError: a graph input is neither the model's nor a captured constant.
    """
    from onnx import numpy_helper

    from tiedonnx.runtime.graph.edit import replace_repeated

    initialized = {i.name for i in proto.graph.initializer}
    extra = [i.name for i in proto.graph.input if i.name not in keep and i.name not in initialized]
    captured = captured_values(concrete) if extra else {}
    unknown = [n for n in extra if n not in captured or captured[n].dtype.name == "resource"]
    if unknown:
        raise ConversionError(
            f"tf2onnx left graph input(s) {unknown} that the Keras model does not take "
            f"(its inputs: {keep}) and that are not captured constants. Received graph inputs: "
            f"{[i.name for i in proto.graph.input]}. Please report this model.")
    for name in extra:
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(captured[name].numpy()), name))
        logger.info("captured constant %s (shape %s) stored as an initializer, not a graph input",
                    name, tuple(captured[name].shape))
    if extra:
        replace_repeated(proto.graph.input, [i for i in proto.graph.input if i.name not in extra])
    return extra
