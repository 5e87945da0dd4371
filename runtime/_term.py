"""Plain-text tables and a stderr progress bar for the CLI (no dependencies).

The runtime install has no ``rich``; these cover what ``run`` and ``bench``
print. Library code never calls them: only command modules do.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as an aligned text table (numbers right, text left)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) or value in (None, "n/a")


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most every ``interval`` s.

    Disabled (prints nothing) unless the stream is a terminal or ``enabled``
    is True, so logs and pipes stay clean. Use as ``progress(done, total)``.
    """

    def __init__(self, *, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None, interval: float = 0.1, width: int = 30):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label, self.interval, self.width = label, interval, width
        self._last = 0.0
        self._start = time.perf_counter()
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = int(round(frac * self.width))
        rate = done / max(now - self._start, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label}[{bar}] {done}/{total} rows {frac:6.1%} {rate:,.0f} rows/s")
        self._drawn = True
        if done >= total:
            self.close()
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (idempotent)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
