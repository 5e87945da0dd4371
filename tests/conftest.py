"""Shared fixtures. Keras/TensorFlow are imported lazily so runtime-only tests stay light."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
