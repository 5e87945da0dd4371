"""Import TensorFlow without its native start-up noise on the terminal.

TensorFlow's C++ runtime writes log lines (absl, oneDNN, CUDA probing such as
``failed call to cuInit``) straight to file descriptor 2 while it is imported,
before Python can configure anything. :func:`import_tensorflow` sets
``TF_CPP_MIN_LOG_LEVEL`` when the user has not, and, unless ``verbose``,
redirects descriptor 2 into a temporary file around the import and passes on
every line that is not recognised as that noise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

logger = logging.getLogger(__name__)

# Lines TensorFlow/XLA/absl print at start-up; anything else is passed through.
_NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d"          # absl/glog prefix: W0000 00:00:...
    r"|WARNING: All log messages before absl::InitializeLog"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "  # TF's own C++ log prefix
    r"|To enable the following instructions"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized"
    r"|Could not find cuda drivers"
    r"|Unable to register cu"
    r"|TF-TRT Warning"
    r"|E0000 |W0000 |I0000 )"
)


def is_noise(line: str) -> bool:
    """Whether ``line`` is TensorFlow's native start-up logging."""
    return bool(_NOISE.match(line))


@contextlib.contextmanager
def filtered_stderr(*, verbose: bool):
    """Capture descriptor 2 during the block and replay what is not noise."""
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
            text = capture.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines() if ln.strip() and not is_noise(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
            dropped = len(text.splitlines()) - len(kept)
            if dropped:
                logger.debug("hid %d line(s) of TensorFlow start-up logging", dropped)


def import_tensorflow(*, verbose: bool | None = None) -> None:
    """Import TensorFlow and Keras once, quietly unless ``verbose``.

    ``verbose`` defaults to whether the ``tiedonnx`` logger shows INFO, which
    ``tiedonnx -v`` turns on.
    """
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    if verbose is None:
        verbose = logging.getLogger("tiedonnx").isEnabledFor(logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    with filtered_stderr(verbose=verbose):
        import tensorflow  # noqa: F401
        import keras  # noqa: F401
        # TensorFlow probes for CUDA on the first device query; do it here,
        # inside the filter, instead of in the middle of a command's output.
        tensorflow.config.list_physical_devices()
