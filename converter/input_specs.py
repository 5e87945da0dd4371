"""Inputs declared by the caller: ``token_ids:int32:batch,sequence``.

A subclassed ``keras.Model`` without ``keras.Input`` records only the shapes of
its first call (Keras builds it with floats): called on ids of shape ``(2, 5)``
it would export as ``float32 [batch, 5]``, taking neither integer ids nor other
lengths. Export says what it inferred (:func:`describe_inferred`); the caller
declares the truth with ``input_spec=`` (Python) or ``--input-spec`` (CLI),
one ``NAME:DTYPE:AXES`` per input, in the order the model takes them:

- ``AXES`` is a comma-separated list, one entry per axis: an integer is a
  fixed size, a name is an open axis (its ONNX ``dim_param``).
- axis 0 is the batch and must be open (parity runs batch sizes 1, 3 and 64).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .errors import UsageError
from .signature import InputSignature, InputSpec

__all__ = ["EXAMPLE", "apply_input_spec", "describe_inferred", "parse_input_spec", "spec_structure"]

EXAMPLE = "token_ids:int32:batch,sequence"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:DTYPE:AXES`` -> an :class:`InputSpec` (open axes ``None``, their names in ``axes``).

    Raises:
        UsageError: the text is not of that form (the message says which part and why).
    """
    parts = str(text).split(":")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"An input spec is NAME:DTYPE:AXES. Received: {text!r}. Example: {EXAMPLE!r}.")
    name, dtype, axes_text = parts
    if not _NAME.match(name):
        raise UsageError(f"Input name {name!r} in {text!r} must start with a letter and hold letters, digits, "
                         f"'_' or '.'. Example: {EXAMPLE!r}.")
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        kind = ""
    if kind not in "biuf" or dtype in ("object", "O"):
        raise UsageError(f"Unknown or non-numeric dtype {dtype!r} in {text!r}. Use a numpy name such as "
                         "int32, int64, float32 or bool.")
    shape, names = [], []
    for axis in axes_text.split(","):
        if axis.isdigit() and int(axis) > 0:
            shape.append(int(axis))
            names.append(None)
        elif _AXIS.match(axis):
            shape.append(None)
            names.append(axis)
        else:
            raise UsageError(f"Axis {axis!r} in {text!r} is neither a positive size nor a name. "
                             f"Example: {EXAMPLE!r}.")
    if shape[0] is not None:
        raise UsageError(f"Axis 0 of {text!r} is the batch and must be a name (open), not {shape[0]}. "
                         f"Example: {EXAMPLE!r}.")
    return InputSpec(name, tuple(shape), np.dtype(dtype).name, axes=tuple(names))


def _specs(input_spec) -> list[InputSpec]:
    items = [input_spec] if isinstance(input_spec, (str, InputSpec)) else list(input_spec)
    specs = [s if isinstance(s, InputSpec) else parse_input_spec(s) for s in items]
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise UsageError(f"input_spec needs one entry per input, each name once. Received: {names}.")
    return specs


def apply_input_spec(signature: InputSignature, input_spec: str | InputSpec | Sequence) -> InputSignature:
    """``signature`` with its leaves declared by ``input_spec`` (same structure, same count).

    Raises:
        UsageError: a malformed spec, or not one spec per model input.
    """
    specs = _specs(input_spec)
    if len(specs) != len(signature.specs):
        raise UsageError(
            f"The model takes {len(signature.specs)} input(s) {signature.names}; input_spec declares "
            f"{len(specs)}: {[s.name for s in specs]}. Give one NAME:DTYPE:AXES per input, in order.")
    return InputSignature(tuple(specs), signature.structure)


def spec_structure(input_spec) -> InputSignature:
    """The signature of a model never called: one input as a tensor, several as a list."""
    specs = _specs(input_spec)
    return InputSignature(tuple(specs), 0 if len(specs) == 1 else list(range(len(specs))))


def describe_inferred(model, signature: InputSignature) -> str:
    """One line: the inputs inferred for a model that declares none, and how to declare them."""
    def axes(spec: InputSpec) -> str:
        return ", ".join("batch" if i == 0 else str(d) if d else "?" for i, d in enumerate(spec.shape))

    shown = ", ".join(f"{s.name} {s.dtype} [{axes(s)}]" for s in signature.specs)
    example = " ".join(f"--input-spec {s.name}:int32:batch,sequence" for s in signature.specs)
    return (f"model {model.name!r} declares no keras.Input; its inputs were inferred from the first call "
            f"it was built with: {shown} (Keras records shapes only, not dtypes). If it takes other "
            f"dtypes or lengths, declare them: input_spec=[...] in Python, e.g. {example} on the CLI")
