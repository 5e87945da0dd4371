"""Property: any random tied architecture exports with one kernel per tie and fp32 parity.

CI runs a few examples; ``python scripts/property_export.py --examples N`` runs more.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tiedonnx.converter import find_ties  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402

from .strategies import build, tied_architectures  # noqa: E402
from .test_export import _assert_tied_file, _independent_parity  # noqa: E402

CI_EXAMPLES = 6


def check_architecture(arch, folder) -> float:
    """Export one architecture; assert the invariant and parity; return the max abs diff."""
    model = build(arch)
    path = folder / f"arch_{arch['seed']}_{len(arch['widths'])}.onnx"
    report = export(model, path, force=True)
    _assert_tied_file(path, model)
    assert len(report.ties) == len(find_ties(model)) == len(arch["widths"]) - 1
    return float(_independent_parity(path, model, batch=7))


@settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(arch=tied_architectures())
def test_random_tied_architectures(arch, tmp_path):
    assert np.isfinite(check_architecture(arch, tmp_path))
