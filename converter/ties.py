"""Tie discovery: which layers of a Keras model share a kernel, and how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from .layers import Conv2DTransposeTied, DenseTied

__all__ = ["Tie", "find_ties"]


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
    variable: Any
    relation: str

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
