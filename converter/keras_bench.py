"""The Keras side of ``tiedonnx bench --keras`` (:func:`tiedonnx.runtime.bench.bench_model`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiedonnx.runtime.timing import timed

from .keras_io import load_keras_model
from .tf_convert import check_numeric_inputs, input_specs


class KerasTimer:
    """The Keras side of ``tiedonnx bench --keras``: a compiled call and ``predict``, timed."""

    def __init__(self, keras_path):
        import tensorflow as tf

        self._tf = tf
        # Same safe loading as export/verify: safe mode plus the config scan.
        self.model = load_keras_model(keras_path)
        check_numeric_inputs(self.model, input_specs(self.model))  # string inputs: one-line error
        self._call = tf.function(lambda x: self.model(x, training=False))

    def _arg(self, feeds):
        return next(iter(feeds.values())) if len(feeds) == 1 else feeds

    def _numpy(self, value):
        return self._tf.nest.map_structure(lambda t: np.asarray(t), value)

    def timers(self, feeds, *, min_time: float) -> dict[str, Callable[[], float]]:
        """The compiled call and ``predict``, each a timer for :func:`tiedonnx.runtime.timing.interleave`."""
        x = self._arg(feeds)
        batch = next(iter(feeds.values())).shape[0]
        return {"keras call": timed(lambda: self._numpy(self._call(x)), min_time=min_time),
                "keras predict": timed(lambda: self.model.predict(x, batch_size=batch, verbose=0),
                                       min_time=min_time, min_calls=1)}

    def max_abs_diff(self, feeds, outputs: dict[str, np.ndarray]) -> float:
        ref = self._tf.nest.flatten(self._numpy(self._call(self._arg(feeds))))
        ours = list(outputs.values())
        return max(float(np.max(np.abs(np.asarray(r) - o))) for r, o in zip(ref, ours))
