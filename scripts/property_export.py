"""Run the random-architecture export property with many examples and report counts.

    python scripts/property_export.py --examples 100

Each example: a random tied model (depth 1-3, widths, activations, bias,
Sequential/functional) is exported; the saved file must hold each tied kernel
once, have no duplicated initializer, and match Keras within the fp32 tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.strategies import tied_architectures  # noqa: E402
from tests.test_property import check_architecture  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    args = parser.parse_args()
    seen: list[float] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(arch=tied_architectures())
        def prop(arch):
            seen.append(check_architecture(arch, Path(tmp)))

        prop()
    print(f"{len(seen)} random tied architectures exported in {time.perf_counter() - start:.0f} s: "
          f"all passed (one kernel per tie, no duplicated initializer, parity); "
          f"worst max abs diff vs Keras {max(seen):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
