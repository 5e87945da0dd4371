"""Write a Triton Inference Server model repository for a tied ONNX file.

The repository uses Triton's ONNX Runtime backend::

    REPO_DIR/
      NAME/
        config.pbtxt      # backend, real input/output names, dtypes, dims,
                          # max_batch_size, dynamic batching, instance group
        1/model.onnx      # the tied file, byte for byte

The model is validated like every model tiedonnx reads
(:func:`tiedonnx.runtime.model_file.read_model`: onnx checker, size caps,
safe paths). The config is written in protobuf text format by hand (no Triton
package is needed to write it); the tests parse it with Triton's own schema
(``tritonclient``'s ``model_config_pb2``). ``onnx`` is imported lazily.

Example:
    >>> from tiedonnx.runtime.triton import write_model_repository
    >>> report = write_model_repository("ae.onnx", "models", max_batch_size=64)  # doctest: +SKIP
    >>> report["config_path"]  # doctest: +SKIP
    'models/ae/config.pbtxt'
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .atomic import write_bytes_atomic
from .errors import ModelFileError, OutputExistsError, UsageError

logger = logging.getLogger(__name__)

#: Largest batch Triton's dynamic batcher forms. 64 rows of a 784-wide float32
#: input is 200 KB, small enough for CPU instances, big enough to amortize a call.
DEFAULT_MAX_BATCH_SIZE = 64

#: How long the dynamic batcher waits to fill a batch. 100 us is the value
#: Triton's own dynamic-batching guide starts from: it adds at most 0.1 ms of
#: latency while letting concurrent requests merge.
MAX_QUEUE_DELAY_US = 100

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
VERSION = "1"

# ONNX TensorProto.DataType -> Triton DataType (model_config.proto).
_TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}

# Triton model names are folder names and URL path segments.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def write_model_repository(
    model_path: str | os.PathLike,
    repo_dir: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instances: int = 1,
    gpu: bool = False,
    force: bool = False,
) -> dict:
    """Write ``REPO_DIR/NAME/config.pbtxt`` and ``REPO_DIR/NAME/1/model.onnx``.

    Args:
        model_path: the tied ``.onnx`` file; copied unchanged.
        repo_dir: the model repository folder (created if its parent exists).
        name: the Triton model name; defaults to the model file's stem.
        max_batch_size: the largest batch the dynamic batcher forms. Every
            input and output must then have a dynamic first (batch) dimension,
            which Triton leaves out of ``dims``. ``0`` turns batching off:
            ``dims`` are the full shapes and no dynamic batcher is configured.
        instances: model instances (``instance_group.count``) per device.
        gpu: put the instances on GPUs (``KIND_GPU``) instead of CPUs.
        force: overwrite an existing ``config.pbtxt``/``model.onnx``.

    Returns:
        A report: ``name``, ``repository``, ``config_path``, ``model_path``,
        ``max_batch_size``, ``instances``, ``kind``, ``inputs`` and ``outputs``
        (each ``{"name", "data_type", "dims"}``) and the ``config`` text.

    Raises:
        UsageError: a bad option, or a model whose shapes do not fit batching.
        ModelFileError: the model file is missing, corrupt or fails the onnx checker.
        UnsafeModelError: the model points at data outside its folder.
        OutputExistsError: the files exist and ``force`` is False.
    """
    _check_options(max_batch_size=max_batch_size, instances=instances)
    model_path = Path(model_path)
    name = model_path.stem if name is None else name
    _check_name(name)
    proto = _read_checked(model_path)
    inputs, outputs = _signature(proto, model_path, max_batch_size=max_batch_size)
    data = model_path.read_bytes()  # copied as it is, byte for byte
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    config = render_config(name=name, inputs=inputs, outputs=outputs,
                           max_batch_size=max_batch_size, instances=instances, kind=kind)
    model_dir = Path(repo_dir) / name
    config_path = model_dir / CONFIG_FILENAME
    onnx_path = model_dir / VERSION / MODEL_FILENAME
    _prepare_dirs(Path(repo_dir), onnx_path.parent, targets=(config_path, onnx_path), force=force)
    # Model first: a Triton server polling the repository only picks the
    # model up once config.pbtxt is there, and then the file is complete.
    write_bytes_atomic(onnx_path, data, force=force)
    write_bytes_atomic(config_path, config.encode("utf-8"), force=force)
    logger.info("wrote Triton model %r to %s (%s x%d, max_batch_size=%d)",
                name, model_dir, kind, instances, max_batch_size)
    return {
        "name": name, "repository": str(repo_dir), "config_path": str(config_path),
        "model_path": str(onnx_path), "max_batch_size": max_batch_size,
        "instances": instances, "kind": kind, "inputs": inputs, "outputs": outputs,
        "config": config,
    }


def _check_options(*, max_batch_size: int, instances: int) -> None:
    problems = []
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        problems.append(f"max_batch_size must be an integer >= 0 (0 turns batching off). "
                        f"Received: max_batch_size={max_batch_size!r}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        problems.append(f"instances must be a positive integer. Received: instances={instances!r}")
    if problems:
        raise UsageError("; ".join(problems) + ".")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(
            "Triton model name must start with a letter, digit or underscore and contain only "
            f"letters, digits, '_', '.' and '-'. Received: name={name!r}. "
            "Pass another name (CLI: --name)."
        )


def _read_checked(path: Path):
    """The model, validated like every model tiedonnx reads (checker, safety, size)."""
    from .model_file import read_model  # lazy: imports onnx

    model_file = read_model(path)
    if model_file.has_external_data:
        raise UsageError(
            f"Model {str(path)!r} stores weights in external data files; a Triton repository "
            "copies one model.onnx. Save the model with its weights inside the file "
            "(tied models are small)."
        )
    return model_file.proto


def _signature(model, path: Path, *, max_batch_size: int) -> tuple[list[dict], list[dict]]:
    """Return Triton-style input and output specs read from the ONNX graph."""
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    problems: list[str] = []
    inputs = [_tensor_spec(v, "input", max_batch_size, problems) for v in graph_inputs]
    outputs = [_tensor_spec(v, "output", max_batch_size, problems) for v in model.graph.output]
    if problems:
        raise UsageError(f"Cannot write a Triton config for {str(path)!r}: " + "; ".join(problems))
    return inputs, outputs


def _tensor_spec(value, role: str, max_batch_size: int, problems: list[str]) -> dict:
    """One input/output as ``{"name", "data_type", "dims"}``; collects problems."""
    ttype = value.type.tensor_type
    data_type = _TRITON_TYPES.get(ttype.elem_type)
    if not value.type.HasField("tensor_type") or data_type is None:
        problems.append(f"{role} {value.name!r} has an element type Triton's ONNX Runtime "
                        f"backend cannot take (ONNX elem_type {ttype.elem_type})")
    if not ttype.HasField("shape"):
        problems.append(f"{role} {value.name!r} has no shape in the graph; "
                        "re-export with a static rank")
        return {"name": value.name, "data_type": data_type, "dims": []}
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
    if max_batch_size == 0:
        return {"name": value.name, "data_type": data_type, "dims": dims}
    if not dims or dims[0] != -1:
        problems.append(
            f"{role} {value.name!r} has shape {dims} (-1 = dynamic) but batching needs a "
            "dynamic first dimension; pass max_batch_size=0 (CLI: --max-batch-size 0) "
            "to serve it unbatched, or re-export with a dynamic batch dimension"
        )
        return {"name": value.name, "data_type": data_type, "dims": dims}
    return {"name": value.name, "data_type": data_type, "dims": dims[1:]}


def _prepare_dirs(repo_dir: Path, version_dir: Path, *, targets: tuple[Path, ...],
                  force: bool) -> None:
    """Check every target before writing any, then create the folders."""
    parent = repo_dir.parent if str(repo_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"Folder for the repository does not exist: {str(parent)!r}. "
                         "Create it first.")
    if repo_dir.exists() and not repo_dir.is_dir():
        raise UsageError(f"Repository path is not a folder: {str(repo_dir)!r}. "
                         "Pass a folder path.")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise OutputExistsError(
            f"Triton model files already exist: {', '.join(existing)}. "
            "Pass force=True (CLI: --force) to overwrite them, or choose another --name."
        )
    version_dir.mkdir(parents=True, exist_ok=True)


def render_config(*, name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  instances: int, kind: str) -> str:
    """Return ``config.pbtxt`` text (protobuf text format of ``inference.ModelConfig``)."""
    lines = [
        f"name: {_quote(name)}",
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        f"default_model_filename: {_quote(MODEL_FILENAME)}",
    ]
    for field, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{field} [")
        lines.append(",\n".join(_render_tensor(spec) for spec in specs))
        lines.append("]")
    if max_batch_size > 0:  # Triton rejects a dynamic batcher on unbatched models
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}",
              "  }", "]"]
    return "\n".join(lines) + "\n"


def _render_tensor(spec: dict) -> str:
    dims = spec["dims"]
    body = [f"    name: {_quote(spec['name'])}", f"    data_type: {spec['data_type']}"]
    if dims:
        body.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        # A batched tensor of shape [batch]: Triton wants non-empty dims, so it
        # is declared [1] and reshaped to [] for the backend.
        body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(body) + "\n  }"


def _quote(text: str) -> str:
    """Quote ``text`` as a protobuf text-format string (C escapes, UTF-8 as octal)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
