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

# A .keras file is a zip; its config is JSON. Caps against zip/JSON bombs.
MAX_CONFIG_BYTES = 64 * 1024**2
MAX_ARCHIVE_BYTES = 8 * 1024**3


def _iter_objects(node):
    """Every serialized object (a dict with a 'class_name') in a Keras config."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def scan_keras_archive(path: Path) -> None:
    """Refuse archives that are bombs or that name code outside Keras before Keras parses them.

    Keras's safe mode (Keras >= 3.13.2) already blocks Python lambdas and
    imports of arbitrary modules; this scan is a second, independent line: every
    object in ``config.json`` must come from a ``keras`` module or be a
    registered custom object (``tiedonnx>DenseTied``, or one the caller registered).

    Raises:
        ModelFileError: not a valid archive, or sizes over the caps.
        UnsafeModelError: an object refers to code outside Keras.
    """
    import json

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            infos = {i.filename: i for i in archive.infolist()}
            total = sum(i.file_size for i in infos.values())
            config = infos.get("config.json")
            if config is None:
                raise ModelFileError(f"{str(path)!r} has no config.json: not a .keras model file. "
                                     "Save the model with model.save('model.keras').")
            if config.file_size > MAX_CONFIG_BYTES or total > MAX_ARCHIVE_BYTES:
                raise ModelFileError(
                    f"{str(path)!r} unpacks to {total} bytes (config.json: {config.file_size}), over "
                    f"the limits ({MAX_ARCHIVE_BYTES} / {MAX_CONFIG_BYTES}). Refused as a possible zip bomb.")
            tree = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{str(path)!r} is not a readable .keras archive ({type(exc).__name__}: "
                             f"{exc}). Re-save the model.") from None
    for obj in _iter_objects(tree):
        module = str(obj.get("module") or "")
        registered = obj.get("registered_name")
        name = str(obj.get("class_name"))
        if name == "__lambda__":
            raise UnsafeModelError(
                f"Refusing to load {str(path)!r}: it holds Python bytecode (a Lambda layer's function), "
                f"which runs when loaded. Pass unsafe=True (CLI: {UNSAFE_FLAG}) only if you trust the file."
            )
        if name.startswith("__") or module == "keras" or module.startswith("keras."):
            continue  # Keras's own markers (__keras_tensor__, __tuple__, ...) and Keras classes
        if registered and keras.saving.get_registered_object(registered) is not None:
            continue
        raise UnsafeModelError(
            f"Refusing to load {str(path)!r}: it refers to {module or '?'}.{obj.get('class_name')}, "
            "which is neither part of Keras nor a registered custom object, so loading it could run "
            f"code. Import and register your custom classes first, or pass unsafe=True (CLI: {UNSAFE_FLAG}) "
            "if you trust the file."
        )


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
    elif not unsafe:
        scan_keras_archive(path)
    if unsafe:
        logger.warning("loading %s with safe_mode=False: code in the file may run", path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises bare ValueError/TypeError/OSError for all of these
        text = str(exc)
        if ("safe_mode" in text or "unsafe" in text.lower()
                or ("deserializ" in text.lower() and "lambda" in text.lower())):
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
