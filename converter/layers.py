"""Tied-weight Keras layers that stay tied in every execution mode.

The layer in the original question computed ``K.transpose(tied_to.kernel)`` in
``build()``. Under TF2 eager execution that evaluates the transpose once and
keeps the resulting tensor: training then updates the encoder's variable while
the decoder keeps using a frozen copy. These layers hold a *reference* to the
encoder's variable and transpose it inside ``call()``, so every forward pass,
eager, ``tf.function`` or XLA, reads the encoder's current value.

The reference is kept in a plain holder object (``tied_base._TieRef``) instead of an
attribute holding the layer: Keras auto-tracks layer attributes, which would
make the encoder a sublayer of the decoder and list the shared kernel among the
decoder's own weights.
"""

from __future__ import annotations

import keras
from keras import ops

from .errors import TieError
from .tied_base import _TiedBase

__all__ = ["DenseTied", "Conv2DTransposeTied"]

_PACKAGE = "tiedonnx"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseTied(_TiedBase):
    """Dense layer whose kernel is the transpose of another Dense layer's kernel.

    ``y = activation(x @ transpose(tied_to.kernel) + bias)``. The kernel is not a
    weight of this layer: the model holds it once, in the tied layer, and
    training updates both uses. So ``decoder.get_weights()`` returns only the
    bias (the question's own check), ``decoder.kernel`` is read-only and always
    ``transpose(tied_to.kernel)``, and ``model.count_params()`` counts the
    kernel once. ``keras.saving.load_model`` finds this class once
    ``tiedonnx.converter`` is imported (otherwise: ``Could not locate class
    'DenseTied'``).

    Args:
        units: output size. Optional: it is always the tied layer's input size;
            when given it must match (the question's ``DenseTied(4, ...)``).
        activation: Keras activation name or callable.
        use_bias: whether the layer has its own bias vector.
        tied_to: the ``keras.layers.Dense`` layer to reuse the kernel of.
        bias_initializer, bias_regularizer, activity_regularizer, bias_constraint:
            as in ``keras.layers.Dense``.

    Raises:
        TieError: ``tied_to`` is not a Dense layer, or ``units`` contradicts it.

    Example:
        >>> encoder = keras.layers.Dense(2, activation="sigmoid")
        >>> decoder = DenseTied(4, activation="sigmoid", tied_to=encoder)
        >>> model = keras.Sequential([keras.Input((4,)), encoder, decoder])
    """

    _expected_kind = keras.layers.Dense
    _expected_label = "keras.layers.Dense layer"

    def __init__(self, units: int | None = None, activation=None, use_bias: bool = True,
                 tied_to=None, bias_initializer="zeros", bias_regularizer=None,
                 activity_regularizer=None, bias_constraint=None, **kwargs):
        super().__init__(
            tied_to=tied_to, activation=activation, use_bias=use_bias,
            bias_initializer=bias_initializer, bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer, bias_constraint=bias_constraint,
            **kwargs,
        )
        if units is not None and (isinstance(units, bool) or not isinstance(units, int) or units <= 0):
            raise TieError(f"`units` must be a positive integer or None. Received: units={units!r}.")
        self.units = units
        if self._tie.layer is not None and self._tie.layer.built:
            self._check_units(self._tie.layer.kernel.shape[0])

    def _check_units(self, tied_input_size: int) -> None:
        if self.units is not None and self.units != tied_input_size:
            raise TieError(
                f"DenseTied {self.name!r} is tied to {self._tied_name!r}, whose input size is "
                f"{tied_input_size}, so its output size must be {tied_input_size}. "
                f"Received: units={self.units}. Pass units={tied_input_size} or leave units out."
            )
        self.units = int(tied_input_size)

    def build(self, input_shape):
        # During deserialization Keras builds this layer before the graph is
        # wired, so build must work from the config alone (units is saved).
        tied = self._built_tie("DenseTied", "Call the tied layer first (put it before this one in the model).")
        if tied is not None:
            in_size, out_size = tied.kernel.shape
            self._check_units(in_size)
            if input_shape[-1] is not None and input_shape[-1] != out_size:
                raise TieError(
                    f"DenseTied {self.name!r} reuses the kernel of {tied.name!r} (shape "
                    f"{tuple(tied.kernel.shape)}), so it expects inputs with last dimension "
                    f"{out_size}. Received: input_shape={tuple(input_shape)}."
                )
        elif self.units is None:
            raise TieError(
                f"DenseTied {self.name!r} cannot be built: its tied layer {self._tied_name!r} "
                "is not resolved and `units` is unknown. Pass the layer object as tied_to."
            )
        self._add_bias(self.units)

    @property
    def kernel(self):
        """The effective kernel, ``transpose(tied_to.kernel)`` (read-only)."""
        return ops.transpose(self.tied_variable)

    def call(self, inputs):
        # Transposing here, not in build(), is what keeps the tie alive.
        outputs = ops.matmul(inputs, ops.transpose(self.tied_variable))
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2DTransposeTied(_TiedBase):
    """Transposed convolution that reuses a ``Conv2D`` layer's kernel.

    A ``Conv2D`` kernel of shape ``(kh, kw, c_in, c_out)`` is exactly the kernel a
    transposed convolution from ``c_out`` back to ``c_in`` channels expects, so
    the decoder reads the encoder's variable as it is (relation "identity").

    Args:
        tied_to: the ``keras.layers.Conv2D`` layer to reuse the kernel of.
        strides, padding: default to the tied layer's, which inverts its shape
            change (for ``padding="same"``, or ``"valid"`` with sizes that divide).
        activation, use_bias, bias_*: as in ``keras.layers.Conv2DTranspose``.

    Raises:
        TieError: ``tied_to`` is not a Conv2D layer, or it uses groups.
    """

    _expected_kind = keras.layers.Conv2D
    _expected_label = "keras.layers.Conv2D layer"

    def __init__(self, tied_to=None, strides=None, padding: str | None = None,
                 activation=None, use_bias: bool = True, bias_initializer="zeros",
                 bias_regularizer=None, activity_regularizer=None, bias_constraint=None,
                 **kwargs):
        super().__init__(
            tied_to=tied_to, activation=activation, use_bias=use_bias,
            bias_initializer=bias_initializer, bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer, bias_constraint=bias_constraint,
            **kwargs,
        )
        if padding is not None and str(padding).lower() not in ("same", "valid"):
            raise TieError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}.")
        self.strides = None if strides is None else _pair(strides, "strides")
        self.padding = None if padding is None else str(padding).lower()
        self.filters = None
        if self._tie.layer is not None:
            self._inherit(self._tie.layer)

    def _inherit(self, tied) -> None:
        if getattr(tied, "groups", 1) != 1:
            raise TieError(
                f"Conv2DTransposeTied cannot reuse a grouped convolution. Received: "
                f"{tied.name!r} with groups={tied.groups}. Use groups=1 in the encoder."
            )
        if self.strides is None:
            self.strides = tuple(tied.strides)
        if self.padding is None:
            self.padding = tied.padding
        self.data_format = tied.data_format
        self.dilation_rate = tuple(tied.dilation_rate)

    def __call__(self, inputs, *args, **kwargs):
        if self._tie.layer is None:
            self._resolve(inputs)
            self._inherit(self._tie.layer)
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape):
        tied = self._built_tie("Conv2DTransposeTied", "Call the tied layer first.")
        if tied is not None:
            self.filters = int(tied.kernel.shape[-2])
            channel_axis = -1 if tied.data_format == "channels_last" else 1
            expected = int(tied.kernel.shape[-1])
            if input_shape[channel_axis] is not None and input_shape[channel_axis] != expected:
                raise TieError(
                    f"Conv2DTransposeTied {self.name!r} reuses the kernel of {tied.name!r} "
                    f"(shape {tuple(tied.kernel.shape)}), so it expects {expected} input channels. "
                    f"Received: input_shape={tuple(input_shape)}."
                )
        elif self.filters is None:
            raise TieError(
                f"Conv2DTransposeTied {self.name!r} cannot be built: its tied layer "
                f"{self._tied_name!r} is not resolved. Pass the layer object as tied_to."
            )
        self._add_bias(self.filters)

    @property
    def kernel(self):
        """The shared kernel, read-only (a Conv2D kernel doubles as this layer's)."""
        return ops.convert_to_tensor(self.tied_variable)

    def call(self, inputs):
        outputs = ops.conv_transpose(
            inputs, self.tied_variable, strides=self.strides, padding=self.padding,
            data_format=self.data_format, dilation_rate=self.dilation_rate,
        )
        if self.bias is not None:
            shape = (1, 1, 1, -1) if self.data_format == "channels_last" else (1, -1, 1, 1)
            outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "strides": list(self.strides) if self.strides else None,
            "padding": self.padding,
            "filters": self.filters,
            "data_format": getattr(self, "data_format", None),
            "dilation_rate": list(getattr(self, "dilation_rate", (1, 1))),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        filters = config.pop("filters", None)
        data_format = config.pop("data_format", None)
        dilation = config.pop("dilation_rate", None)
        layer = cls(**config)
        layer.filters = filters
        if data_format is not None:
            layer.data_format = data_format
        if dilation is not None:
            layer.dilation_rate = tuple(dilation)
        return layer


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TieError(f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}.") from None
    if a <= 0 or b <= 0:
        raise TieError(f"`{name}` must be positive. Received: {name}={value!r}.")
    return (a, b)
