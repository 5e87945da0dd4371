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

import logging
from dataclasses import dataclass

import numpy as np

from .errors import ConversionError

logger = logging.getLogger(__name__)

# Defined beside the CLI's other choices (see tiedonnx.runtime.options).
from tiedonnx.runtime.options import DEFAULT_OPSET, SUPPORTED_OPSETS  # noqa: E402


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple  # batch dimension is None
    dtype: str


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
    """The model's inputs: names, shapes (batch ``None``) and dtypes."""
    tensors = None
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError):
        tensors = None
    if tensors:
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            names = [f"input_{i}" for i in range(len(tensors))]
        return [InputSpec(n, (None, *t.shape[1:]), str(t.dtype)) for n, t in zip(names, tensors)]
    config = model.get_build_config() if hasattr(model, "get_build_config") else None
    shape = (config or {}).get("input_shape")
    if shape is None or (isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple, dict))):
        raise ConversionError(
            f"Cannot tell the input shape of model {model.name!r}: it has no Input and records one "
            f"input shape only after it is called. Received build config: {config!r}. Call the model "
            "on a batch once (or give it a keras.Input) before exporting."
        )
    return [InputSpec("input", (None, *tuple(shape)[1:]), "float32")]


def output_names(model, count: int) -> list[str]:
    try:
        names = list(getattr(model, "output_names", None) or [])
    except (AttributeError, ValueError):
        names = []
    if len(names) == count and len(set(names)) == count and all(names):
        return [str(n) for n in names]
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def keras_to_onnx(model, *, opset: int = DEFAULT_OPSET):
    """Convert a built Keras model to an ONNX ``ModelProto`` with tf2onnx.

    Raises:
        ConversionError: tf2onnx failed or left ops it cannot map.
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    specs = input_specs(model)
    tf_specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in specs]
    probe = model(*[_zeros(s) for s in specs]) if len(specs) == 1 else model([_zeros(s) for s in specs])
    names = output_names(model, len(keras.tree.flatten(probe)))

    def call(*args):
        outputs = model(args[0] if len(args) == 1 else list(args), training=False)
        return dict(zip(names, keras.tree.flatten(outputs)))

    fn = tf.function(call, input_signature=tf_specs)
    try:
        proto, _ = tf2onnx.convert.from_function(
            fn, input_signature=tf_specs, opset=opset, custom_op_handlers=CUSTOM_HANDLERS,
        )
    except Exception as exc:
        raise ConversionError(
            f"tf2onnx could not convert model {model.name!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:400] if str(exc) else ''}"
        ) from exc
    import onnx

    # tf2onnx logs unmapped TF ops and leaves them in the graph under their TF names.
    bad = [n.op_type for n in proto.graph.node
           if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if bad:
        raise ConversionError(
            f"tf2onnx left TensorFlow ops it cannot map in model {model.name!r}: {sorted(set(bad))}. "
            "Replace those layers or activations; supported Keras activations are listed in the README."
        )
    return proto


def _zeros(spec: InputSpec):
    shape = tuple(1 if d is None else d for d in spec.shape)
    return np.zeros(shape, dtype=spec.dtype)
