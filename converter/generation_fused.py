"""The generation decoder of a GPT-2, Qwen or Llama KerasHub model, written with onnxruntime's fused ops.

Why: the traced decoder (:mod:`.generation`: KerasHub's ``call_with_cache``
through tf2onnx) is correct for every family, but one step of it is about 170
nodes per layer on a Qwen: each rotary embedding recomputed per layer and per
query/key, tf2onnx's shape arithmetic, the static cache emulated with slices
and concatenations, the key/value heads repeated with ``Tile``, and the cache
transposed from Optimum's ``[batch, heads, past, dim]`` to KerasHub's
``[batch, past, heads, dim]`` and back. On the 100M-parameter Qwen
(``scripts/bench_generate.py --config qwen-100m``) the matrix products took
about 15 ms of a 27 ms step; the rest was those nodes. onnxruntime-genai's
builder writes the same model with fused contrib ops and ran it at 70.8
tokens/s against the traced decoder's 36.5 (the previous stop's table). Written
here, the decoder decodes at genai's speed (README "Generate text").

So for the families whose layers are all of one known shape -- Qwen and
Llama (:func:`_llama_layers`), GPT-2 (:func:`_gpt2_layers`) -- the decoder is
written here directly from the Keras weights, with the contract unchanged
(Optimum's ``input_ids`` + ``past_key_values.{i}.key/value`` -> ``logits`` +
``present.{i}.key/value``). Qwen and Llama::

    x = Gather(E, input_ids)                          E: the tie, [vocabulary, hidden], stored once
    per layer:
      h, x = SkipSimplifiedLayerNormalization(o, x)   (the first layer: the RMS norm written out,
                                                       which onnxruntime fuses at session start)
      qkv = MatMul(h, [Wq Wk Wv]) (+ bias)            one packed projection
      a, present.key, present.value = GroupQueryAttention(qkv, past.key, past.value, cos, sin)
      h, x = SkipSimplifiedLayerNormalization(MatMul(a, Wo), x)
      o = MatMul(silu(MatMul(h, Wg)) * MatMul(h, Wu), Wd)
    logits = MatMul(SkipSimplifiedLayerNormalization(o, x), Transpose(E))

GPT-2 is the same frame with its own blocks: the learned position rows
``Slice``d at the past length and added to the lookup, ``LayerNormalization``
then ``SkipLayerNormalization`` (which also adds the attention and MLP output
biases), ``GroupQueryAttention`` with as many key/value heads as query heads
and no rotary, and ``FastGelu`` (the tanh GELU KerasHub's GPT-2 uses, with the
intermediate bias).

``GroupQueryAttention`` applies the rotary embedding (``do_rotary``, halves
rotated as KerasHub does), appends the new keys and values to the past, reads
the key/value heads without repeating them, and masks causally. The rotary
table is computed once per step from the positions
(``Range(total) x inverse frequencies``, the frequencies taken from the model's
own ``RotaryEmbedding``, so its scaling variants come along), so the file
holds no position table and the length stays unbounded. Before anything is
written, the table is compared with the one the Keras layer computes; any
layer that differs from the shape above, a non-float32 model, or a rotary
variant this cannot express returns ``None`` with the reason, and the caller
traces the model instead. The folder's parity check against Keras then runs
on the result as on any decoder.

The lengths come from ``attention_mask [batch_size, total_sequence_length]``
(Optimum's input; every row is stepped at one position, so only its length is
read): the past length is the mask's length less the new tokens, not the
past's own length. So the same graph runs two ways:

* a growing past (transformers.js, the browser page): ``present`` is the past
  plus the new positions, a new tensor each step;
* one buffer per layer, shared (``past_present_share_buffer`` in
  ``tiedonnx.json``; the Python runtime): the caller allocates
  ``[batch, kv_heads, L, head_dim]`` once for the whole generation and binds it
  as both ``past`` and ``present``; ``GroupQueryAttention`` then writes only the
  new positions into it instead of copying the whole past into a new
  ``present`` every step. On the 100M Qwen (int4, a 128-token prompt then 128
  steps, onnxruntime's profiler) the attention took 1.10 ms per step copying
  and 0.73 ms in place, the same as onnxruntime-genai's graph in the same
  harness (0.75 ms); genai runs its decoders this way too.

The symbolic axes carry Optimum's names (``batch_size``,
``past_sequence_length``, ...): transformers.js fills an empty first past by
those names, and an axis named otherwise gets size 0 (a batch of 0, which the
kernel refuses).

One limit comes from onnxruntime's kernel: a step of more than one token
after a past needs batch 1 ("batch_size must be 1 when sequence_length > 1
and past context is given"). The runtime never makes such a step: a batch's
prompt runs with an empty past, then every step is one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiedonnx.runtime.errors import UsageError
from tiedonnx.runtime.generation_folder import MASK
from tiedonnx.runtime.graph.edit import MS_DOMAIN

from .fused_graph import BATCH, NEW, PAST, PRESENT, TOTAL, Graph, rms_norm, skip_layer_norm, skip_norm

__all__ = ["FUSED_FAMILIES", "decoder_writer", "fused_decoder"]

#: KerasHub backbones whose decoder this module writes (class names).
FUSED_FAMILIES = ("QwenBackbone", "LlamaBackbone", "GPT2Backbone")  # Mistral: a sliding window, not yet
#: Positions checked when comparing the rotary table with the Keras layer's.
_ROTARY_CHECK = 64


class _Unsupported(Exception):
    """The model is not of the shape this module writes (the message says how)."""


def _array(variable) -> np.ndarray:
    value = np.asarray(variable.numpy())
    if value.dtype != np.float32:
        raise _Unsupported(f"weight {variable.path} is {value.dtype}, not float32")
    return value


def _rotary(attention, head_dim: int) -> tuple[np.ndarray, float]:
    """The inverse frequencies ``[head_dim / 2]`` and the cos/sin factor of ``attention``'s rotary layer.

    Checked against the layer's own table for :data:`_ROTARY_CHECK` positions.
    """
    from keras import ops

    layer = getattr(attention, "rotary_embedding_layer", None)
    if layer is None or not hasattr(layer, "_get_inverse_freq") or not hasattr(layer, "_compute_cos_sin_embedding"):
        raise _Unsupported("the attention has no KerasHub RotaryEmbedding")
    inverse = np.asarray(ops.convert_to_numpy(layer._get_inverse_freq(head_dim)), np.float32)
    cos, sin = layer._compute_cos_sin_embedding(ops.zeros((1, _ROTARY_CHECK, 1, head_dim)), 0)
    cos = np.asarray(ops.convert_to_numpy(cos), np.float32).reshape(_ROTARY_CHECK, head_dim)
    sin = np.asarray(ops.convert_to_numpy(sin), np.float32).reshape(_ROTARY_CHECK, head_dim)
    half = head_dim // 2
    if inverse.shape != (half,) or not (np.array_equal(cos[:, :half], cos[:, half:])
                                        and np.array_equal(sin[:, :half], sin[:, half:])):
        raise _Unsupported("the rotary table is not two equal halves (rotate-half form)")
    angles = np.arange(_ROTARY_CHECK, dtype=np.float32)[:, None] * inverse[None, :]
    scale = cos[1, 0] / np.cos(angles[1, 0]) if np.cos(angles[1, 0]) else 1.0
    scale = float(np.float32(scale)) if abs(scale - 1.0) > 1e-6 else 1.0
    if not (np.allclose(np.cos(angles) * scale, cos[:, :half], atol=1e-5)
            and np.allclose(np.sin(angles) * scale, sin[:, :half], atol=1e-5)):
        raise _Unsupported(f"{type(layer).__name__} computes a rotary table other than positions x frequencies")
    return inverse, scale


def _check_layer(layer) -> None:
    names = ("_self_attention_layernorm", "_self_attention_layer", "_feedforward_layernorm",
             "_feedforward_gate_dense", "_feedforward_intermediate_dense", "_feedforward_output_dense")
    missing = [n for n in names if not hasattr(layer, n)]
    if missing:
        raise _Unsupported(f"decoder layer {layer.name} has no {', '.join(missing)}")
    activation = getattr(layer.activation, "__name__", str(layer.activation))
    if activation not in ("silu", "swish"):
        raise _Unsupported(f"decoder layer {layer.name}'s activation is {activation}, not silu")
    attention = layer._self_attention_layer
    if getattr(attention, "use_sliding_window_attention", False):
        raise _Unsupported("sliding-window attention")
    window = getattr(attention, "_sliding_window", None)
    if window is not None:
        raise _Unsupported(f"sliding-window attention ({window} positions)")
    for dense in (layer._feedforward_gate_dense, layer._feedforward_intermediate_dense,
                  layer._feedforward_output_dense, attention._output_dense):
        if getattr(dense, "bias", None) is not None:
            raise _Unsupported(f"{dense.name} has a bias")
    for norm in (layer._self_attention_layernorm, layer._feedforward_layernorm):
        if set(v.name for v in norm.weights) != {"scale"}:
            raise _Unsupported(f"{norm.name} is not an RMS norm with one scale")


@dataclass
class _Step:
    """What every layer of a step reads: the lengths (GroupQueryAttention's) and the cache names."""

    seqlens: str
    total: str
    total_length: str  # int64 [1]: past + new positions (the mask's length)
    new_length: str  # int64 [1]
    past: list
    present: list


def _step(g: Graph, num_layers: int) -> _Step:
    from onnx import TensorProto

    from tiedonnx.runtime.generation_folder import kv_input_names, kv_output_names

    ids = "input_ids"
    total64 = g.op("Shape", [MASK], start=1, end=2)  # not the past's length: a shared buffer is longer
    total32 = g.op("Cast", [total64], to=TensorProto.INT32)
    seqlens = g.op("Expand", [g.op("Sub", [total32, g.constant("one", np.array([1], np.int32))]),
                              g.op("Shape", [ids], start=0, end=1)])  # the past length is the same in every row
    return _Step(seqlens, g.op("Squeeze", [total32]), total64, g.op("Shape", [ids], start=1, end=2),
                 kv_input_names(num_layers), kv_output_names(num_layers))


def _attention(g: Graph, step: _Step, i: int, qkv: str, *, q_heads: int, kv_heads: int, head_dim: int,
               scale: float, rotary: tuple[str, str] | None) -> str:
    """``GroupQueryAttention`` over the packed projection ``qkv``: layer ``i``'s output; writes its present."""
    inputs = [qkv, "", "", step.past[2 * i], step.past[2 * i + 1], step.seqlens, step.total]
    out, _, _ = g.op("GroupQueryAttention", inputs + list(rotary or ()),
                     outputs=[g.name("attention"), step.present[2 * i], step.present[2 * i + 1]],
                     domain=MS_DOMAIN, num_heads=q_heads, kv_num_heads=kv_heads, do_rotary=int(rotary is not None),
                     rotary_interleaved=0, scale=scale)
    return g.typed(out, [BATCH, NEW, q_heads * head_dim])


def _packed_qkv(g: Graph, i: int, h: str, dense: tuple, hidden: int) -> str:
    """One MatMul (and one bias Add) for the query, key and value projections (EinsumDense kernels)."""
    qkv = g.op("MatMul", [h, g.constant(f"qkv{i}", np.concatenate([_array(d.kernel).reshape(hidden, -1)
                                                                  for d in dense], axis=1))])
    biases = [getattr(d, "bias", None) for d in dense]
    if all(b is None for b in biases):
        return qkv
    if any(b is None for b in biases):
        raise _Unsupported("only some of the query/key/value projections have a bias")
    return g.op("Add", [qkv, g.constant(f"qkv_bias{i}", np.concatenate([_array(b).ravel() for b in biases]))])


def _llama_layers(g: Graph, backbone, step: _Step, x: str, shape, hidden: int) -> str:
    """Qwen / Llama: RMS norms, rotary attention over grouped key/value heads, a SiLU-gated MLP."""
    from onnx import TensorProto

    layers = list(backbone.transformer_layers)
    for layer in layers:
        _check_layer(layer)
    attention = layers[0]._self_attention_layer
    _, kv_heads, head_dim = shape
    q_heads = int(attention.num_query_heads)
    if int(attention.num_key_value_heads) != kv_heads:
        raise _Unsupported("key/value heads differ from the cache's")
    inverse, rotary_scale = _rotary(attention, head_dim)
    total = g.op("Squeeze", [step.total_length])
    positions = g.op("Cast", [g.op("Range", [g.constant("zero", np.int64(0)), total, g.constant("step", np.int64(1))])],
                     to=TensorProto.FLOAT)  # 0 .. total - 1
    angles = g.op("Mul", [g.op("Unsqueeze", [positions, g.constant("axis", np.array([1], np.int64))]),
                          g.constant("inverse_frequencies", inverse.reshape(1, -1))])
    cos, sin = g.op("Cos", [angles]), g.op("Sin", [angles])
    if rotary_scale != 1.0:
        factor = g.constant("rotary_factor", np.float32(rotary_scale))
        cos, sin = g.op("Mul", [cos, factor]), g.op("Mul", [sin, factor])
    residual, pending = x, None
    for i, layer in enumerate(layers):
        att = layer._self_attention_layer
        norm = layer._self_attention_layernorm
        gamma = g.constant(f"attention_norm{i}", _array(norm.scale))
        if pending is None:
            h = rms_norm(g, residual, gamma, float(norm.epsilon))
        else:
            h, residual = skip_norm(g, pending, residual, gamma, float(norm.epsilon), hidden)
        qkv = _packed_qkv(g, i, h, (att._query_dense, att._key_dense, att._value_dense), hidden)
        out = _attention(g, step, i, qkv, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                         scale=float(att._inv_norm_factor), rotary=(cos, sin))
        attended = g.op("MatMul", [out, g.constant(f"attention_output{i}",
                                                   _array(att._output_dense.kernel).reshape(-1, hidden))])
        ff_norm = layer._feedforward_layernorm
        h, residual = skip_norm(g, attended, residual, g.constant(f"feedforward_norm{i}", _array(ff_norm.scale)),
                                 float(ff_norm.epsilon), hidden)
        gate = g.op("MatMul", [h, g.constant(f"gate{i}", _array(layer._feedforward_gate_dense.kernel))])
        up = g.op("MatMul", [h, g.constant(f"up{i}", _array(layer._feedforward_intermediate_dense.kernel))])
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        pending = g.op("MatMul", [g.op("Mul", [up, silu]),
                                  g.constant(f"down{i}", _array(layer._feedforward_output_dense.kernel))])
    final = backbone.layer_norm
    h = g.op("SkipSimplifiedLayerNormalization", [pending, residual, g.constant("final_norm", _array(final.scale))],
             outputs=1, domain=MS_DOMAIN, epsilon=float(final.epsilon))
    return g.typed(h, [BATCH, NEW, hidden])


def _layer_norm_weights(g: Graph, norm, name: str) -> tuple[str, str, float]:
    """``norm``'s gamma and beta as initializers, and its epsilon (a plain last-axis LayerNormalization only)."""
    import keras

    axis = getattr(norm, "axis", None)
    axes = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    if not isinstance(norm, keras.layers.LayerNormalization) or getattr(norm, "rms_scaling", False) \
            or not (norm.center and norm.scale) or axes not in ((-1,), (2,)):  # built: [2] for [batch, seq, hidden]
        raise _Unsupported(f"{norm.name} is not a last-axis LayerNormalization with a scale and a center")
    return (g.constant(f"{name}_gamma", _array(norm.gamma)), g.constant(f"{name}_beta", _array(norm.beta)),
            float(norm.epsilon))


def _gpt2_layers(g: Graph, backbone, step: _Step, x: str, shape, hidden: int) -> str:
    """GPT-2: learned positions, pre-norm LayerNorm blocks, multi-head attention, a tanh-GELU MLP."""
    _, heads, head_dim = shape
    table = _array(backbone.position_embedding.position_embeddings)
    rows = g.op("Slice", [g.constant("position_embeddings", table), g.op("Sub", [step.total_length, step.new_length]),
                          step.total_length, g.constant("axes", np.array([0]))])
    residual, pending, pending_bias = g.op("Add", [x, rows]), None, None
    for i, layer in enumerate(backbone.transformer_layers):
        if not getattr(layer, "normalize_first", False) or getattr(layer, "_cross_attention_layer", None):
            raise _Unsupported(f"{layer.name} is not a pre-norm decoder-only block")
        activation = getattr(layer._feedforward_intermediate_dense.activation, "__name__", "")
        if "gelu" not in activation:
            raise _Unsupported(f"{layer.name}'s activation is {activation}, not the tanh GELU")
        att = layer._self_attention_layer
        if int(att.num_heads) != heads or int(att.key_dim) != head_dim:
            raise _Unsupported("attention heads differ from the cache's")
        gamma, beta, eps = _layer_norm_weights(g, layer._self_attention_layer_norm, f"attention_norm{i}")
        if pending is None:
            h = g.op("LayerNormalization", [residual, gamma, beta], axis=-1, epsilon=eps)
        else:
            h, residual = skip_layer_norm(g, pending, residual, gamma, beta, pending_bias, eps, hidden)
        qkv = _packed_qkv(g, i, h, (att._query_dense, att._key_dense, att._value_dense), hidden)
        out = _attention(g, step, i, qkv, q_heads=heads, kv_heads=heads, head_dim=head_dim,
                         scale=1.0 / float(np.sqrt(head_dim)), rotary=None)
        attended = g.op("MatMul", [out, g.constant(f"attention_output{i}",
                                                   _array(att._output_dense.kernel).reshape(-1, hidden))])
        gamma, beta, eps = _layer_norm_weights(g, layer._feedforward_layer_norm, f"feedforward_norm{i}")
        h, residual = skip_layer_norm(g, attended, residual, gamma, beta,
                                       g.constant(f"attention_output_bias{i}", _array(att._output_dense.bias)),
                                       eps, hidden)
        inner = layer._feedforward_intermediate_dense
        up = g.op("MatMul", [h, g.constant(f"up{i}", _array(inner.kernel))])
        gelu = g.op("FastGelu", [up, g.constant(f"up_bias{i}", _array(inner.bias))], domain=MS_DOMAIN)
        g.typed(gelu, [BATCH, NEW, int(inner.units)])
        outer = layer._feedforward_output_dense
        pending = g.op("MatMul", [gelu, g.constant(f"down{i}", _array(outer.kernel))])
        pending_bias = g.constant(f"down_bias{i}", _array(outer.bias))
    gamma, beta, eps = _layer_norm_weights(g, backbone.layer_norm, "final_norm")
    h, _ = skip_layer_norm(g, pending, residual, gamma, beta, pending_bias, eps, hidden)
    return h


#: Backbone class -> the writer of its layers (and final norm).
_WRITERS = {"QwenBackbone": _llama_layers, "LlamaBackbone": _llama_layers, "GPT2Backbone": _gpt2_layers}


def _build(lm, shape: tuple[int, int, int], opset: int):
    from onnx import TensorProto, helper

    backbone = lm.backbone
    writer = _WRITERS.get(type(backbone).__name__)
    if writer is None:
        raise _Unsupported(f"{type(backbone).__name__} is not one of {', '.join(FUSED_FAMILIES)}")
    if str(lm.compute_dtype) != "float32":
        raise _Unsupported(f"compute dtype {lm.compute_dtype}")
    num_layers, kv_heads, head_dim = shape
    if head_dim % 16:
        raise _Unsupported(f"head size {head_dim}: onnxruntime's GroupQueryAttention takes multiples of 16")
    if len(backbone.transformer_layers) != num_layers:
        raise _Unsupported(f"{len(backbone.transformer_layers)} decoder layers against a cache of {num_layers}")
    embedding = backbone.token_embedding
    if getattr(embedding, "logit_soft_cap", None):
        raise _Unsupported("soft-capped logits")

    g = Graph()
    table = _array(embedding.embeddings)  # [vocabulary, hidden]
    vocabulary, hidden = table.shape
    tie = g.constant("token_embedding", table)
    x = g.op("Gather", [tie, "input_ids"], axis=0)
    step = _step(g, num_layers)
    h = writer(g, backbone, step, x, shape, hidden)
    if getattr(embedding, "tie_weights", True):
        projection = g.op("Transpose", [tie], perm=[1, 0])
    else:
        projection = g.constant("reverse_embeddings", _array(embedding.reverse_embeddings))
    g.op("MatMul", [h, projection], outputs=["logits"])

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, NEW]),
              helper.make_tensor_value_info(MASK, TensorProto.INT64, [BATCH, TOTAL])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [BATCH, kv_heads, PAST, head_dim])
               for n in step.past]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, NEW, vocabulary])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [BATCH, kv_heads, PRESENT, head_dim])
                for n in step.present]
    graph = helper.make_graph(g.nodes, "fused_decoder", inputs, outputs, g.initializers, value_info=g.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="tiedonnx")
    model.ir_version = 8  # onnxruntime-web 1.30 and older onnxruntime builds read IR 8
    return model


