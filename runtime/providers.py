"""Execution providers: the shorthand/list normalization and the CPU probes that decide them.

Example:
    >>> from tiedonnx.runtime.providers import resolve_providers
    >>> resolve_providers("cpu", available=["CPUExecutionProvider"])
    (['CPUExecutionProvider'], ['CPUExecutionProvider'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnxruntime as ort

from .errors import ProviderError, UsageError
from .options import PROVIDER_CHOICES

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
# Shorthand -> (providers in priority order, the ones that must end up active).
# CPU stays last for "cuda"/"tensorrt": onnxruntime places nodes an accelerator
# cannot run there, which is partitioning, not a fallback of the whole model.
_SHORTHANDS = {
    "cpu": ([CPU], [CPU]),
    "cuda": ([CUDA, CPU], [CUDA]),
    "tensorrt": ([TENSORRT, CUDA, CPU], [TENSORRT]),
}

ProviderArg = str | Sequence[str | tuple[str, dict]]


def resolve_providers(providers: ProviderArg, *, available: Sequence[str] | None = None):
    """Normalize ``providers`` into onnxruntime's list and the names that must be active.

    Returns:
        ``(providers for InferenceSession, required active names)``; ``auto``
        requires nothing (it is the one case allowed to fall back).

    Raises:
        UsageError: an unknown shorthand or malformed list.
        ProviderError: a named provider that this onnxruntime install lacks.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if isinstance(providers, str):
        if providers == "auto":
            return ([CUDA, CPU] if CUDA in available else [CPU]), []
        if providers not in _SHORTHANDS:
            raise UsageError(
                f"Unknown provider {providers!r}. Choose one of {list(PROVIDER_CHOICES)} "
                "or pass a list of onnxruntime provider names."
            )
        chosen, required = _SHORTHANDS[providers]
        chosen = [p for p in chosen if p in available or p in required]
    else:
        chosen = [_provider_entry(p) for p in providers]
        if not chosen:
            raise UsageError("providers is an empty list. Pass 'auto' or at least one provider.")
        required = [p if isinstance(p, str) else p[0] for p in chosen]
    missing = [p for p in required if p not in available]
    if missing:
        raise ProviderError(
            f"Execution provider {missing} was asked for but is not available in this "
            f"onnxruntime install (available: {available}). For CUDA, replace the CPU wheel "
            "with onnxruntime-gpu (README, Deployment: GPU), or pass providers='auto' (CLI: --provider auto) "
            "or providers='cpu' (CLI: --provider cpu)."
        )
    return chosen, required


def _provider_entry(entry):
    if isinstance(entry, str):
        return _ALIASES.get(entry, entry)
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Mapping):
        return (_ALIASES.get(entry[0], entry[0]), dict(entry[1]))
    raise UsageError(
        f"Each provider must be a name or a (name, options) pair; received {entry!r}."
    )



def cpu_has_int8_dot() -> bool | None:
    """Whether full 8-bit int8 weights are safe on this CPU: True on ARM or with x86 VNNI
    (AVX512-VNNI, AVX-VNNI), False on x86 without it, None where /proc/cpuinfo is unreadable."""
    import platform

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return None
    return " avx512_vnni" in flags or " avx_vnni" in flags
