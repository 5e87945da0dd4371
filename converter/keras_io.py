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
import re
import warnings
import zipfile
from collections import Counter
from pathlib import Path

from tiedonnx.runtime.errors import short_error

from .errors import ModelFileError, UnsafeModelError, UsageError

logger = logging.getLogger(__name__)

UNSAFE_FLAG = "--unsafe-load-code"

# A .keras file is a zip; its config is JSON. Caps against zip/JSON bombs.
MAX_CONFIG_BYTES = 64 * 1024**2
MAX_ARCHIVE_BYTES = 8 * 1024**3
# Nesting of config.json. A Keras layer's config nests about 8 levels, a model
# inside a model adds about 10; 100 leaves room for deep real models and keeps
# both json's and Keras's recursive code far from Python's recursion limit.
MAX_CONFIG_DEPTH = 100

# Keras's serialization markers (keras/src/saving/serialization_lib.py) that
# carry data, not code: they never name a module or a class.
KERAS_MARKERS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                           "__ellipsis__", "__slice__"})


def _walk(node, path: Path):
    """Every dict and every string value in a Keras config, depth-capped."""
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ModelFileError(
                f"{str(path)!r} has a config.json nested more than {MAX_CONFIG_DEPTH} levels deep, "
                "which no Keras model needs. Refused as malformed or hostile; re-save the model."
            )
        if isinstance(item, (dict, str)):
            yield item
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)


def scan_keras_archive(path: Path, *, refused: frozenset[str] = frozenset()) -> None:
    """Refuse archives that are bombs or that name code outside Keras before Keras parses them.

    Keras's safe mode (Keras >= 3.13.2) already blocks Python lambdas and
    imports of arbitrary modules; this scan is a second, independent line that
    judges what Keras will resolve (``serialization_lib``): Keras looks an
    object's *registry key* up first (its ``registered_name``, or its
    ``class_name`` when the file gives none; a ``"function"``'s ``config``), and
    any plain string in the config that is a registry key becomes the registered
    object. So every object must be a Keras data marker (:data:`KERAS_MARKERS`,
    without a module); or have a key registered in this process by a trusted
    source, from exactly the module the file names; or have an unregistered key
    without a package part (no ``>``) and module ``keras``/``keras.*``. No string
    anywhere may be a key in ``refused``.

    Raises:
        ModelFileError: not a valid archive, sizes or nesting over the caps,
            duplicate member names, malformed objects.
        UnsafeModelError: an object refers to code outside Keras, or a string
            is one of ``refused`` (registry keys whose objects a package the
            caller did not name brought in; see :func:`import_packages`).
    """
    tree = _read_config(path)
    for item in _walk(tree, path):
        if isinstance(item, str):
            _check_string(item, path, refused)
        elif "class_name" in item:
            _check_object(item, path, refused)


def _read_config(path: Path):
    """Check the archive's members and return ``config.json``, parsed."""
    import json

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            _check_members(infos, path)
            config = next((i for i in infos if i.filename == "config.json"), None)
            if config is None:
                raise ModelFileError(f"{str(path)!r} has no config.json: not a .keras model file. "
                                     "Save the model with model.save('model.keras').")
            return json.loads(archive.read(config))
    except RecursionError:
        raise ModelFileError(
            f"{str(path)!r} has a config.json nested too deeply to parse. Refused as malformed "
            "or hostile; re-save the model.") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{str(path)!r} is not a readable .keras archive ({type(exc).__name__}: "
                             f"{short_error(exc)}). Re-save the model.") from None


def _check_members(infos: list, path: Path) -> None:
    """Caps on what the archive declares, every member counted (duplicates too)."""
    names = [i.filename for i in infos]
    repeated = sorted({n for n, count in Counter(names).items() if count > 1})
    if repeated:
        raise ModelFileError(
            f"{str(path)!r} holds several members named {repeated[:3]}; Keras never writes "
            "that, and which copy a reader takes is ambiguous. Refused; re-save the model.")
    total = sum(i.file_size for i in infos)
    config = max((i.file_size for i in infos if i.filename == "config.json"), default=0)
    if config > MAX_CONFIG_BYTES or total > MAX_ARCHIVE_BYTES:
        raise ModelFileError(
            f"{str(path)!r} unpacks to {total} bytes (config.json: {config}), over the limits "
            f"({MAX_ARCHIVE_BYTES} / {MAX_CONFIG_BYTES}). Refused as a possible zip bomb.")


