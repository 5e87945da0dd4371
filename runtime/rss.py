"""Resident memory of a process (``VmRSS`` in ``/proc/<pid>/status``), for benchmarks and tests.

Linux only: elsewhere (and for a process that is gone) the answer is None.

Example:
    >>> from tiedonnx.runtime.rss import rss_bytes
    >>> rss_bytes() is None or rss_bytes() > 0
    True
"""

from __future__ import annotations


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of process ``pid`` (default: this one) in bytes, or None where unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB (KiB)
    except OSError:
        return None
    return None