def fused_decoder(lm, shape: tuple[int, int, int], *, opset: int):
    """The decoder of ``lm`` written with fused ops, or ``(None, reason)`` when ``lm`` is not of that shape.

    Returns ``(ModelProto, None)`` or ``(None, reason)``; ``shape`` is (layers, key/value heads, head size).
    """
    try:
        return _build(lm, shape, opset), None
    except _Unsupported as exc:
        return None, str(exc)


def decoder_writer(lm, shape: tuple[int, int, int], kind: str):
    """The ``convert`` hook of :func:`~tiedonnx.converter.export.export` for ``export_generation(decoder=kind)``,
    and a record of what it chose.

    ``fused``: :mod:`.generation_fused` writes the graph (a UsageError if the model is not of its shape);
    ``traced``: tf2onnx traces ``call_with_cache``; ``auto``: fused where it applies, else traced.
    """
    chosen = {"decoder": "traced", "note": None}

    def convert(_keras_model, opset):
        if kind == "traced":
            return None, None
        proto, reason = fused_decoder(lm, shape, opset=opset)
        if proto is None and kind == "fused":
            raise UsageError(f"decoder='fused' cannot write {type(lm).__name__}: {reason}. "
                             "Use decoder='auto' or 'traced' (CLI: --decoder auto|traced).")
        chosen.update(decoder="fused" if proto is not None else "traced", note=reason)
        return proto, (f"no fused decoder ({reason})" if reason else None)

    return convert, chosen