def _check_object(obj: dict, path: Path, refused: frozenset[str] = frozenset()) -> None:
    name, module, registered = obj.get("class_name"), obj.get("module"), obj.get("registered_name")
    key = obj.get("config") if name == "function" else obj.get("registered_name", name)
    wrong = [f"{field}={value!r:.60}" for field, value, ok in (
        ("class_name", name, isinstance(name, str)),
        ("module", module, module is None or isinstance(module, str)),
        ("registered_name", registered, registered is None or isinstance(registered, str)),
        ("config", key, name != "function" or isinstance(key, str)))
        if not ok]
    if wrong:
        raise ModelFileError(
            f"{str(path)!r} has a malformed object in config.json ({', '.join(wrong)}): class_name "
            "must be a string, module and registered_name strings or null, a function's config "
            "its name. Re-save the model.")
    if name == "__lambda__":
        raise UnsafeModelError(
            f"Refusing to load {str(path)!r}: it holds Python bytecode (a Lambda layer's function), "
            f"which runs when loaded. Pass unsafe=True (CLI: {UNSAFE_FLAG}) only if you trust the file.")
    if name in KERAS_MARKERS and module is None:
        return  # Keras builds these from data before any lookup
    found = _registered(key) if not name.startswith("__") else None
    if found is not None:
        _check_string(key, path, refused)
        if getattr(found, "__module__", None) == module:
            return
    elif (not name.startswith("__") and module is not None and ">" not in (key or "")
          and (module == "keras" or module.startswith("keras."))):
        return
    resolved = f"; Keras would build {_describe(found)}" if found is not None else ""
    raise UnsafeModelError(
        f"Refusing to load {str(path)!r}: it refers to {module or '?'}.{name[:80]}, which is neither "
        f"part of Keras nor a custom object registered from that module (registered_name "
        f"{registered!r:.80}{resolved}), so loading it could run code. Import and register your custom "
        f"classes first (a package's registered classes: import_modules=[...], CLI: --import "
        f"{(module or '?').split('.')[0]}), or pass unsafe=True (CLI: {UNSAFE_FLAG}) if you trust the file.")


def _check_string(text: str, path: Path, refused: frozenset[str]) -> None:
    """Keras turns any string that is a registry key into the registered object."""
    if text in refused:
        found = _registered(text)
        raise UnsafeModelError(
            f"Refusing to load {str(path)!r}: it names {text[:80]!r}, which Keras would resolve to "
            f"{_describe(found)}, a class registered by a package you did not name (an --import "
            "brought it in). Name that package with --import (import_modules=[...]) only if you trust it.")


def _registered(key):
    """What Keras's registry returns for ``key`` (None: not registered, or not a usable key)."""
    import keras

    if not isinstance(key, str) or not key:
        return None
    return keras.saving.get_registered_object(key)


def _describe(found) -> str:
    return f"{getattr(found, '__module__', '?')}.{getattr(found, '__qualname__', '?')}"[:160]


# Registry entries that an import_packages() call brought in, in this process. A
# later call trusts them only if it names their package: in-process a package is
# imported once, so "registered during this call's import" alone would trust on
# the second call what the first refused. Registrations by the caller's own code
# (never through import_packages) are the caller's, and trusted.
_IMPORTED: dict[str, object] = {}

_PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def import_packages(names) -> frozenset[str]:
    """Import the packages the caller named, so their Keras serializables register.

    A named package (``keras_hub``) registers its classes on import; safe mode
    then loads them as it loads Keras's own. Every registry key that this or
    an earlier call's imports added or re-bound, still bound to that object, and
    from a package this call does not name, is returned, to be refused wherever
    a file names it: of what ``--import`` brought in, only what the caller named
    is trusted.

    Raises:
        UsageError: a name is not a Python package name, is not installed, or
            its import-time code failed (any exception, ``sys.exit`` included).
    """
    import keras

    names = [str(n) for n in names]
    bad = [n for n in names if not _PACKAGE_NAME.match(n)]
    if bad:
        raise UsageError(f"Not a Python package name. Received: import_modules={bad!r}. "
                         "Name installed packages, e.g. keras_hub.")
    before = dict(keras.saving.get_custom_objects())
    for name in names:
        _import_one(name, names)
    registry = keras.saving.get_custom_objects()
    _IMPORTED.update((k, v) for k, v in registry.items() if before.get(k) is not v)
    return frozenset(k for k, v in _IMPORTED.items()
                     if registry.get(k) is v and not any(
                         str(getattr(v, "__module__", "")) == n
                         or str(getattr(v, "__module__", "")).startswith(n + ".") for n in names))


