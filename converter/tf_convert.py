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
from .signature import (InputSignature, InputSpec, declared_output_names, input_signature,  # noqa: F401
                        output_structure_names)

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


def keras_to_onnx(model, *, opset: int = DEFAULT_OPSET):
    """Convert a built Keras model to an ONNX ``ModelProto`` with tf2onnx.

    Any input structure (single tensor, list, dict, nested) becomes one named
    ONNX input per leaf (:func:`~tiedonnx.converter.signature.input_signature`),
    and constants that TensorFlow captured from outside the traced function
    are stored as initializers, so the file's inputs are exactly the model's.

    Raises:
        ConversionError: tf2onnx failed or left ops it cannot map.
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    signature = input_signature(model)
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
    return proto


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

    captured = {t.name: v for t, v in zip(concrete.graph.internal_captures, concrete.captured_inputs)}
    initialized = {i.name for i in proto.graph.initializer}
    extra = [i.name for i in proto.graph.input if i.name not in keep and i.name not in initialized]
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
