"""One line naming the machine a benchmark ran on: CPU, cores and the flags that change results.

Every bench script prints :func:`describe` first (STYLE: every number names its
machine). Flags: AVX2, AVX-512, VNNI (integer dot products: int8 speed), BF16,
AMX. Scripts import it as ``from machine import describe`` (scripts/ is on
``sys.path`` when a script runs).
"""

from __future__ import annotations

import os
import platform

_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI",
          "avx_vnni": "AVX-VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(line.split(":", 1)[1].split() for line in fh if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [name for flag, name in _FLAGS.items() if flag in flags]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def describe() -> str:
    """E.g. ``AMD EPYC, 2 cores (AVX2 AVX-512 AVX512-VNNI BF16); Python 3.11.7; onnxruntime 1.32.0``."""
    try:
        import onnxruntime

        ort = f"; onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    flags = " ".join(cpu_flags()) or "no AVX2"
    return (f"{cpu_model()}, {os.cpu_count()} cores ({flags}); "
            f"Python {platform.python_version()}{ort}")
