"""Keep native libraries' log lines (TensorFlow, Ray) off the terminal unless asked.

C++ runtimes write straight to file descriptor 2, below Python's ``logging``.
:func:`filtered_stderr` redirects descriptor 2 into a temporary file for the
duration of a block and then passes on every line that the caller's
``is_noise`` does not recognise, so real errors still reach the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

#: glog/absl-style prefixes: ``W0000 00:00:...``, ``[2026-11-27 13:00:00,123 E 1 2] file.cc:1``,
#: ``2026-11-27 13:00:00.123: I tensorflow/...``.
GLOG_PREFIX = re.compile(r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d"
                         r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ [IWEF] "
                         r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d+: [IWEF] )")


def verbose_logging() -> bool:
    """Whether ``tiedonnx -v`` (INFO on the ``tiedonnx`` logger) is on."""
    return logging.getLogger("tiedonnx").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def filtered_stderr(is_noise: Callable[[str], bool], *, verbose: bool | None = None) -> Iterator[None]:
    """Capture descriptor 2 during the block; replay the lines that are not noise.

    With ``verbose`` (default: :func:`verbose_logging`) nothing is captured.
    """
    if verbose is None:
        verbose = verbose_logging()
    if verbose:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
            kept = [ln for ln in lines if ln.strip() and not is_noise(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
            if len(lines) > len(kept):
                logger.debug("hid %d line(s) of native log output", len(lines) - len(kept))
