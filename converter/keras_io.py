"""Loading Keras model files safely.

``.keras`` files are always loaded with Keras's ``safe_mode=True``: a file that
carries code (a ``Lambda`` with Python bytecode, a reference to an arbitrary
module) is refused unless the caller opts in with ``unsafe=True`` (CLI:
``--unsafe-load-code``). Legacy ``.h5`` files, where Keras does not apply safe
mode, need the same opt-in.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from .errors import ModelFileError, UnsafeModelError

logger = logging.getLogger(__name__)

UNSAFE_FLAG = "--unsafe-load-code"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"Keras model file not found: {str(path)!r}. Check the path.")
    if path.is_dir():
        raise ModelFileError(
            f"Expected a .keras file, received a directory: {str(path)!r}. "
            "Pass the path of a file saved with model.save('model.keras')."
        )
    if path.stat().st_size == 0:
        raise ModelFileError(f"Keras model file is empty (0 bytes): {str(path)!r}. Re-save the model.")


def load_keras_model(path: str | os.PathLike, *, unsafe: bool = False):
    """Load a ``.keras`` (or, with ``unsafe=True``, ``.h5``) model file.

    Args:
        path: the model file.
        unsafe: allow code stored in the file to run. Only for files you trust.

    Returns:
        The Keras model, not compiled.

    Raises:
        ModelFileError: missing, empty, truncated or corrupt file, or not a model.
        UnsafeModelError: the file holds code (or is ``.h5``) and ``unsafe`` is False.
    """
    import keras

    import tiedonnx.converter  # noqa: F401  (registers the tied layers)

    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        if not unsafe:
            raise UnsafeModelError(
                f"Refusing to load legacy HDF5 model {str(path)!r}: Keras does not apply safe mode "
                f"to .h5 files, so they may run code. Re-save it as .keras, or pass unsafe=True "
                f"(CLI: {UNSAFE_FLAG}) if you trust the file."
            )
    elif suffix != ".keras":
        raise ModelFileError(
            f"Expected a .keras model file. Received: {str(path)!r}. "
            "Save the model with model.save('model.keras')."
        )
    elif not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{str(path)!r} is not a valid .keras file (not a zip archive; truncated or corrupt?). "
            "Re-save the model with model.save('model.keras')."
        )
    if unsafe:
        logger.warning("loading %s with safe_mode=False: code in the file may run", path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises bare ValueError/TypeError/OSError for all of these
        text = str(exc)
        if "safe_mode" in text or "unsafe" in text.lower() or "deserializ" in text.lower() and "lambda" in text.lower():
            raise UnsafeModelError(
                f"Refusing to load {str(path)!r}: it contains code (for example a Lambda layer or a "
                f"reference to an arbitrary module), which safe mode blocks. Pass unsafe=True (CLI: "
                f"{UNSAFE_FLAG}) only if you trust the file. Keras said: {text.splitlines()[0][:300]}"
            ) from None
        raise ModelFileError(
            f"Could not load Keras model {str(path)!r}: {type(exc).__name__}: "
            f"{text.splitlines()[0][:300] if text else 'no detail'}. Is it a complete .keras file saved "
            "by Keras 3 (with `import tiedonnx.converter` before saving custom tied layers)?"
        ) from None
