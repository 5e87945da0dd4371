"""Refusals the Keras commands give before TensorFlow is imported.

Importing :mod:`tiedonnx.converter` imports TensorFlow (10-40 s on a busy
machine). Every check that needs no Keras runs here first, so a missing file,
an existing output or an ONNX file given to ``export`` is answered at once,
with the same line whether or not TensorFlow is installed. The library checks
again (its callers are not only the CLI); these checks only move the answer
earlier, they never accept what the library would refuse.

Only numpy, onnx and the runtime's own modules are imported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFileError, OutputExistsError, UnsafeModelError, UsageError

#: The suffixes ``load_keras_model`` reads (``.h5``/``.hdf5`` only with --unsafe-load-code).
KERAS_SUFFIXES = (".keras",)
LEGACY_SUFFIXES = (".h5", ".hdf5")
ONNX_SUFFIXES = (".onnx", ".ort")

#: What ``tiedonnx demo`` writes into its folder (``web/`` only with onnxruntime-web).
#: :mod:`tiedonnx.converter.demo` checks its variants' files are all listed here.
DEMO_OUTPUT_FILES = ("model.keras", "plain_tf2onnx.onnx", "model.fp32.onnx", "model.fp16.onnx",
                     "model.int8.onnx", "model.int4.onnx", "reconstructions.png",
                     "size_latency.png", "report.md", "report.json", "web/index.html")


def check_keras_file(path: str | os.PathLike, *, unsafe: bool = False, command: str = "export") -> None:
    """Refuse a Keras model path that cannot be loaded, without importing Keras.

    The same checks, in the same order and words, as
    :func:`tiedonnx.converter.keras_io.load_keras_model` runs before it opens
    the file; an ONNX file gets a pointer to the command that reads ONNX.

    Raises:
        ModelFileError: missing, a directory, empty, or not a ``.keras`` file.
        UnsafeModelError: a legacy ``.h5`` file without ``unsafe``.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"Keras model file not found: {str(path)!r}. Check the path.")
    if path.is_dir():
        raise ModelFileError(f"Expected a .keras file, received a directory: {str(path)!r}. "
                             "Pass the path of a file saved with model.save('model.keras').")
    if path.stat().st_size == 0:
        raise ModelFileError(f"Keras model file is empty (0 bytes): {str(path)!r}. Re-save the model.")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        hint = (f"to store the ties of an ONNX file once, run `tiedonnx retie {path} -o OUT.onnx`"
                if command == "export" else "pass the .keras file the ONNX model was exported from")
        raise ModelFileError(f"Expected a .keras model file. Received an ONNX file: {str(path)!r}; "
                             f"tiedonnx {command} reads a Keras model there: {hint}.")
    if suffix in LEGACY_SUFFIXES and not unsafe:
        raise UnsafeModelError(
            f"Refusing to load legacy HDF5 model {str(path)!r}: Keras does not apply safe mode "
            "to .h5 files, so they may run code. Re-save it as .keras, or pass unsafe=True "
            "(CLI: --unsafe-load-code) if you trust the file.")
    if suffix not in KERAS_SUFFIXES + LEGACY_SUFFIXES:
        raise ModelFileError(f"Expected a .keras model file. Received: {str(path)!r}. "
                             "Save the model with model.save('model.keras').")


def refuse_keras_for_onnx(path: str | os.PathLike, *, command: str) -> None:
    """An ONNX command given a Keras file: say what it is and which command reads it.

    Raises:
        ModelFileError: ``path`` is an existing ``.keras``/``.h5`` file.
    """
    path = Path(path)
    if path.suffix.lower() in KERAS_SUFFIXES + LEGACY_SUFFIXES and path.is_file():
        raise ModelFileError(
            f"{str(path)!r} is a Keras model file, not ONNX; tiedonnx {command} reads .onnx files. "
            f"Export it first: tiedonnx export {path} -o {path.with_suffix('.onnx')}")


