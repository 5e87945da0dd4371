"""Tie discovery: which layers of a Keras model share a kernel, and how."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .errors import ConversionError
from .layers import Conv2DTransposeTied, DenseTied

__all__ = ["StoredTie", "Tie", "describe_stored_ties", "find_ties", "graph_readers", "locate_ties"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tie:
    """One shared kernel and the layer that reuses it.

    Attributes:
        decoder: the layer that reads another layer's kernel.
        tied: the layer that owns the kernel (may be ``decoder`` itself, as for
            ``keras.layers.ReversibleEmbedding``).
        variable: the shared Keras variable.
        relation: how the decoder uses it: ``"transpose"`` (``x @ W.T``) or
            ``"identity"`` (the same tensor in the same layout, as a
            ``Conv2D`` kernel reused by a transposed convolution).
    """

    decoder: Any
    tied: Any
    variable: Any = field(repr=False)  # its repr prints the whole value
    relation: str = "transpose"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    def as_dict(self) -> dict:
        """A JSON-friendly description (used for ONNX metadata)."""
        return {
            "decoder": self.decoder.name,
            "tied_to": self.tied.name,
            "variable": self.variable.path,
            "shape": list(self.shape),
            "relation": self.relation,
        }


@dataclass
class StoredTie:
    """Where tf2onnx's graph holds a Keras tie's kernel: found once, by value, before retie.

    The export hands it to retie (``prefer``: keep the Keras-layout copy), to the
    tie record and to its description, which then need not match values again.

    Attributes:
        tie: the Keras tie.
        value: the kernel's value (read from Keras once).
        matches: ``(initializer, perm)`` of the converted graph's tensors equal
            to a permutation (or a faithful float16 cast) of ``value``.
        keras_layout: the first of them holding ``value`` as it is (same dtype,
            same axes), or None.
    """

    tie: Tie
    value: np.ndarray = field(repr=False)
    matches: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    keras_layout: str | None = None


def locate_ties(ties: list[Tie], proto) -> list[StoredTie]:
    """Match each tie's kernel to the initializers of tf2onnx's ``proto`` (one pass over the weights)."""
    from tiedonnx.runtime.graph.duplicates import find_permutations_of, initializer_arrays

    arrays = initializer_arrays(proto.graph)
    located = []
    for tie in ties:
        value = np.asarray(tie.variable.numpy())
        matches = find_permutations_of(value, arrays, casts=True)
        same = [n for n, perm in matches if perm == tuple(range(value.ndim)) and arrays[n].dtype == value.dtype]
        located.append(StoredTie(tie, value, matches, same[0] if same else None))
    return located


def _walk_layers(model) -> list:
    # _flatten_layers recurses into nested models and sublayers, once each.
    return list(model._flatten_layers(include_self=False, recursive=True))


def find_ties(model) -> list[Tie]:
    """Return every tie in ``model``, in layer order.

    Finds :class:`DenseTied` and :class:`Conv2DTransposeTied` layers (resolved
    ties only: call or build the model first) and Keras's own
    ``ReversibleEmbedding`` with ``tie_weights=True``.

    Args:
        model: a built Keras model (Sequential, functional or subclassed).

    Returns:
        A list of :class:`Tie`, empty when the model has none.

    Example:
        >>> [t.as_dict()["relation"] for t in find_ties(model)]  # doctest: +SKIP
        ['transpose']
    """
    ties: list[Tie] = []
    reversible = getattr(keras.layers, "ReversibleEmbedding", None)
    for layer in _walk_layers(model):
        if isinstance(layer, (DenseTied, Conv2DTransposeTied)):
            if layer._tie.layer is None or not layer._tie.layer.built:
                continue
            relation = "transpose" if isinstance(layer, DenseTied) else "identity"
            ties.append(Tie(layer, layer.tied_to, layer.tied_variable, relation))
        elif reversible is not None and isinstance(layer, reversible):
            if layer.tie_weights and layer.built:
                ties.append(Tie(layer, layer, layer.embeddings, "transpose"))
    return ties


# Ops through which a graph use still reads the stored tensor (retie's Transpose
# and Cast, tf2onnx's reshapes around a Tensordot).
_PASS_THROUGH = {"Cast", "Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze"}
# Below this many elements, equal values say nothing about which variable a
# tensor came from (a bias of zeros, a LayerNorm scale of ones).
MIN_DESCRIBED_ELEMENTS = 16


def _layer_names(model) -> set[str]:
    return {layer.name for layer in model._flatten_layers(include_self=True, recursive=True)}


def _layer_of_node(node_name: str, names: set[str]) -> str | None:
    """The deepest Keras layer in a TensorFlow op name (``lm_1/token_embedding_1/MatMul``).

    TensorFlow numbers name scopes (``token_embedding_1``) when it traces a
    layer; the number is stripped first, then the scope is tried as it is.
    """
    for scope in reversed(node_name.split("/")[:-1]):
        base = re.sub(r"_\d+$", "", scope)
        for candidate in (base, scope):
            if candidate in names:
                return candidate
    return None


def graph_readers(proto, names: list[str], layer_names: set[str], *, index=None) -> list[str]:
    """Keras layers whose ops read any of ``names`` (through transposes, casts, reshapes).

    ``index``: a :class:`~tiedonnx.runtime.graph.index.GraphIndex` of ``proto``'s graph, built
    once by a caller that asks for several names (default: built here).
    """
    from tiedonnx.runtime.graph.index import GraphIndex

    index = index or GraphIndex(proto.graph)
    todo, seen, layers = list(names), set(names), []
    while todo:
        for node in index.consumers(todo.pop()):
            if node.op_type in _PASS_THROUGH and not _layer_of_node(node.name, layer_names):
                new = [o for o in node.output if o not in seen]
                seen.update(new)
                todo += new
                continue
            layer = _layer_of_node(node.name, layer_names)
            if layer and layer not in layers:
                layers.append(layer)
    return layers


def _owner(variable) -> str:
    path = str(variable.path)
    return path.rsplit("/", 2)[-2] if "/" in path else path


def _variable_matching(model, array) -> Any | None:
    """The one Keras variable whose value (transposed or cast) is ``array``; None if none or several."""
    from tiedonnx.runtime.graph.duplicates import find_permutations_of

    if array.size < MIN_DESCRIBED_ELEMENTS:
        return None
    found, seen = [], set()
    for variable in model.weights:
        if id(variable) in seen or int(np.prod(variable.shape)) != array.size:
            continue
        seen.add(id(variable))
        value = np.asarray(variable.numpy())
        # An EinsumDense kernel (DeBERTa's query: (16, 2, 8)) is stored reshaped to 2-D ([16, 16]).
        layouts = [value] if value.shape == array.shape or value.ndim == array.ndim else [value.reshape(array.shape)]
        if any(find_permutations_of(v, {"stored": array}, casts=True) for v in layouts):
            found.append(variable)
    return found[0] if len(found) == 1 else None


def _lookups_only(index, name: str, records: dict) -> bool:
    """Whether every op reading initializer ``name`` is a row lookup (``Gather`` of its rows).

    A ``ReversibleEmbedding(tie_weights=True)`` whose reverse (logits) path a
    model never calls (an ELECTRA or T5 backbone) is one table read by lookups:
    stored once anyway, and not a tie.
    """
    record = records.get(name)
    if record is not None and record.uses:  # retie folded a copy: a second use exists
        return False
    readers = index.consumers(name)
    return bool(readers) and all(n.op_type == "Gather" and n.input[0] == name for n in readers)


def describe_stored_ties(model, proto, located: list[StoredTie]) -> dict[str, dict]:
    """Initializer name -> Keras description of each tie stored in ``proto`` (after retie).

    Ties from :func:`find_ties` were located before retie (:func:`locate_ties`):
    retie keeps their Keras-layout initializer, so its name is the answer;
    only a tie stored in another layout is matched by value again. Every other
    tie retie folded (a layer that is not ours, such as Hands-On ML's
    ``DenseTranspose`` or a model calling ``tf.matmul(h, W, transpose_b=True)``)
    is matched back to the one Keras variable with that value. ``layers`` lists
    the Keras layers whose ops read the stored tensor, from the graph's op names.

    Raises:
        ConversionError: a tie from :func:`find_ties` is not stored as-is
            (tf2onnx fused or rewrote it), so it cannot be kept.
    """
    from onnx import numpy_helper

    from tiedonnx.runtime.graph import read_ties
    from tiedonnx.runtime.graph.index import GraphIndex

    index = GraphIndex(proto.graph)
    names = _layer_names(model)
    records = {r.initializer: r for r in read_ties(proto)}
    described: dict[str, dict] = {}
    for stored in located:
        tie, name = stored.tie, _stored_name(stored, index)
        if tie.decoder is tie.tied and name is not None and _lookups_only(index, name, records):
            logger.info("%s: tie_weights is set but the model only looks rows up in %r (no output "
                        "projection reads it): not a tie", tie.decoder.name, tie.variable.path)
            continue
        if name is None:
            raise ConversionError(
                f"The tied kernel {tie.variable.path!r} (shape {tie.shape}) is not stored as-is in the "
                "converted graph (tf2onnx fused or rewrote it), so its tie cannot be kept. "
                f"Layers involved: {tie.decoder.name!r} tied to {tie.tied.name!r}.")
        described[name] = tie.as_dict()
    for name, record in records.items():
        if name in described or not record.uses or name not in index.initializers:
            continue
        variable = _variable_matching(model, numpy_helper.to_array(index.initializers[name]))
        if variable is None:
            logger.info("tie %r: no single Keras variable has its value; recorded without Keras names", name)
            continue
        owner = _owner(variable)
        readers = graph_readers(proto, [name, *(u.output for u in record.uses)], names, index=index)
        decoder = next((r for r in readers if r != owner), owner)
        described[name] = {"decoder": decoder, "tied_to": owner, "variable": str(variable.path)}
    for name, desc in described.items():
        record = records.get(name)
        uses = [u.output for u in record.uses] if record else []
        desc["layers"] = graph_readers(proto, [name, *uses], names, index=index)
    return described


def _stored_name(stored: StoredTie, index) -> str | None:
    """The initializer holding ``stored``'s kernel after retie: the Keras-layout one it kept, else
    (stored in another layout) the first initializer equal to a permutation or cast of it."""
    if stored.keras_layout in index.initializers:
        return stored.keras_layout
    from onnx import numpy_helper

    from tiedonnx.runtime.graph.duplicates import find_permutations_of

    candidates = {n for n, _ in stored.matches}  # retie keeps one of the tensors tf2onnx had
    arrays = {n: numpy_helper.to_array(i) for n, i in index.initializers.items() if n in candidates}
    matches = find_permutations_of(stored.value, arrays, casts=True)
    return matches[0][0] if matches else None
