"""Export a tied Keras model to ONNX: tf2onnx, then retie, then parity, then an atomic write.

Pipeline (order matters):

1. :func:`~tiedonnx.converter.tf_convert.keras_to_onnx`: tf2onnx, which
   constant-folds ``transpose(W)`` and stores every tie twice.
2-3. the graph passes, an ordered list
   (:data:`~tiedonnx.converter.export_passes.EXPORT_PASSES`, each entry
   saying why it sits where it does):
   :func:`~tiedonnx.runtime.graph.retie` (one initializer per tie, the
   transpose as a graph op; before any precision change, which would
   otherwise quantize the two copies independently), ``fold_initializer_shapes``
   (tf2onnx keeps each einsum kernel in a second layout read only by a
   ``Shape`` node; its shape is a constant), any ``graph_passes``, the tie
   record with the Keras names of the ties :func:`find_ties` found (matched
   to tf2onnx's initializers once, :func:`~tiedonnx.converter.ties.locate_ties`),
   then the optional precision change (fp16 / int8 / int4), tie-aware.
4. proofs: ``onnx.checker`` (full check), no initializer that is a copy or
   permutation of another, parity against Keras. Any failure writes nothing.
5. atomic write (and optionally an ORT-format copy). A model whose serialized
   size passes :data:`~tiedonnx.runtime.model_save.EXTERNAL_DATA_THRESHOLD` is written as ``<name>`` plus
   ``<name>.data`` (ONNX external data, see :mod:`tiedonnx.runtime.model_save`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tiedonnx.runtime import model_save
from tiedonnx.runtime.atomic import check_output_path
from tiedonnx.runtime.errors import short_error
from tiedonnx.runtime.graph import TieRecord, find_duplicates, read_ties, untied_bytes, write_metadata
from tiedonnx.runtime.graph.duplicates import initializer_arrays
from tiedonnx.runtime.options import DEFAULT_OPSET, SUPPORTED_OPSETS, check_precision

from .errors import ConversionError, UsageError
from .export_passes import ExportPassOptions, run_export_passes
from .parity import DEFAULT_BATCH_SIZES, ParityReport, verify as verify_parity
from .ties import describe_stored_ties, find_ties, locate_ties
from .tf_convert import keras_to_onnx

logger = logging.getLogger(__name__)

#: Serialized size (bytes) above which the model's weights go to ``<name>.data``
#: beside it. Read at each call: lower it with ``monkeypatch`` or ``external_threshold=``.


@dataclass
class ExportReport:
    """What :func:`export` wrote and measured."""

    path: str
    bytes: int
    untied_bytes: int
    plain_bytes: int
    opset: int
    precision: str
    ties: list[TieRecord] = field(default_factory=list)
    folded: int = 0
    parity: ParityReport | None = None
    convert_seconds: float = 0.0
    total_seconds: float = 0.0
    ort_path: str | None = None
    data_path: str | None = None

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("parity", "ties")}
        d["ties"] = [t.as_dict() for t in self.ties]
        d["parity"] = self.parity.as_dict() if self.parity else None
        return d


def _versions(opset: int) -> dict:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from tiedonnx.runtime import __version__

    return {"tiedonnx": __version__, "keras": keras.__version__, "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__, "opset": opset}


def _resolve_model(model, unsafe: bool, import_modules=()):
    if isinstance(model, (str, os.PathLike)):
        from .keras_io import load_keras_model

        return load_keras_model(model, unsafe=unsafe, import_modules=import_modules)
    return model


def _check_compute_dtype(model, precision: str) -> None:
    """int8 rewrites float32 MatMuls; a model computing in 16 bits has none to rewrite."""
    from .parity import compute_dtype

    dtype = compute_dtype(model)
    if precision == "int8" and dtype != "float32":
        raise UsageError(
            f"int8 export needs a model that computes in float32; model {model.name!r} computes in "
            f"{dtype} (dtype policy {model.dtype_policy.name!r}). Received: precision='int8'. Export "
            "it with precision='fp16' or 'fp32', or rebuild it with dtype='float32' for int8.")


def _check_options(opset: int, precision: str) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"Unsupported ONNX opset. Received: opset={opset!r}. Use one of "
                         f"{list(SUPPORTED_OPSETS)} (default {DEFAULT_OPSET}).")
    check_precision(precision)


def _prove_invariants(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ConversionError(f"The exported graph fails onnx.checker: {short_error(exc, 300)}") from exc
    left = find_duplicates(initializer_arrays(proto.graph))
    if left:
        raise ConversionError(f"Tie invariant broken: initializers still duplicated: "
                              f"{[(d.copy, d.relation, d.source) for d in left]}")
    from tiedonnx.runtime.graph.int4_blocks import find_4bit_copies  # reads 4-bit tensors back to float

    left = find_4bit_copies(proto.graph)
    if left:
        raise ConversionError(f"Tie invariant broken: a 4-bit weight is stored again: "
                              f"{[(d.copy, d.relation, d.source) for d in left]}")


def _check_before_work(path, *, opset: int, precision: str, options: dict, short_names, force: bool, ort: bool,
                       input_spec):
    """Every refusal that needs no model: options, the output files (and .ort ones), the input spec."""
    _check_options(opset, precision)
    from tiedonnx.runtime.graph.quantize import check_precision_options

    check_precision_options(precision, short_names=short_names, **options)
    path = model_save.check_model_targets(path, force=force)  # and its external-data file
    ort_path = path.with_suffix(".ort") if ort else None
    if ort and options.get("accuracy_level"):
        raise UsageError(f"accuracy_level={options['accuracy_level']} cannot go into an ORT-format file: onnxruntime "
                         "1.32 computes MatMulNBits wrongly at level 4 when the scales are not folded first, as in "
                         ".ort files. Drop ort=True (CLI: --ort) or the accuracy level.")
    if ort_path is not None:
        from tiedonnx.runtime.graph.ort_format import config_path_for

        check_output_path(ort_path, force=force)
        check_output_path(config_path_for(ort_path), force=force)
    if input_spec is not None:  # a malformed spec is refused before the model loads
        from .input_specs import spec_structure

        spec_structure(input_spec)
    return path, ort_path


def _warn_preprocessor(keras_model) -> None:
    if getattr(keras_model, "preprocessor", None) is not None:  # a KerasHub task with its tokenizer
        logger.warning("%s has a preprocessor (tokenizer); the .onnx holds the model only. For a folder with "
                       "the tokenizer and a KV-cache decoder, export with task='generate' (CLI: --task generate)",
                       keras_model.name)


def export(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, verify: bool = True,
           precision: str = "fp32", block_size: int | None = None, symmetric: bool | None = None,
           short_names: bool | None = None, per_channel: bool | None = None, reduce_range: bool | None = None,
           rounding: str | None = None, int8_ties: bool | None = None, accuracy_level: int | None = None,
           force: bool = False, ort: bool = False,
           batch_sizes=DEFAULT_BATCH_SIZES, unsafe: bool = False, import_modules=(), input_spec=None,
           external_threshold: int | None = None, graph_passes=(), convert=None,
           on_step: Callable[[str], None] | None = None) -> ExportReport:
    """Export a (tied) Keras model to an ONNX file with one initializer per tie.

    Args:
        model: a built Keras model, or the path of a ``.keras`` file.
        path: the ``.onnx`` file to write.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        verify: compare Keras and onnxruntime outputs at ``batch_sizes`` before writing.
        precision: "fp32", "fp16", "int8" or "int4" weights.
        block_size, symmetric, rounding, int8_ties, accuracy_level: int4 only; per_channel, reduce_range: int8
            only; short_names: short internal tensor names (default: int4 only). See :func:`tiedonnx.runtime.graph.quantize.to_precision`.
        force: overwrite an existing file.
        ort: also write an ORT-format copy (``path`` with suffix ``.ort``).
        unsafe: when ``model`` is a path, allow code stored in the file to run.
        import_modules: when ``model`` is a path, packages to import first whose
            registered Keras classes load in safe mode (``["keras_hub"]``).
        external_threshold: serialized size above which weights are written to
            ``<path>.data`` (default :data:`~tiedonnx.runtime.model_save.EXTERNAL_DATA_THRESHOLD`).
        input_spec: the inputs, one ``"NAME:DTYPE:AXES"`` per input (``"token_ids:int32:batch,sequence"``),
            for a subclassed model that declares none (see :mod:`tiedonnx.converter.input_specs`).
        graph_passes: extra ``ModelProto -> (ModelProto, detail)`` passes (the protocol
            of :mod:`tiedonnx.runtime.graph.passes`) run after retie and the shape fold,
            before the tie record and any precision change (the generation export folds
            its cache stacks); see :data:`~tiedonnx.converter.export_passes.EXPORT_PASSES`.
        convert: ``(keras_model, opset) -> (ModelProto or None, reason)`` that writes the graph itself
            (the generation export's fused decoder, :mod:`.generation_fused`); tf2onnx converts
            the model when it returns None (default: always tf2onnx).
        on_step: called with a short message as each step starts (the CLI prints it; default: an info log).

    Returns:
        An :class:`ExportReport`.

    Raises:
        UsageError, OutputExistsError: bad options or an existing output (checked first).
        ModelFileError, UnsafeModelError: the ``.keras`` file cannot be loaded safely.
        ConversionError: conversion failed or an invariant could not be proven.
        ParityError: outputs differ from Keras; nothing is written.

    Example:
        >>> report = export(model, "ae.onnx")  # doctest: +SKIP
        >>> report.bytes, report.untied_bytes  # doctest: +SKIP
        (803810, 1606318)
    """
    options = dict(block_size=block_size, symmetric=symmetric, per_channel=per_channel, reduce_range=reduce_range,
                   rounding=rounding, int8_ties=int8_ties, accuracy_level=accuracy_level)
    path, ort_path = _check_before_work(path, opset=opset, precision=precision, options=options,
                                        short_names=short_names, force=force, ort=ort, input_spec=input_spec)
    step, start = on_step or (lambda message: logger.info("%s", message)), time.perf_counter()
    keras_model, ties, plain, convert_seconds = _load_and_convert(
        model, step, start, unsafe=unsafe, import_modules=import_modules, precision=precision, opset=opset,
        input_spec=input_spec, convert=convert)
    proto, retie_report = _store_ties_once(keras_model, ties, plain, step, opset=opset, precision=precision,
                                           options=options, short_names=short_names, graph_passes=graph_passes)
    parity = _check_parity(keras_model, proto, step, batch_sizes, precision, input_spec) if verify else None
    saved = _write_outputs(proto, path, ort_path, step, force=force, external_threshold=external_threshold)
    return _report(path, ort_path, saved, proto, retie_report, parity, opset=opset, precision=precision,
                   convert_seconds=convert_seconds, start=start)


def _load_and_convert(model, step, start: float, *, unsafe: bool, import_modules, precision: str, opset: int,
                      input_spec, convert=None):
    """Load and check the Keras model, find its ties and convert it with tf2onnx.

    Returns the Keras model, its ties, tf2onnx's graph and the seconds since ``start``.
    """
    if isinstance(model, (str, os.PathLike)):
        step(f"loading the Keras model {os.fspath(model)}")
    keras_model = _resolve_model(model, unsafe, import_modules)
    _check_compute_dtype(keras_model, precision)
    _warn_preprocessor(keras_model)
    ties = find_ties(keras_model)

    plain, reason = convert(keras_model, opset) if convert is not None else (None, None)
    if plain is not None:
        step(f"wrote the graph directly (opset {opset})")
    else:
        step(f"converting with tf2onnx (opset {opset})" + (f": {reason}" if reason else ""))
        plain = keras_to_onnx(keras_model, opset=opset, input_spec=input_spec)
    return keras_model, ties, plain, time.perf_counter() - start


def _store_ties_once(keras_model, ties, plain, step, *, opset: int, precision: str, options: dict, short_names,
                     graph_passes):
    """Stamp the versions, run the export passes (retie first) and prove the invariants.

    Returns the final graph and the retie pass's report.
    """
    step(f"storing each tie once ({len(ties)} tied layer(s) found by Keras)")
    versions = _versions(opset)
    plain.producer_name, plain.producer_version = "tiedonnx", versions["tiedonnx"]
    write_metadata(plain, {"tiedonnx.versions": json.dumps(versions, sort_keys=True)})
    located = locate_ties(ties, plain)  # the Keras ties, matched to tf2onnx's initializers once
    pass_options = ExportPassOptions(
        prefer=[s.keras_layout for s in located if s.keras_layout],
        describe=lambda proto: describe_stored_ties(keras_model, proto, located),
        precision=precision, precision_options=options, short_names=short_names, on_step=step)
    proto, passes = run_export_passes(plain, pass_options, extra=graph_passes)
    step("checking the graph (onnx.checker) and that no weight is stored twice")
    _prove_invariants(proto)
    return proto, passes[0].detail


def _check_parity(keras_model, proto, step, batch_sizes, precision: str, input_spec) -> ParityReport:
    """Compare Keras and onnxruntime outputs (raises ParityError before anything is written)."""
    # over 2 GiB the large weights go to onnxruntime beside the graph (open_proto_session)
    step(f"checking parity against Keras at batch sizes {list(batch_sizes)}")
    return verify_parity(keras_model, proto, batch_sizes=batch_sizes, precision=precision, input_spec=input_spec)


def _write_outputs(proto, path, ort_path, step, *, force: bool, external_threshold: int | None):
    """Write the ``.onnx`` (and its external data when large), then the ``.ort`` copy if asked."""
    threshold = model_save.EXTERNAL_DATA_THRESHOLD if external_threshold is None else external_threshold
    step(f"writing {path}")
    saved = model_save.save_model(proto, path, force=force, threshold=threshold)
    if ort_path is not None:
        from tiedonnx.runtime.graph.ort_format import save_ort

        save_ort(proto, ort_path, force=force)
    return saved


def _report(path, ort_path, saved, proto, retie_report, parity, *, opset: int, precision: str,
            convert_seconds: float, start: float) -> ExportReport:
    """The :class:`ExportReport` of a finished export (logged at info)."""
    report = ExportReport(
        path=str(path), bytes=saved.total_bytes, untied_bytes=untied_bytes(proto, saved.total_bytes),
        plain_bytes=retie_report.bytes_before, opset=opset,
        precision=precision, ties=read_ties(proto), folded=len(retie_report.folded), parity=parity,
        convert_seconds=convert_seconds, total_seconds=time.perf_counter() - start,
        ort_path=str(ort_path) if ort_path else None,
        data_path=str(saved.data_path) if saved.data_path else None,
    )
    logger.info("exported %s: %d bytes (%d untied), %d tie(s)", path, report.bytes,
                report.untied_bytes, len(report.ties))
    return report
