"""ORT-format (``.ort``) files for ORT Mobile and minimal builds, one copy per tie.

onnxruntime's own converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``)
saves the model after its graph optimizations, and constant folding evaluates
``Transpose(W)`` into a second initializer: the tie is stored twice (a tied
808,103-byte fp32 file becomes a 1,613,688-byte ``.ort``). Here the same
session-based save runs the *extended* optimizations (operator fusions such as
``FusedGemm`` and ``DynamicQuantizeMatMul``, which read the shared tensor in
place) with ``ConstantFolding`` disabled, and without the layout-specific
``ORT_ENABLE_ALL`` level, so the file is not tied to one CPU. The written file
is then read back: each tie must still be one initializer (otherwise the save
is redone with every optimization off, which keeps the graph as it is), and it
must load in onnxruntime. The required-operators config that a minimal build
(``build.py --include_ops_by_config``) needs is written beside it.

Imports onnx, numpy and onnxruntime only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import ConversionError, ModelFileError, short_error
from .metadata import read_ties
# The read side (checks before onnxruntime loads an .ort) lives in .ort_read; re-exported here.
from .ort_read import ORT_IDENTIFIER, is_ort_file, ort_schema, read_ort_metadata, read_ort_model  # noqa: F401

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_SUFFIX", "ORT_IDENTIFIER", "OrtReport", "config_path_for", "is_ort_file", "load_onnx",
           "ort_initializers", "read_ort_metadata", "read_ort_model", "save_ort"]

CONFIG_SUFFIX = ".required_operators.config"
# Fusions only; ConstantFolding would materialize Transpose(W) as a copy.
_DISABLED = ["ConstantFolding"]


def config_path_for(out_path: str | os.PathLike) -> Path:
    """Where :func:`save_ort` writes the required-operators config for ``out_path``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + CONFIG_SUFFIX)


def ort_initializers(path_or_bytes: str | os.PathLike | bytes, *, with_data: bool = False) -> list[dict]:
    """Name, dims, ONNX dtype and byte size of every main-graph initializer of an ``.ort`` file.

    With ``with_data``, each entry also has ``raw``: its bytes as a uint8 array.
    """
    fbs = ort_schema()

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    buf = bytearray(data)
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
        raise ModelFileError("Not an ORT-format model (missing the ORTM identifier). "
                             f"Received {len(data)} bytes. Pass a file written by save_ort.")
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buf, 0).Model().Graph()
    out = []
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        out.append({"name": t.Name().decode(), "dims": [int(d) for d in t.DimsAsNumpy()]
                    if t.DimsLength() else [], "data_type": t.DataType(), "bytes": t.RawDataLength()})
        if with_data:
            out[-1]["raw"] = t.RawDataAsNumpy() if t.RawDataLength() else np.zeros(0, np.uint8)
    return out


def load_onnx(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    """``model`` itself, or the checked model read from that path (see ``runtime.model_file``)."""
    if isinstance(model, onnx.ModelProto):
        return model
    from ..model_file import read_model

    return read_model(model).proto


def _save_session(model_bytes: bytes, dst: Path, *, optimize: bool) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=_DISABLED if optimize else None)


def _split_ties(model: onnx.ModelProto, ort_file: Path) -> list[str]:
    """Ties not stored exactly once, under their own name, in the ``.ort`` file.

    A copy is any other initializer of the same dtype and size holding the
    same multiset of values (a transpose or reshape of the stored tensor).
    """
    from onnx import numpy_helper

    inits = ort_initializers(ort_file, with_data=True)
    stored = {i.name: i for i in model.graph.initializer}
    broken = []
    for tie in read_ties(model):
        proto = stored.get(tie.initializer)
        if proto is None:
            continue
        values = np.sort(numpy_helper.to_array(proto).ravel())
        copies = [i["name"] for i in inits if i["data_type"] == proto.data_type
                  and i["bytes"] == values.nbytes
                  and np.array_equal(np.sort(i["raw"].view(values.dtype)), values,
                                          equal_nan=values.dtype.kind == "f")]
        if copies != [proto.name]:
            broken.append(proto.name)
    return broken


def _write_config(ort_file: Path, dst: Path, label: str) -> dict[str, list[str]]:
    from onnxruntime.tools.ort_format_model import create_config_from_models

    # onnxruntime's tools log each written config at INFO on their own handler.
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tiedonnx-ortcfg-") as tmp:
        raw = Path(tmp) / "ops.config"
        create_config_from_models([ort_file], raw, False)
        lines = [ln for ln in raw.read_text().splitlines() if ln and not ln.startswith("#")]
    dst.write_text(f"# Generated by tiedonnx from model: {label}\n" + "".join(f"{ln}\n" for ln in lines))
    ops = {}
    for line in lines:
        domain, opset, names = line.split(";")
        ops[f"{domain};{opset}"] = names.split(",")
    return ops


