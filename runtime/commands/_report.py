"""Printing a command's report: JSON for machines, aligned text for people."""

from __future__ import annotations

import json
import sys


def emit(report: dict, *, as_json: bool, lines: list[str]) -> None:
    """Print ``report`` as JSON, or ``lines`` as text, to stdout."""
    if as_json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def human_bytes(n: int) -> str:
    return f"{n:,} B ({n / 1e6:.2f} MB)"
