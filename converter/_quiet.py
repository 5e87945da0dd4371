"""Import TensorFlow without its native start-up noise on the terminal.

TensorFlow's C++ runtime writes log lines (absl, oneDNN, CUDA probing such as
``failed call to cuInit``) straight to file descriptor 2 while it is imported,
before Python can configure anything. :func:`import_tensorflow` sets
``TF_CPP_MIN_LOG_LEVEL`` when the user has not, and, unless ``tiedonnx -v``,
filters descriptor 2 around the import (:mod:`tiedonnx.runtime.native_logs`),
passing on every line that is not recognised as that noise.
"""

from __future__ import annotations

import os
import re
import sys

from tiedonnx.runtime.native_logs import GLOG_PREFIX, filtered_stderr, verbose_logging

# TensorFlow's start-up lines without a glog prefix; anything else is passed through.
_TF_NOISE = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized"
    r"|Could not find cuda drivers"
    r"|Unable to register cu"
    r"|TF-TRT Warning)"
)


def is_noise(line: str) -> bool:
    """Whether ``line`` is TensorFlow's native start-up logging."""
    return bool(GLOG_PREFIX.match(line) or _TF_NOISE.match(line))


def import_tensorflow() -> None:
    """Import TensorFlow and Keras once, quietly unless ``tiedonnx -v``."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    verbose = verbose_logging()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    with filtered_stderr(is_noise, verbose=verbose):
        import keras  # noqa: F401
        import tensorflow

        # TensorFlow probes for CUDA on the first device query; do it here,
        # inside the filter, instead of in the middle of a command's output.
        tensorflow.config.list_physical_devices()
