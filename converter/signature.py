"""A Keras model's input structure: one named tensor per leaf, and the way back.

Keras models take a single tensor, a list, a dict (KerasHub language models:
``{"token_ids", "padding_mask"}``) or any nesting of these. ONNX takes a flat
list of named inputs. :class:`InputSignature` is the one mapping between the
two: ``specs`` are the ONNX inputs, in the order the model declares them, and
:meth:`InputSignature.pack` rebuilds the structure the model is called with.

Names: the Keras input's own name (``keras.Input(name=...)``, which Keras
requires to match a dict key), else the key path (``x/0``), else
``input_<i>``; each ONNX input carries that name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConversionError, InputError

logger = logging.getLogger(__name__)

__all__ = ["BATCH_AXIS", "InputSignature", "InputSpec", "axis_names", "declared_output_names", "input_signature",
           "open_axis_name", "output_structure_names"]

# TensorFlow op names (tf2onnx turns them into ONNX input names) allow these only.
_TF_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")

BATCH_AXIS = "batch"
# Inputs that are one value per token: their axis 1 is the sequence, the same for
# all of them (KerasHub: token_ids with padding_mask, segment_ids; Hugging Face
# style names too). A prefix keeps two sequences apart: encoder_token_ids and
# encoder_padding_mask share "encoder_sequence", decoder_* share "decoder_sequence".
_PER_TOKEN = re.compile(r"^(?P<prefix>.*?)(token_ids|padding_mask|segment_ids|input_ids|"
                        r"attention_mask|token_type_ids|position_ids)$")


@dataclass(frozen=True)
class InputSpec:
    """One ONNX input: name, shape (batch ``None``, other dynamic axes ``None``) and dtype.

    ``axes``: names for the open axes when the caller declared them
    (:mod:`.input_specs`); None lets :func:`axis_names` choose.
    """

    name: str
    shape: tuple
    dtype: str
    axes: tuple | None = None

    @property
    def dynamic_axes(self) -> list[int]:
        """Non-batch axes whose size is left open (a sequence length, for language models)."""
        return [i for i, d in enumerate(self.shape) if d is None and i > 0]


@dataclass(frozen=True)
class InputSignature:
    """The model's input structure with leaves replaced by indices into ``specs``.

    ``inferred``: the specs come from a build config (a subclassed model that
    declares no ``keras.Input``): shapes of its first call, dtypes assumed float32.
    """

    specs: tuple[InputSpec, ...]
    structure: Any
    inferred: bool = False

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def pack(self, values: Mapping[str, Any] | Sequence) -> Any:
        """The structure the model is called with, from arrays by name or in ``specs`` order.

        Raises:
            InputError: an input is missing (the message names what was given).
        """
        if isinstance(values, Mapping):
            missing = [n for n in self.names if n not in values]
            if missing:
                raise InputError(f"Missing input(s) {missing}. Received: {sorted(values)}. "
                                 f"The model takes {self.names}.")
            flat = [values[n] for n in self.names]
        else:
            flat = list(values)
            if len(flat) != len(self.specs):
                raise InputError(f"The model takes {len(self.specs)} input(s) {self.names}; "
                                 f"received {len(flat)}. Pass one array per input.")
        return _map_leaves(self.structure, lambda i: flat[i])

    def tf_specs(self) -> list:
        """One ``tf.TensorSpec`` per input, named as the ONNX input."""
        import tensorflow as tf

        return [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in self.specs]

    def zeros(self) -> Any:
        """A structure of zero arrays (open axes of size 1), to probe the model."""
        return self.pack([np.zeros(tuple(1 if d is None else d for d in s.shape), s.dtype)
                          for s in self.specs])


def _leaves(structure, path=()) -> list[tuple[tuple, Any]]:
    """(key path, leaf) in declared order: dict insertion order, then list order."""
    if isinstance(structure, Mapping):
        return [x for k, v in structure.items() for x in _leaves(v, (*path, str(k)))]
    if isinstance(structure, (list, tuple)):
        return [x for i, v in enumerate(structure) for x in _leaves(v, (*path, str(i)))]
    return [(path, structure)]


def _map_leaves(structure, fn):
    """``structure`` with each leaf (an index) replaced by ``fn(index)``."""
    if isinstance(structure, Mapping):
        return {k: _map_leaves(v, fn) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_map_leaves(v, fn) for v in structure)
    return fn(structure)


def _is_shape(value) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _keras_structure(model):
    """The model's input structure of KerasTensors, or of shapes from its build config."""
    struct = None
    try:
        struct = model.input  # functional models: the structure exactly as declared
    except (AttributeError, ValueError):
        try:
            inputs = list(model.inputs or [])
            struct = inputs[0] if len(inputs) == 1 else (inputs or None)
        except (AttributeError, ValueError):
            struct = None
    if struct is not None:
        return struct, True
    config = model.get_build_config() if hasattr(model, "get_build_config") else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        raise ConversionError(
            f"Cannot tell the inputs of model {model.name!r}: it has no keras.Input and has not "
            f"been called. Received build config: {config!r}. Call the model on a batch once "
            "(or give it a keras.Input) before exporting.")
    return _shape_structure(shape), False


@dataclass(frozen=True)
class _ShapeLeaf:
    """A shape from a build config: a leaf, not a tuple to walk into."""

    shape: tuple