def check_onnx_file(path: str | os.PathLike) -> None:
    """The runtime's path checks on an ONNX file (missing, directory, empty, too large)."""
    from ..model_file import DEFAULT_MAX_BYTES, _check_path

    _check_path(Path(path), max_bytes=DEFAULT_MAX_BYTES)


def check_ort(args) -> None:
    """``tiedonnx ort``'s refusals: a Keras file as the input, then an output not named ``*.ort``."""
    refuse_keras_for_onnx(args.input, command="ort")
    if Path(args.output).suffix != ".ort":  # onnxruntime reads a file as ORT format by its suffix
        raise UsageError(f"-o must name an .ort file: onnxruntime loads a file as ORT format by its "
                         f".ort suffix. Received: {args.output!r}. Use e.g. "
                         f"-o {Path(args.output).with_suffix('.ort')}")


def before_tensorflow(check, args, *, what: str) -> None:
    """``check(args)``, every refusal that needs no Keras, then the convert extra (``what`` needs it)."""
    from ..extras import require

    check(args)
    require("convert", what=what)


def check_export(args) -> None:
    """``tiedonnx export``'s refusals, in the order ``converter.export.export`` checks them."""
    from ..model_save import check_model_targets

    options = dict(block_size=args.block_size, symmetric=args.symmetric, per_channel=args.per_channel,
                   reduce_range=args.reduce_range, short_names=args.short_names, rounding=args.rounding,
                   int8_ties=args.int8_ties)
    if any(v is not None for v in options.values()):  # the defaults are valid for every precision;
        from ..graph.quantize import check_precision_options  # onnx's import alone takes 0.6 s

        check_precision_options(args.precision, **options)
    if getattr(args, "task", "forward") == "generate":
        return _check_generate(args)
    path = check_model_targets(args.output, force=args.force)
    if args.ort:
        from ..atomic import check_output_path
        from ..graph.ort_format import config_path_for

        ort_path = path.with_suffix(".ort")
        check_output_path(ort_path, force=args.force)
        check_output_path(config_path_for(ort_path), force=args.force)
    check_keras_file(args.model, unsafe=args.unsafe_load_code, command="export")


def _check_generate(args) -> None:
    """``export --task generate``: the output folder, and a .keras file or a KerasHub preset folder."""
    from ..generation_folder import check_folder_target

    if args.ort:
        raise UsageError("--ort is not available with --task generate (the generation runtime reads .onnx). "
                         "Drop --ort.")
    check_folder_target(args.output, force=args.force)
    model = Path(args.model)
    if model.is_dir():
        if not (model / "config.json").is_file():
            raise ModelFileError(f"{str(model)!r} is a folder but not a KerasHub preset (no config.json). Pass a "
                                 ".keras file, or a folder written by `CausalLM.save_to_preset`.")
        return
    check_keras_file(args.model, unsafe=args.unsafe_load_code, command="export")


def check_verify(args) -> None:
    """``tiedonnx verify``'s refusals: the ONNX file, the inputs file, then the Keras file."""
    check_onnx_file(args.onnx_model)
    if args.input is not None:
        from ..inputs import check_array_file

        check_array_file(args.input)
    check_keras_file(args.keras_model, unsafe=args.unsafe_load_code, command="verify")


def check_demo_out_dir(out_dir: str | os.PathLike, *, force: bool) -> None:
    """Refuse a ``--out`` that is a file, or a folder holding demo output without ``force``.

    Raises:
        UsageError: ``out_dir`` is a file.
        OutputExistsError: it holds files of :data:`DEMO_OUTPUT_FILES` and ``force`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out_dir must be a folder. Received a file: {str(out)!r}. "
                         "Pass a folder path.")
    existing = [n for n in DEMO_OUTPUT_FILES if (out / n).exists()]
    if existing and not force:
        more = ", ..." if len(existing) > 3 else ""
        raise OutputExistsError(
            f"{str(out)!r} already holds demo output ({', '.join(existing[:3])}{more}). "
            "Pass force=True (CLI: --force) to overwrite it, or another out_dir (CLI: --out).")
