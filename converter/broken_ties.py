"""Ties that already broke inside Keras: a layer computing with a *copy* of another layer's variable.

The Stack Overflow ``DenseTied`` recipe sets ``self.kernel =
transpose(tied_to.kernel)`` in ``build()``; a functional model may compute
``ops.matmul(h, ops.transpose(emb.embeddings))`` while it is being built.
Under TF2 eager execution both take the transpose *once*: the layer keeps a
constant, the value the variable had then, and training moves the variable
alone. The model still runs and exports (faithfully: two copies), and nothing
says the tie its author wrote is gone, which is the problem this project
started from.

Detection: the model traces to a function whose captured inputs are its
variables and any constant it computed outside the trace. A captured constant
that equals a variable (or a permutation of it, the transpose) is a copy
taken at build time; one that differs a little is a copy that training left
behind. Each is logged as one warning naming the layer that reads the copy,
the variable and the drift.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from .signature import InputSignature, input_signature
from .ties import _layer_names, _layer_of_node, _owner

logger = logging.getLogger(__name__)

__all__ = ["BrokenTie", "find_broken_ties", "report_broken_ties"]

# Constants with fewer elements are not looked at (biases of zeros, scalar scales).
MIN_ELEMENTS = 16
# A copy "nearly equals" its variable when ||copy - variable|| / ||variable|| is below
# this. Measured on the 8-4-8 recipe of tests/test_broken_ties.py (adam, 256 rows): the
# copy drifts to 0.037 after 2 epochs and 0.26 after 20; two unrelated glorot-initialized
# 8x4 kernels (5 seed pairs) are 1.31-1.50 apart (independent matrices: about sqrt(2)).
NEAR_COPY_RATIO = 0.7


@dataclass(frozen=True)
class BrokenTie:
    """A layer computing with a constant copy of a variable (possibly transposed)."""

    layer: str
    variable: str
    by_model: bool
    transposed: bool
    max_diff: float
    relative_diff: float

    def message(self) -> str:
        copy = f"a {'transposed ' if self.transposed else ''}copy of {self.variable!r} taken when it was built"
        if self.max_diff == 0:
            state = "it equals the variable now but will not follow it when the variable trains"
        else:
            state = f"the copy no longer follows the variable (max diff {self.max_diff:.3g})"
        who = f"model {self.layer!r} (an op outside its layers)" if self.by_model else f"layer {self.layer!r}"
        return (f"{who} uses {copy}; {state}. Use tiedonnx.converter.DenseTied (or read "
                "the variable inside call()) to keep the tie")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def find_broken_ties(model, *, concrete=None, signature: InputSignature | None = None) -> list[BrokenTie]:
    """Constants the model computes with that are copies of its own variables.

    Args:
        model: a built Keras model.
        concrete: the model's traced ``ConcreteFunction`` when the caller has one
            (export does); else the model is traced here.
        signature: the input signature to trace with (default: the model's).

    Returns:
        One :class:`BrokenTie` per (layer, copied variable).
    """
    if concrete is None:
        import tensorflow as tf

        signature = signature or input_signature(model)
        fn = tf.function(lambda *args: model(signature.pack(args), training=False),
                         input_signature=signature.tf_specs())
        concrete = fn.get_concrete_function()
    variables = {id(v): v for v in model.weights}
    values = [(v, np.asarray(v.numpy())) for v in variables.values()]
    names = _layer_names(model)
    found = []
    for inner, outer in _captured_constants(concrete):
        array = np.asarray(outer.numpy())
        match = _closest_variable(array, values)
        if match is None:
            continue
        variable, transposed, max_diff, ratio = match
        for layer in _readers(concrete.graph, inner, names) or [model.name]:
            found.append(BrokenTie(layer, _variable_name(variable), layer == model.name, transposed,
                                   max_diff, ratio))
    return found


def report_broken_ties(model, *, concrete=None, signature: InputSignature | None = None) -> list[BrokenTie]:
    """:func:`find_broken_ties`, each logged as one warning; never raises (a failed check is logged)."""
    try:
        broken = find_broken_ties(model, concrete=concrete, signature=signature)
    except Exception as exc:  # the check must not stop an export that would otherwise succeed
        logger.debug("broken-tie check skipped: %s: %s", type(exc).__name__, exc)
        return []
    for item in broken:
        logger.warning(item.message())
    return broken


def _captured_constants(concrete) -> list:
    """(internal placeholder, eager value) for captured inputs that are not variables."""
    out = []
    for outer, inner in concrete.graph.captures:
        if getattr(outer, "dtype", None) is None or outer.dtype.name == "resource":
            continue
        if not hasattr(outer, "numpy") or not outer.dtype.is_floating:
            continue
        if int(np.prod(outer.shape)) >= MIN_ELEMENTS and len(outer.shape) >= 2:
            out.append((inner, outer))
    return out


def _closest_variable(array: np.ndarray, values) -> tuple | None:
    """(variable, transposed, max abs diff, relative diff) of the variable the array copies, if any."""
    best = None
    for variable, value in values:
        if value.size != array.size or value.ndim != array.ndim or not np.issubdtype(value.dtype, np.floating):
            continue
        norm = float(np.linalg.norm(value))
        for perm in itertools.permutations(range(value.ndim)):
            moved = np.transpose(value, perm)
            if moved.shape != array.shape:
                continue
            diff = array.astype(np.float64) - moved
            ratio = float(np.linalg.norm(diff)) / norm if norm else float("inf")
            if ratio < NEAR_COPY_RATIO and (best is None or ratio < best[3]):
                best = (variable, perm != tuple(range(value.ndim)), float(np.abs(diff).max()), ratio)
    return best


def _readers(graph, placeholder, names: set[str]) -> list[str]:
    """Keras layers whose ops read ``placeholder`` (through identities and transposes)."""
    layers, todo, seen = [], [placeholder], {placeholder.name}
    while todo:
        tensor = todo.pop()
        for op in tensor.consumers():
            layer = _layer_of_node(op.name, names)
            if layer:
                layers += [layer] if layer not in layers else []
                continue
            for out in op.outputs:
                if op.type in ("Identity", "Transpose", "Cast", "ReadVariableOp") and out.name not in seen:
                    seen.add(out.name)
                    todo.append(out)
    return layers


def _variable_name(variable) -> str:
    path = getattr(variable, "path", None)
    return str(path) if path else f"{_owner(variable)}/{variable.name}"