def _shape_structure(shape):
    if _is_shape(shape):
        return _ShapeLeaf(tuple(shape))
    if isinstance(shape, Mapping):
        return {k: _shape_structure(v) for k, v in shape.items()}
    return [_shape_structure(v) for v in shape]


def _leaf_spec(leaf, from_tensors: bool) -> tuple[str | None, tuple, str]:
    if from_tensors:
        return str(leaf.name), (None, *leaf.shape[1:]), str(leaf.dtype)
    # A subclassed model's build config records shapes only; Keras builds it with floats.
    return None, (None, *leaf.shape[1:]), "float32"


def _names(tensor_names: list[str | None], paths: list[tuple]) -> list[str]:
    """Keras input names when unique and usable, else key paths, else ``input_<i>``."""
    for candidate in (tensor_names, ["/".join(p) for p in paths]):
        if all(candidate) and len(set(candidate)) == len(candidate) \
                and all(_TF_NAME.match(n) for n in candidate):
            return list(candidate)
    if len(paths) == 1:
        return ["input"]
    return [f"input_{i}" for i in range(len(paths))]


def open_axis_name(value: str, axis: int) -> str:
    """``<value>_axis<i>``, with characters other than letters, digits and ``_`` as ``_``."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', value)}_axis{axis}"


def axis_names(specs: Sequence[InputSpec]) -> dict[str, list[str | None]]:
    """Symbolic names for the open axes of each input (``None`` for a fixed axis).

    Axis 0 is :data:`BATCH_AXIS`. Axis 1 of a rank-2 per-token input
    (``token_ids``, ``padding_mask``...: ``[batch, tokens]``) is
    ``<prefix>sequence``, shared by the inputs with that prefix, so a runtime
    and a reader see that they go together (a rank-3 ``attention_mask`` is not
    per token: its axes get their own names). Any other open
    axis ``i`` of input ``x`` is ``x_axis<i>``: Keras does not say whether two
    inputs share it, and a shared name would claim they do.
    """
    names = {}
    for spec in specs:
        per_token = _PER_TOKEN.match(spec.name) if len(spec.shape) == 2 else None
        axes: list[str | None] = []
        for i, dim in enumerate(spec.shape):
            if dim is not None:
                axes.append(None)
            elif spec.axes and spec.axes[i]:
                axes.append(spec.axes[i])
            elif i == 0:
                axes.append(BATCH_AXIS)
            elif i == 1 and per_token:
                axes.append(f"{per_token['prefix']}sequence")
            else:
                axes.append(open_axis_name(spec.name, i))
        names[spec.name] = axes
    return names


def input_signature(model, input_spec=None) -> InputSignature:
    """The ONNX inputs of ``model`` and the structure it is called with.

    Args:
        model: a built Keras model.
        input_spec: the caller's declaration of the inputs, one ``NAME:DTYPE:AXES``
            (or :class:`InputSpec`) per input (see :mod:`.input_specs`); replaces
            what the model declares or what its build config implies.

    Raises:
        ConversionError: the model declares no inputs and was never called.
        UsageError: a malformed ``input_spec``, or not one per input.
    """
    from .input_specs import apply_input_spec, spec_structure

    try:
        struct, from_tensors = _keras_structure(model)
    except ConversionError:
        if input_spec is None:
            raise
        return spec_structure(input_spec)  # never called: the declared inputs are all there is
    leaves = _leaves(struct)
    raw = [_leaf_spec(leaf, from_tensors) for _, leaf in leaves]
    names = _names([r[0] for r in raw], [p for p, _ in leaves])
    specs = tuple(InputSpec(n, shape, dtype) for n, (_, shape, dtype) in zip(names, raw))
    counter = iter(range(len(leaves)))
    indexed = _map_leaves(struct, lambda _leaf: next(counter))
    signature = InputSignature(specs, indexed, inferred=not from_tensors)
    if input_spec is None:
        return signature
    return apply_input_spec(signature, input_spec)


def output_structure_names(model, outputs) -> list[str]:
    """ONNX output names for the model's (flattened) ``outputs``.

    Dict outputs are named by their keys (``keras.tree.flatten`` order, so
    names and flattened values pair up); a KerasHub language model's one output
    ``logits``; others by ``model.output_names``
    when those are unique; else ``output`` / ``output_<i>``.
    """
    import keras

    flat = keras.tree.flatten(outputs)
    count = len(flat)
    if isinstance(outputs, Mapping):
        names = ["/".join(str(k) for k in path) for path, _ in keras.tree.flatten_with_path(outputs)]
        if len(set(names)) == count:
            return names
    return declared_output_names(model, count)


# KerasHub language-model tasks: their one output is the vocabulary logits, which Keras
# names after the layer computing it (the tied ``token_embedding``, ``mlm_head``).
_LM_TASKS = ("CausalLM", "MaskedLM", "Seq2SeqLM")
LOGITS = "logits"


def _is_keras_hub_lm(model) -> bool:
    return any(c.__name__ in _LM_TASKS and c.__module__.startswith("keras_hub") for c in type(model).__mro__)


def declared_output_names(model, count: int) -> list[str]:
    """``logits`` for a KerasHub language model's one output; else ``model.output_names`` when
    there are ``count`` of them and they are unique; else ``output`` / ``output_<i>``."""
    if count == 1 and _is_keras_hub_lm(model):
        return [LOGITS]
    try:
        names = [str(n) for n in (getattr(model, "output_names", None) or [])]
    except (AttributeError, ValueError):
        names = []
    if len(names) == count and len(set(names)) == count and all(names):
        return names
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
