"""Tiny ONNX graphs built by hand for the runtime tests (no TensorFlow); not a test module.

``tied_ae`` mirrors what export + retie produce for a Dense/DenseTied
autoencoder: one initializer ``W`` read by the encoder's MatMul and, through a
``Transpose`` node, by the decoder's MatMul.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tiedonnx.runtime.testing import tied_autoencoder, tied_autoencoder_reference, tied_autoencoder_weights

OPSET = 17


def _model(nodes, inputs, outputs, inits, *, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def tied_weights(n_in: int = 8, n_h: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    return tied_autoencoder_weights(n_in, n_h, seed=seed)


def tied_ae(n_in: int = 8, n_h: int = 3, *, seed: int = 0, rank: int = 2) -> onnx.ModelProto:
    """x[?, n_in] -> sigmoid(sigmoid(x W + b1) W^T + b2); ``rank=3`` adds a middle axis."""
    return tied_autoencoder(n_in, n_h, seed=seed, rank=rank)


def tied_reference(x: np.ndarray, n_in: int = 8, n_h: int = 3, seed: int = 0) -> np.ndarray:
    return tied_autoencoder_reference(x, n_in, n_h, seed=seed)


def two_inputs() -> onnx.ModelProto:
    """a[?, 4] + b[?, 4] -> sum, and a * b -> prod: two inputs, two outputs."""
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4])  # noqa: E731
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    return _model(nodes, [vi("a"), vi("b")], [vi("sum"), vi("prod")], [])


def int_model(dtype=TensorProto.INT32) -> onnx.ModelProto:
    """ids[?, 3] (int) -> ids + 1."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    one = numpy_helper.from_array(np.ones(1, np_dtype), "one")
    return _model([helper.make_node("Add", ["ids", "one"], ["out"])],
                  [helper.make_tensor_value_info("ids", dtype, ["batch", 3])],
                  [helper.make_tensor_value_info("out", dtype, ["batch", 3])], [one])


def total_sum() -> onnx.ModelProto:
    """x[?, 4] -> scalar sum: an output without a batch axis."""
    return _model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])], [])


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


# Measured: float32 onnxruntime vs the float64 numpy reference differ by at most
# 6e-8 on these graphs; 1e-6 leaves room for other BLAS kernels.
REFERENCE_ATOL = 1e-6


def recorded_ties(model: onnx.ModelProto) -> list[dict]:
    """The tie record as the file stores it (JSON entries), for structure assertions."""
    from tiedonnx.runtime.graph.metadata import read_ties

    return [t.as_dict() for t in read_ties(model)]


def tied_graph(features: int = 64, hidden: int = 16, *, untied: bool = False, seed: int = 0,
               scale: float = 0.3) -> onnx.ModelProto:
    """x -> sigmoid(x W + b1) -> sigmoid(h W^T + b2); ``untied`` stores W^T as a copy (exporter form)."""
    return tied_autoencoder(features, hidden, untied=untied, seed=seed, batch="N",
                            transposed_name="W_T", weight_scale=scale, bias_scale=0.1)


def run(model: onnx.ModelProto | str, x: np.ndarray, *, optimized_path=None) -> np.ndarray:
    so = ort.SessionOptions()
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def resolve(graph: onnx.GraphProto, name: str) -> str:
    """Follow Transpose / Identity nodes back to the initializer a tensor comes from."""
    producers = {o: n for n in graph.node for o in n.output}
    while name in producers and producers[name].op_type in ("Transpose", "Identity"):
        name = producers[name].input[0]
    return name


def tiny_decoder_folder(folder, *, vocab: int = 11, heads: int = 2, dim: int = 3, seed: int = 0,
                        max_length: int = 16):
    """A generation folder built by hand (no TensorFlow): one layer whose cache is the token embedding.

    ``logits = E[ids] @ E^T`` (the tie, through a Transpose); ``present`` = past
    concatenated with ``E[ids]`` viewed as ``[batch, heads, sequence, dim]``.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    (folder / "onnx").mkdir(parents=True)
    emb = np.random.default_rng(seed).standard_normal((vocab, heads * dim)).astype(np.float32)
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["h"]),
        helper.make_node("Transpose", ["E"], ["E_T"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "E_T"], ["logits"]),
        helper.make_node("Shape", ["input_ids"], ["bt"]),
        helper.make_node("Concat", ["bt", "hd"], ["split_shape"], axis=0),
        helper.make_node("Reshape", ["h", "split_shape"], ["h4"]),
        helper.make_node("Transpose", ["h4"], ["kv"], perm=[0, 2, 1, 3]),
        helper.make_node("Concat", ["past_key_values.0.key", "kv"], ["present.0.key"], axis=2),
        helper.make_node("Concat", ["past_key_values.0.value", "kv"], ["present.0.value"], axis=2),
    ]
    past = [helper.make_tensor_value_info(f"past_key_values.0.{k}", f, ["batch", heads, "past", dim])
            for k in ("key", "value")]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "sequence", vocab])] + [
        helper.make_tensor_value_info(f"present.0.{k}", f, ["batch", heads, "total", dim]) for k in ("key", "value")]
    inits = [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(np.array([heads, dim], np.int64), "hd")]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "sequence"])
    onnx.save(_model(nodes, [ids, *past], outputs, inits), str(folder / "onnx" / "model.onnx"))
    config = {"format_version": 1, "model_file": "onnx/model.onnx", "precision": "fp32", "family": "Hand",
              "num_layers": 1, "num_kv_heads": heads, "head_dim": dim, "vocabulary_size": vocab,
              "max_length": max_length, "cache_dtype": "float32", "eos_token_ids": [],
              "defaults": {"sampler": "greedy"}, "tokenizer": None}
    (folder / "tiedonnx.json").write_text(json.dumps(config))
    return emb
