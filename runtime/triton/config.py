"""``config.pbtxt`` for a tied ONNX file: signature read from the graph, text rendered by hand.

The config is protobuf text format of Triton's ``inference.ModelConfig``,
written without any Triton package. The tests parse it with Triton's own
schema (``tritonclient``'s ``model_config_pb2``, strict parsing) and load it
in a real ``tritonserver`` (strict model config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UsageError

#: Backends a repository can be written for. ``onnxruntime``: Triton's ONNX
#: Runtime backend runs ``model.onnx``. ``python``: Triton's Python backend runs
#: ``model.py``, which serves ``model.onnx`` through :func:`tiedonnx.runtime.load`.
BACKENDS = ("onnxruntime", "python")

#: Largest batch Triton's dynamic batcher forms. 64 rows of a 784-wide float32
#: input is 200 KB, small enough for CPU instances, big enough to amortize a call.
DEFAULT_MAX_BATCH_SIZE = 64

#: How long the dynamic batcher waits to fill a batch. 100 us is the value
#: Triton's own dynamic-batching guide starts from: it adds at most 0.1 ms of
#: latency while letting concurrent requests merge.
MAX_QUEUE_DELAY_US = 100

MODEL_FILENAME = "model.onnx"
#: Python backend: config parameters ``model.py`` reads, and the ``memory=``
#: of :func:`tiedonnx.runtime.load` unless asked otherwise: serving keeps one
#: in-memory copy per tied weight (see :mod:`tiedonnx.runtime.lean`).
PARAM_MEMORY = "tiedonnx_memory"
PARAM_THREADS = "tiedonnx_threads"
#: "false" when one row's outputs depend on the other rows of its batch, so
#: requests that the dynamic batcher groups must still run one by one.
PARAM_MERGE = "tiedonnx_merge_requests"
# Ops whose per-row result depends on the whole batch: dynamic int8
# quantization picks one activation scale from the batch's min and max.
_ROW_COUPLED_OPS = {"DynamicQuantizeLinear"}
DEFAULT_SERVING_MEMORY = "lean"

# ONNX TensorProto.DataType -> Triton DataType (model_config.proto).
_TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}
# The Python backend exchanges tensors with the stub through DLPack (see
# serving.py), which has no strings; numpy has no bfloat16.
_PYTHON_BACKEND_REFUSES = {"TYPE_STRING", "TYPE_BF16"}


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as ``config.pbtxt`` declares it.

    ``dims`` leave out the batch axis when the model is batched; ``-1`` marks
    a dynamic axis.
    """

    name: str
    data_type: str | None
    dims: tuple[int, ...]

    def as_dict(self) -> dict:
        return {**asdict(self), "dims": list(self.dims)}


def read_signature(model, path: Path, *, max_batch_size: int,
                   backend: str) -> tuple[list[TritonTensor], list[TritonTensor]]:
    """The inputs and outputs of ``model`` (an ``onnx.ModelProto``) as Triton declares them.

    Raises:
        UsageError: every tensor that Triton (or the chosen backend) cannot
            serve, in one message.
    """
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    problems: list[str] = []
    inputs = [_tensor(v, "input", max_batch_size, backend, problems) for v in graph_inputs]
    outputs = [_tensor(v, "output", max_batch_size, backend, problems) for v in model.graph.output]
    if problems:
        raise UsageError(f"Cannot write a Triton config for {str(path)!r}: " + "; ".join(problems))
    return inputs, outputs


def _tensor(value, role: str, max_batch_size: int, backend: str,
            problems: list[str]) -> TritonTensor:
    """One input/output; appends what is wrong with it to ``problems``."""
    ttype = value.type.tensor_type
    data_type = _TRITON_TYPES.get(ttype.elem_type)
    if not value.type.HasField("tensor_type") or data_type is None:
        problems.append(f"{role} {value.name!r} has an element type Triton's ONNX Runtime "
                        f"backend cannot take (ONNX elem_type {ttype.elem_type})")
    elif backend == "python" and data_type in _PYTHON_BACKEND_REFUSES:
        problems.append(f"{role} {value.name!r} is {data_type}, which the Python backend "
                        "cannot pass as a numeric array; use backend='onnxruntime' "
                        "(CLI: --backend onnxruntime)")
    if not ttype.HasField("shape"):
        problems.append(f"{role} {value.name!r} has no shape in the graph; "
                        "re-export with a static rank")
        return TritonTensor(value.name, data_type, ())
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    if max_batch_size == 0:
        return TritonTensor(value.name, data_type, dims)
    if not dims or dims[0] != -1:
        problems.append(
            f"{role} {value.name!r} has shape {list(dims)} (-1 = dynamic) but batching needs a "
            "dynamic first dimension; pass max_batch_size=0 (CLI: --max-batch-size 0) "
            "to serve it unbatched, or re-export with a dynamic batch dimension"
        )
        return TritonTensor(value.name, data_type, dims)
    return TritonTensor(value.name, data_type, dims[1:])


def rows_are_independent(model) -> bool:
    """Whether each row's outputs depend on that row alone (no batch-wide op)."""
    return not any(node.op_type in _ROW_COUPLED_OPS for node in model.graph.node)


def render_config(*, name: str, backend: str, inputs: list[TritonTensor],
                  outputs: list[TritonTensor], max_batch_size: int, instances: int, kind: str,
                  default_model_filename: str | None = None,
                  parameters: dict[str, str] | None = None) -> str:
    """Return ``config.pbtxt`` text (protobuf text format of ``inference.ModelConfig``)."""
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}",
             f"max_batch_size: {max_batch_size}"]
    if default_model_filename:
        lines.append(f"default_model_filename: {_quote(default_model_filename)}")
    for field, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{field} [")
        lines.append(",\n".join(_render_tensor(spec) for spec in specs))
        lines.append("]")
    if max_batch_size > 0:  # Triton rejects a dynamic batcher on unbatched models
        lines += ["dynamic_batching {",
                  f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}",
              "  }", "]"]
    for key, value in (parameters or {}).items():
        lines += ["parameters {", f"  key: {_quote(key)}",
                  f"  value: {{ string_value: {_quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def _render_tensor(spec: TritonTensor) -> str:
    body = [f"    name: {_quote(spec.name)}", f"    data_type: {spec.data_type}"]
    if spec.dims:
        body.append(f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]")
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