def _import_one(name: str, names: list[str]) -> None:
    """Import one named package; any failure of its import-time code is one UsageError."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"Cannot import {name!r} ({short_error(exc)}). Received: import_modules="
                         f"{names!r}. Install it (pip install {name.split('.')[0]}) or drop it.") from None
    except (Exception, SystemExit) as exc:  # a package's import-time code can raise anything, or exit
        raise UsageError(f"Importing {name!r} failed: its import-time code raised {type(exc).__name__}"
                         f" ({short_error(exc) or 'no detail'}). Received: import_modules={names!r}. "
                         "Fix or reinstall the package, or drop it.") from None


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


def load_keras_model(path: str | os.PathLike, *, unsafe: bool = False, import_modules=()):
    """Load a ``.keras`` (or, with ``unsafe=True``, ``.h5``) model file.

    Args:
        path: the model file.
        unsafe: allow code stored in the file to run. Only for files you trust.
        import_modules: packages to import first (CLI: ``--import``), whose
            registered Keras classes (``keras_hub``'s models) then load with
            safe mode still on; see :func:`import_packages`.

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
    refused = import_packages(import_modules or ())
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
        scan_keras_archive(path, refused=refused)
    if unsafe:
        logger.warning("loading %s with safe_mode=False: code in the file may run", path)
    # Keras warns (UserWarning) about every weight it cannot match before it fails;
    # each would be another stderr line next to our one-line error. Kept for the log.
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
        except Exception as exc:  # Keras raises bare ValueError/TypeError/OSError for all of these
            _log_warnings(said, logging.DEBUG)
            raise _load_error(path, exc) from None
    _log_warnings(said, logging.WARNING)
    return model


def _log_warnings(said, level: int) -> None:
    for text in dict.fromkeys(" ".join(str(w.message).split())[:300] for w in said
                              if not issubclass(w.category, DeprecationWarning)):
        logger.log(level, "Keras: %s", text)


# Keras's words when a layer rebuilt from the file's config wants other variables than the file holds.
_VARIABLE_MISMATCH = re.compile(r"Layer '(?P<layer>[^']+)' expected (?P<want>\d+) variables?, but received "
                                r"(?P<got>\d+) variables? during loading\. Expected: (?P<names>\[[^\]]*\])")
# ... and when a class cannot be rebuilt because its config lacks a constructor argument.
_MISSING_ARGUMENT = re.compile(r"(?P<cls>[\w.]+)\.__init__\(\) missing \d+ required positional "
                               r"arguments?: (?P<args>'[^\n]*?')(?:\.|\n|$)")


def _config_hint(text: str) -> str | None:
    """The real cause when the file's config cannot rebuild what was saved (not a missing import)."""
    if m := _VARIABLE_MISMATCH.search(text):
        return (f"Keras rebuilt layer {m['layer']!r} from the file's config with {m['want']} variable(s) "
                f"{m['names']} but the file holds {m['got']} for it: the saved config does not describe "
                "the layer that was saved (a class whose get_config() leaves an option out, such as "
                "KerasHub's LlamaBackbone dropping tie_word_embeddings; keras.saving.load_model fails the "
                "same way). Export the model object from the session that built it instead: "
                "export(model, 'model.onnx')")
    if m := _MISSING_ARGUMENT.search(text):
        return (f"Keras cannot rebuild {m['cls']}: its saved config lacks the constructor argument(s) "
                f"{m['args']} (a reference to another layer, such as tied_to, is not a config value). "
                "Use tiedonnx.converter.DenseTied, which saves its tie, or export the model object from "
                "the session that built it: export(model, 'model.onnx')")
    return None


def _load_error(path: Path, exc: Exception) -> ModelFileError:
    """Keras's loading failure as one of our errors, with the cause when Keras buried it."""
    text = str(exc)
    if ("safe_mode" in text or "unsafe" in text.lower()
            or ("deserializ" in text.lower() and "lambda" in text.lower())):
        return UnsafeModelError(
            f"Refusing to load {str(path)!r}: it contains code (for example a Lambda layer or a "
            f"reference to an arbitrary module), which safe mode blocks. Pass unsafe=True (CLI: "
            f"{UNSAFE_FLAG}) only if you trust the file. Keras said: {short_error(exc, 300)}"
        )
    cause = _config_hint(text)
    if cause:
        return ModelFileError(f"Could not load Keras model {str(path)!r}: {cause}.")
    hint = ("Is a class it uses registered? (`import tiedonnx.converter` for tiedonnx's tied layers, "
            "--import PKG for a package's)" if "locate class" in text.lower()
            else "Is it a complete .keras file saved by Keras 3?")
    return ModelFileError(
        f"Could not load Keras model {str(path)!r}: {type(exc).__name__}: "
        f"{short_error(exc, 300) if text.strip() else 'no detail'}. {hint}"
    )
