"""The shared mechanics of tiedonnx's tied layers (:mod:`.layers`).

:class:`_TiedBase` holds the tie: a reference to the encoder layer whose kernel
the tied layer reads, resolved lazily by name when a saved model is rebuilt
(:func:`_find_upstream_layer`), the shared bias and activation arguments, and
their serialization. The reference is kept in a plain holder object
(:class:`_TieRef`) so that Keras does not track the encoder as a sublayer.
"""

from __future__ import annotations

from typing import Any

import keras

from .errors import TieError


class _TieRef:
    """Untracked holder of the layer a tied layer reads its kernel from."""

    __slots__ = ("layer",)

    def __init__(self, layer: keras.layers.Layer | None = None):
        self.layer = layer


def _find_upstream_layer(inputs: Any, name: str) -> keras.layers.Layer | None:
    """Search the symbolic graph that produced ``inputs`` for a layer called ``name``.

    Used when a model is deserialized: the tied layer is known only by name
    until the decoder is called on the rebuilt graph.
    """
    seen: set[int] = set()
    stack = list(keras.tree.flatten(inputs))
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        op = history.operation
        if id(op) in seen:
            continue
        seen.add(id(op))
        if getattr(op, "name", None) == name:
            return op
        for node in getattr(op, "_inbound_nodes", []):
            stack.extend(keras.tree.flatten(node.arguments.keras_tensors))
    return None


class _TiedBase(keras.layers.Layer):
    """Shared mechanics: the tie reference, its lazy resolution and serialization."""

    _expected_kind: type = keras.layers.Layer
    _expected_label = "layer"

    def __init__(self, *, tied_to, activation=None, use_bias: bool = True,
                 bias_initializer="zeros", bias_regularizer=None, activity_regularizer=None,
                 bias_constraint=None, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self._tie = _TieRef()
        if isinstance(tied_to, keras.layers.Layer):
            self._check_kind(tied_to)
            self._tie.layer = tied_to
            self._tied_name = tied_to.name
        elif isinstance(tied_to, str) and tied_to:
            self._tied_name = tied_to
        else:
            raise TieError(
                f"`tied_to` must be a {self._expected_label} instance (or, when loading a "
                f"saved model, its name). Received: tied_to={tied_to!r}. "
                f"Pass the encoder layer, e.g. {type(self).__name__}(tied_to=encoder)."
            )
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.bias = None

    def _check_kind(self, layer):
        if not isinstance(layer, self._expected_kind):
            raise TieError(
                f"{type(self).__name__} can only be tied to a {self._expected_label}. "
                f"Received: tied_to={layer.name!r} of type {type(layer).__name__}. "
                f"Tie it to a {self._expected_label} whose kernel it should reuse."
            )

    @property
    def tied_to(self) -> keras.layers.Layer:
        """The layer whose kernel this layer reuses.

        Raises:
            TieError: the tie is known only by name and has not been resolved yet.
        """
        if self._tie.layer is None:
            raise TieError(
                f"Layer {self.name!r} is tied to {self._tied_name!r}, which has not been "
                "found yet. The tie is resolved when the layer is first called on a "
                "graph that contains that layer; check that the model has a layer "
                f"named {self._tied_name!r} upstream of {self.name!r}."
            )
        return self._tie.layer

    @property
    def tied_variable(self):
        """The shared kernel variable (owned by the tied layer)."""
        tied = self.tied_to
        if not tied.built:
            raise TieError(
                f"Layer {self.name!r} is tied to {tied.name!r}, which is not built yet, "
                "so its kernel does not exist. Call the tied layer before this one."
            )
        return tied.kernel

    def _resolve(self, inputs) -> None:
        if self._tie.layer is not None:
            return
        found = _find_upstream_layer(inputs, self._tied_name)
        if found is None:
            raise TieError(
                f"Layer {self.name!r} is tied to a layer named {self._tied_name!r}, but no "
                f"layer of that name feeds into it. Received inputs from the graph: "
                f"{[getattr(getattr(t, '_keras_history', None), 'operation', None) and t._keras_history.operation.name for t in keras.tree.flatten(inputs)]}. "
                "Make sure the tied layer is part of the model and is called before this one."
            )
        self._check_kind(found)
        self._tie.layer = found

    def __call__(self, inputs, *args, **kwargs):
        if self._tie.layer is None:
            self._resolve(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def _built_tie(self, kind: str, hint: str) -> keras.layers.Layer | None:
        """The tied layer (None while it is known only by name), refused if it is not built.

        ``kind`` names the layer class in the error, ``hint`` ends it.
        """
        tied = self._tie.layer
        if tied is not None and not tied.built:
            raise TieError(f"{kind} {self.name!r} is tied to {tied.name!r}, which is not built. {hint}")
        return tied

    def _add_bias(self, size: int) -> None:
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(size,), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
            )

    def get_config(self) -> dict:
        config = {
            "tied_to": self._tied_name,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }
        return {**super().get_config(), **config}
