"""Progress lines on stderr for long commands (``export``, ``demo``): the CLI owns the terminal.

The library reports each step it starts through an ``on_step`` callback;
:class:`StepPrinter` prints it with the time since the command began (``export``:
on a terminal only, so a pipe or a log still gets exactly one line, the result
or the error; ``demo``: always, as it always did). A step
can take a minute (importing TensorFlow, tf2onnx on a language model), so the
current step is repeated with its running time whenever :data:`HEARTBEAT_S`
pass without a line: a person never waits 5 s on silence.

On the real stderr the repeats come from a tiny helper process (:data:`_TICKER`,
no imports beyond the standard library): importing TensorFlow holds Python's
GIL for seconds at a time, during which no thread of this process runs; a
thread here left an 8.4 s silence in ``export`` of a KerasHub model at load
average 7. On any other stream (tests) a thread does the repeating.
"""

from __future__ import annotations

import subprocess
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

# Reads each step from stdin (the parent printed it), repeats it on its inherited stderr
# after a silence; exits when stdin closes (the parent finished or died). Ignores Ctrl+C:
# the parent reports the interrupt, and the closed pipe ends this.
_TICKER = r"""
import select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
start, every, tick = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
step, last = "", time.time()
while True:
    ready = select.select([sys.stdin], [], [], tick)[0]
    now = time.time()
    if ready:
        line = sys.stdin.readline()
        if not line:
            break
        step, last = line.rstrip("\n"), now
    elif step and now - last >= every:
        sys.stderr.write(f"[{now - start:5.1f}s] ... still {step[:1].lower()}{step[1:]}\n")
        sys.stderr.flush()
        last = now
"""


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
        self._ticker: subprocess.Popen | None = None

    def __call__(self, message: str) -> None:
        with self._lock:
            self._step = message
            self._write(message)
            if self._ticker is not None:
                try:
                    self._ticker.stdin.write(message.replace("\n", " ") + "\n")
                    self._ticker.stdin.flush()
                except OSError:  # the helper is gone: no repeats, the steps still print
                    self._ticker = None

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
        if self.enabled and self._stream is None:
            started = time.time() - (self._clock() - self.start)  # the same zero as our lines
            self._ticker = subprocess.Popen(
                [sys.executable, "-c", _TICKER, repr(started), repr(self.heartbeat), repr(_TICK_S)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        elif self.enabled:
            self._thread = threading.Thread(target=self._run, name="tiedonnx-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._ticker is not None:
            ticker, self._ticker = self._ticker, None
            try:
                ticker.stdin.close()
            except OSError:
                pass
            ticker.wait()
