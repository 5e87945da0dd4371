"""onnxruntime sessions over checked model files and in-memory models of any size.

``load`` (in :mod:`tiedonnx.runtime.session`) builds on these; the converter's
parity check uses :func:`open_session` / :func:`open_proto_session` directly.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import numpy as np
import onnxruntime as ort

from .errors import ModelFileError, UsageError, short_error
from .model_file import PROTOBUF_LIMIT, read_model

def onnx_session(path, options, providers, *, memory: str, max_bytes: int) -> ort.InferenceSession:
    """Session over a checked ``.onnx`` (lean: rewritten first); our copies freed before it returns."""
    # fast: onnxruntime validates the graph (see read_model's check_graph); lean
    # rewrites the graph first, so onnx's checker sees it before the rewrite.
    model_file = read_model(path, max_bytes=max_bytes, check_graph=memory != "fast")
    extra: dict = {}
    proto = model_file.proto
    if memory == "lean":
        from .lean import lean_rewrite

        proto, report = lean_rewrite(proto)
        for key, value in report.session_config.items():
            options.add_session_config_entry(key, value)
        if report.disabled_optimizers:
            extra["disabled_optimizers"] = report.disabled_optimizers
    if proto.ByteSize() >= PROTOBUF_LIMIT:
        if memory == "lean":  # the rewritten graph exists in memory only
            return open_proto_session(proto, options, providers=providers, label=str(path), **extra)
        del proto, model_file.proto
        return open_session(str(path), options, providers=providers, label=str(path), **extra)
    source = proto.SerializeToString()
    del proto, model_file.proto
    return open_session(source, options, providers=providers, label=str(path), **extra)


def ort_format_session(path, options, providers, *, memory: str,
                        max_bytes: int) -> ort.InferenceSession:
    """Session over a checked ``.ort`` file, which onnxruntime runs as saved (no graph rewrite)."""
    from .graph.ort_format import read_ort_model

    if memory != "fast":
        raise UsageError(
            f"memory={memory!r} rewrites the ONNX graph, and {str(path)!r} is an ORT-format file, "
            "which onnxruntime runs as saved. Load the .onnx it was made from with memory='lean', "
            "or load the .ort with memory='fast'.")
    data = read_ort_model(path, max_bytes=max_bytes)
    options.add_session_config_entry("session.load_model_format", "ORT")
    return open_session(data, options, providers=providers, label=str(path),
                        fix="The file is not a valid ORT-format model for this onnxruntime; write "
                            "it again with `tiedonnx ort` from the .onnx.")



def release_freed_memory() -> None:
    """Give the heap pages freed by loading back to the system.

    Loading holds the parsed proto and its serialized bytes (two copies of
    every weight) until the session exists; both are freed by reference
    counting as soon as ``load`` drops them (``model_file._all_tensors`` no
    longer leaves a reference cycle that kept the proto for the cycle
    collector). glibc then keeps freed pages below the top of its heap
    resident until ``malloc_trim`` (a no-op where libc has none). Measured on
    a 4096x2048 tie (2-core AMD EPYC, onnxruntime 1.32, fresh process): RSS
    growth over ``load`` 73.45 MiB, ``InferenceSession(path)`` 73.45 MiB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once; None off Linux or without glibc (musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def open_session(source, options=None, *, providers, label: str, fix: str | None = None,
                 **kwargs) -> ort.InferenceSession:
    """``ort.InferenceSession`` whose refusals become one-line :class:`ModelFileError`.

    A model can pass ``onnx.checker`` and still be refused by onnxruntime (an
    opset it does not implement, an op without a kernel); that is bad input,
    not a crash.
    """
    try:
        return ort.InferenceSession(source, options, providers=providers, **kwargs)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        fix = fix or "Re-export it with a supported opset and standard ops (see `tiedonnx inspect`)."
        raise ModelFileError(f"onnxruntime cannot load model {label!r}: {short_error(exc, 300)}. {fix}") from None


#: Above protobuf's limit, initializers of at least this many bytes go to
#: onnxruntime beside the serialized graph (:func:`open_proto_session`).
DETACH_BYTES = 1 << 20
_IN_MEMORY = "tiedonnx-in-memory"  # the location the detached tensors claim; never read


def open_proto_session(proto, options=None, *, providers, label: str,
                       limit: int | None = None, **kwargs) -> ort.InferenceSession:
    """:func:`open_session` over an in-memory model (an ``onnx.ModelProto``) of any size.

    Under ``limit`` (default: protobuf's 2 GiB) the model is serialized. Above
    it, protobuf cannot serialize it: its large initializers are handed to
    onnxruntime as external initializers (``add_external_initializers``, which
    copies them into the session) and only the rest is serialized. ``proto``
    is restored before this returns, also when onnxruntime refuses the model.
    """
    import onnx  # only when a model is loaded (see test_runtime_light)

    limit = PROTOBUF_LIMIT if limit is None else limit
    if proto.ByteSize() < limit:
        return open_session(proto.SerializeToString(), options, providers=providers, label=label, **kwargs)
    options = options or ort.SessionOptions()
    detached = []
    try:
        for init in proto.graph.initializer:
            if len(init.raw_data) >= DETACH_BYTES and init.data_type != onnx.TensorProto.BFLOAT16:
                detached.append((init, init.raw_data, init.HasField("data_location")))
        names, values = [], []
        for init, raw, _ in detached:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            values.append(ort.OrtValue.ortvalue_from_numpy(
                np.frombuffer(raw, dtype).reshape(tuple(init.dims))))
            names.append(init.name)
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(len(raw)))):
                init.external_data.add(key=key, value=value)
        options.add_external_initializers(names, values)
        return open_session(proto.SerializeToString(), options, providers=providers, label=label, **kwargs)
    finally:
        for init, raw, had_location in detached:  # as it was, byte for byte
            del init.external_data[:]
            if had_location:
                init.data_location = onnx.TensorProto.DEFAULT
            else:
                init.ClearField("data_location")
            init.raw_data = raw