@dataclass
class OrtReport:
    """What :func:`save_ort` wrote.

    Attributes:
        operators: ``"domain;opset"`` -> op types (the required-operators config).
        optimized: False when the optimized save split a tie and the
            unoptimized one was kept.
    """

    path: str
    bytes: int
    config_path: str
    operators: dict[str, list[str]] = field(default_factory=dict)
    optimized: bool = True
    initializers: int = 0
    ties: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def save_ort(model: onnx.ModelProto | str | os.PathLike, out_path: str | os.PathLike, *,
             force: bool = False) -> OrtReport:
    """Write ``model`` as an ORT-format file that keeps one initializer per tie.

    Args:
        model: an ONNX model or the path of one (fp32, fp16 or int8).
        out_path: the ``.ort`` file to write. The required-operators config is
            written next to it (see :func:`config_path_for`).
        force: overwrite existing files.

    Returns:
        An :class:`OrtReport`.

    Raises:
        OutputExistsError: a target exists and ``force`` is False.
        ModelFileError: the input cannot be read.
        ConversionError: onnxruntime cannot save or reload the model, or a tie
            is split even without optimizations.
    """
    from ..atomic import atomic_path, check_output_path

    out_path, config = Path(out_path), config_path_for(out_path)
    for path in (out_path, config):
        check_output_path(path, force=force)  # fail before any work
    proto = _ort_graph_form(load_onnx(model))
    model_bytes = proto.SerializeToString()
    with atomic_path(out_path, force=force) as tmp, atomic_path(config, force=force) as tmp_cfg:
        optimized = True
        try:
            _save_session(model_bytes, tmp, optimize=True)
            broken = _split_ties(proto, tmp)
            if broken:
                logger.warning("optimized ORT save split ties %s; saving unoptimized instead", broken)
                optimized = False
                _save_session(model_bytes, tmp, optimize=False)
                broken = _split_ties(proto, tmp)
            _check_loads(tmp)
        except Exception as exc:
            if isinstance(exc, ConversionError):
                raise
            raise ConversionError(f"onnxruntime could not write or reload the ORT-format file "
                                  f"({short_error(exc, 300)}). Check that the model loads with "
                                  "onnxruntime.") from exc
        if broken:
            raise ConversionError(f"The ORT-format file stores ties {broken} more than once. "
                                  "Please report this model.")
        operators = _write_config(tmp, tmp_cfg, out_path.name)
        inits = ort_initializers(tmp)
        size = tmp.stat().st_size
    logger.info("wrote %s (%d bytes) and %s", out_path, size, config)
    return OrtReport(path=str(out_path), bytes=size, config_path=str(config), operators=operators,
                     optimized=optimized, initializers=len(inits), ties=len(read_ties(proto)))


def _ort_graph_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in the form an ``.ort`` file runs fast: no per-call Transpose of a tie.

    onnxruntime loads an ``.ort`` without graph optimizations, so whatever the
    saving session did not fuse runs on every call. fp32 needs nothing here
    (the extended level fuses ``MatMul(A, Transpose(W))`` into
    ``FusedGemm(transB=1)`` over ``W``); int8's transposed uses become
    ``QGemm(transB=1)`` (:mod:`.int8_qgemm`). fp16 keeps its per-call ``Cast``
    of each float16 tie, and nothing at save time removes it while the file
    keeps the tie once in float16 (measured on the 784-256 model, 2-core AMD
    EPYC, onnxruntime 1.32):

    * onnxruntime loads an ``.ort`` with no constant folding: the only runtime
      optimization an ORT-format file can carry is the QDQ fusion
      (``QDQSelectorActionTransformer``), and prepacking reads initializers
      only, not a ``Cast``'s output;
    * the CPU provider has no float16 ``MatMul``/``Gemm`` kernel on x86-64:
      onnxruntime wraps a float16 ``MatMul`` in inserted ``Cast`` nodes
      (``InsertedPrecisionFreeCast_*``) and folds the weight to float32;
    * folding the ``Cast`` stores the tie in float32, which is an fp32 file;
      folding only the small bias ``Cast`` nodes was measured at 3.12x vs
      3.17x the ``.onnx`` (within noise), so it is not done.

    The ``Cast`` of the 784x256 tie costs 16 us per call on one thread (per-node
    profile) and 37 us on two, where onnxruntime splits it across the pool; the
    ``.onnx`` call is 18 us on two threads. The ``.ort``/``.onnx`` ratio at batch 1
    is therefore bounded at about 1.45x on one thread and 3.1x on two.
    """
    from .int8_qgemm import transposed_int8_to_qgemm

    from .edit import copy_model

    out, _ = transposed_int8_to_qgemm(copy_model(model))
    return out


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.load_model_format", "ORT")  # the temp name is not *.ort
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
