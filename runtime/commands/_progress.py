"""Progress lines on stderr for long commands (``export``, ``demo``): the CLI owns the terminal.

The library reports each step it starts through an ``on_step`` callback;
:class:`StepPrinter` prints it with the time since the command began (``export``:
on a terminal only, so a pipe or a log still gets exactly one line, the result
or the error; ``demo``: always, as it always did). A step
can take a minute (importing TensorFlow, tf2onnx on a language model), so a
background thread repeats the current step with its running time whenever
:data:`HEARTBEAT_S` pass without a line: a person never waits 5 s on silence.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds of silence after which the current step is repeated. Below the
#: promised 5 s: the thread wakes every :data:`_TICK_S`, so a line can come
#: up to one tick late.
HEARTBEAT_S = 4.0
_TICK_S = 0.25


class StepPrinter:
    """``printer("converting")`` prints ``[  3.1s] converting``; a heartbeat repeats it.

    Use as a context manager; ``enabled=False`` (``--json``, ``-q``) prints nothing.

    Args:
        enabled: print at all; None: only when the stream is a terminal (a pipe or
            a log then gets the command's one result or error line, nothing else).
        stream: where to print (default: ``sys.stderr`` at call time).
        heartbeat: seconds of silence before the current step is repeated.
        clock: a ``time.perf_counter``-like function (tests pass a fake one).
    """

    def __init__(self, *, enabled: bool | None = True, stream: TextIO | None = None,
                 heartbeat: float = HEARTBEAT_S, clock: Callable[[], float] = time.perf_counter):
        self._stream = stream
        self.enabled = (self._out().isatty() if enabled is None else enabled)
        self.heartbeat = heartbeat
        self._clock = clock
        self.start = self._last = clock()
        self._step = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        with self._lock:
            self._step = message
            self._write(message)

    def beat(self) -> bool:
        """Repeat the current step if :attr:`heartbeat` seconds passed silently; True if it did."""
        with self._lock:
            if not self._step or self._clock() - self._last < self.heartbeat:
                return False
            self._write(f"... still {self._step[:1].lower()}{self._step[1:]}")
            return True

    def _write(self, text: str) -> None:
        now = self._clock()
        self._last = now
        if self.enabled:
            stream = self._out()
            stream.write(f"[{now - self.start:5.1f}s] {text}\n")
            stream.flush()

    def _out(self) -> TextIO:
        return self._stream or sys.stderr

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            self.beat()

    def __enter__(self) -> StepPrinter:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="tiedonnx-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
