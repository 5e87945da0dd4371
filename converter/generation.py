"""A KerasHub causal LM as a generation folder: a KV-cache decoder with the tie stored once.

The cache design (measured and chosen here):

* **Optimum's growing past, not a static buffer.** The decoder takes
  ``input_ids [batch, sequence]``, ``attention_mask [batch, past_sequence +
  sequence]`` (all ones: it carries the lengths) and, for each layer ``i``,
  ``past_key_values.{i}.key/value [batch, kv_heads, past_sequence, head_dim]``
  and returns ``logits [batch, sequence, vocabulary]`` and
  ``present.{i}.key/value`` with ``past_sequence + sequence`` positions. The
  first step passes a past of length 0; the prompt runs once, each new token
  is one step of length 1. This is the contract Hugging Face Optimum writes
  and transformers.js / onnxruntime-genai-style loops read, so other runtimes
  can load the folder. A static buffer updated in place (KerasHub's
  ``call_with_cache``) would copy the whole buffer through every traced step
  (``ScatterND`` writes a new tensor); the growing past copies only what
  exists. The fused decoders also run in place: their attention kernel writes
  into a buffer bound as both past and present (:mod:`.generation_fused`).
* **KerasHub's own layers compute the step.** :class:`CachedDecoder` builds
  the static cache KerasHub expects from the past plus ``sequence`` empty
  slots and calls the model's ``call_with_cache`` with the update index at
  ``past_sequence``. The one op tf2onnx cannot convert, ``ops.slice_update``
  (``XlaDynamicUpdateSlice``), is replaced while the step runs by the same
  result written as a concatenation (:func:`_concat_slice_update`), so every
  family with ``call_with_cache`` (GPT-2, OPT, Bloom, GPT-NeoX, Falcon, Llama,
  Mistral, Qwen, Qwen3, Gemma, Phi-3, SmolLM3, ...) converts without a
  per-family rewrite. Positions come from the update index (the mask's length
  less the new tokens), as in KerasHub; no ``position_ids`` and no padding in
  the mask are needed, because a batch of prompts of different lengths is
  generated as KerasHub does it (right-padded, every row stepped from the
  shortest prompt, prompt tokens forced where a row still has them).
* **Fewer nodes per step.** A small model's step is mostly per-node overhead
  (about 350 nodes on a 2-layer GPT-2), so three passes run on the decoder:
  the cache stacks' copies are folded (:mod:`~tiedonnx.runtime.graph.stack_pick`)
  and each Keras layer normalization (13 nodes as tf2onnx writes it) becomes
  one ``LayerNormalization`` (:mod:`~tiedonnx.runtime.graph.layer_norm`; opset
  17): 388 -> 328 nodes and 1.12x decode tokens/s on the tiny GPT-2; then
  tf2onnx's shape arithmetic around each ``Dense``/``einsum`` is cut
  (:mod:`~tiedonnx.runtime.graph.shape_chains`): 328 -> 216 nodes, 1.31x tokens/s
  (``python scripts/bench_decoder_passes.py`` times the decoder with and without each pass).
  Last, a reshaped or transposed view of an untied weight is stored as the weight
  (:mod:`~tiedonnx.runtime.graph.weight_views`), so the quantizers see every
  ``MatMul``'s weight (the attention output kernel stayed fp32 in int8 files).
* **GPT-2, Qwen and Llama are written, not traced** (:mod:`.generation_fused`:
  onnxruntime's fused ops, 47 nodes against 380 on a 2-layer Qwen; README
  "Generate text" has the speeds). Other families, head sizes that are not
  multiples of 16, and ``decoder="traced"`` take the traced path below; both
  pass the same parity check.
* **The tie stays one tensor** through :func:`tiedonnx.converter.export.export`
  (retie, precision, proofs); the folder's decoder is checked against Keras on
  steps with and without a past before anything is published.

Folder layout (``onnx/`` and the file names follow transformers.js's
conventions for the precision)::

    DIR/tiedonnx.json          what the runtime needs: layers, heads, head size,
                               maximum length, special token ids, default sampler
    DIR/onnx/model.onnx        the decoder (model_fp16 / model_quantized / model_q4.onnx)
    DIR/tokenizer.json         Hugging Face ``tokenizers`` file, when the model has a
                               byte-pair or SentencePiece (BPE, Unigram) tokenizer
                               (see :mod:`.lm_tokenizer`)
    DIR/config.json, DIR/generation_config.json   for transformers.js (GPT-2 family)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiedonnx.runtime.errors import ParityError, UsageError
from tiedonnx.runtime.generation_folder import (
    CONFIG_NAME, FORMAT_VERSION, MASK, MODEL_FILES, GenerationConfig, kv_input_names, kv_output_names)

from tiedonnx.runtime.options import DECODER_KINDS

from .generation_fused import decoder_writer
from .generation_write import _staging_folder, _write_transformers_config, folder_defaults

logger = logging.getLogger(__name__)

__all__ = ["DECODER_KINDS", "CachedDecoder", "GenerationExportReport", "decoder_model", "export_generation",
           "parity_feeds"]

#: The decoder's ONNX opset: 17 is the first with ``LayerNormalization``, which the
#: layer-norm fusion writes (runtime/graph/layer_norm.py; 12 nodes fewer per normalization).
GENERATION_OPSET = 17
# (batch, past length, new tokens) for parity: a prompt with no past (the first
# step), single-token steps after short and long pasts, and a multi-token
# continuation. Lengths stay under every tiny model's position table (64).
PARITY_STEPS = ((1, 0, 7), (3, 7, 1), (2, 33, 1), (1, 5, 4), (2, 0, 1))


@dataclass
class GenerationExportReport:
    """What :func:`export_generation` wrote."""

    folder: str
    model_file: str
    bytes: int
    precision: str
    config: GenerationConfig
    ties: list = field(default_factory=list)
    decoder: str = "traced"
    decoder_note: str | None = None
    parity_max_abs: float | None = None
    tokenizer: str | None = None
    total_seconds: float = 0.0

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("config", "ties")}
        d["config"] = self.config.as_dict()
        d["ties"] = [t.as_dict() for t in self.ties]
        return d


def _concat_slice_update(original):
    """``ops.slice_update`` along one axis as a concatenation (tf2onnx converts Slice and Concat)."""
    from keras import ops

    def slice_update(inputs, start_indices, updates):
        moving = [i for i, s in enumerate(start_indices) if not (isinstance(s, int) and s == 0)]
        if len(moving) != 1:  # not a cache write: leave it to Keras
            return original(inputs, start_indices, updates)
        axis, start = moving[0], start_indices[moving[0]]
        stop = start + ops.shape(updates)[axis]
        head = (slice(None),) * axis + (slice(None, start),)
        tail = (slice(None),) * axis + (slice(stop, None),)
        return ops.concatenate([inputs[head], ops.cast(updates, inputs.dtype), inputs[tail]], axis=axis)

    return slice_update


@contextlib.contextmanager
def _cache_writes_as_concat():
    import keras

    original = keras.ops.slice_update
    keras.ops.slice_update = _concat_slice_update(original)
    try:
        yield
    finally:
        keras.ops.slice_update = original


@functools.lru_cache(maxsize=None)
def _make_cached_decoder_class():
    import keras
    from keras import ops

    class _CachedDecoder(keras.layers.Layer):
        """One generation step of a KerasHub ``CausalLM`` with Optimum's growing past (see module doc)."""

        def __init__(self, lm, num_layers: int, **kwargs):
            super().__init__(**kwargs)
            self.lm = lm
            self.num_layers = num_layers

        def call(self, input_ids, attention_mask, past):
            batch, new = ops.shape(input_ids)[0], ops.shape(input_ids)[1]
            past_length = ops.shape(attention_mask)[1] - new  # the contract's lengths (see module doc)
            layers = []
            for i in range(self.num_layers):
                key = ops.transpose(past[2 * i], (0, 2, 1, 3))  # KerasHub: [batch, seq, heads, dim]
                value = ops.transpose(past[2 * i + 1], (0, 2, 1, 3))
                empty = ops.zeros((batch, new, ops.shape(key)[2], ops.shape(key)[3]), key.dtype)
                layers.append(ops.stack([ops.concatenate([key, empty], 1), ops.concatenate([value, empty], 1)], 1))
            with _cache_writes_as_concat():
                logits, _, cache = self.lm.call_with_cache(input_ids, ops.stack(layers, axis=1), past_length)
            outputs = {"logits": ops.cast(logits, "float32")}
            for i, (k, v) in enumerate(zip(*[iter(kv_output_names(self.num_layers))] * 2)):
                layer = cache[:, i]  # two single picks, which graph.stack_pick folds (not one double pick)
                outputs[k] = ops.transpose(layer[:, 0], (0, 2, 1, 3))
                outputs[v] = ops.transpose(layer[:, 1], (0, 2, 1, 3))
            return outputs

    return _CachedDecoder


def CachedDecoder(lm, num_layers: int, **kwargs):  # noqa: N802 (a class made on first use: Keras is imported lazily)
    """The Keras layer that runs one cached step of ``lm`` (see the module docstring)."""
    return _make_cached_decoder_class()(lm, num_layers, **kwargs)


def cache_shape(lm) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) from the cache KerasHub builds for ``lm``.

    Raises:
        UsageError: ``lm`` is not a KerasHub causal LM with a text-only cache.
    """
    from keras import ops

    if not (hasattr(lm, "call_with_cache") and hasattr(lm, "_build_cache") and hasattr(lm, "backbone")):
        raise UsageError(
            f"Generation export needs a KerasHub CausalLM (a model with call_with_cache). Received: "
            f"{type(lm).__name__}. Export it without task='generate' (CLI: without --task generate).")
    try:
        _, cache = lm._build_cache(ops.zeros((1, 1), "int32"))
    except TypeError as exc:  # multimodal models (Gemma3, PaliGemma) build their cache from images too
        raise UsageError(f"{type(lm).__name__} builds its cache from more than token ids ({exc}); "
                         "generation export supports text-only causal LMs.") from None
    shape = tuple(int(d) for d in cache.shape)
    if len(shape) != 6 or shape[2] != 2:
        raise UsageError(f"{type(lm).__name__}'s cache has shape {shape}, not [batch, layers, 2, length, "
                         "heads, head_dim]; generation export does not support this family yet.")
    return shape[1], shape[4], shape[5]


def decoder_model(lm, shape: tuple[int, int, int] | None = None):
    """A functional Keras model of one cached step: Optimum's inputs and outputs, by name.

    ``shape`` is :func:`cache_shape` of ``lm`` when the caller has it (it traces a step to find it).
    """
    import keras

    layers, heads, dim = shape or cache_shape(lm)
    ids = keras.Input((None,), dtype="int64", name="input_ids")  # int64 as in Optimum (transformers.js feeds int64)
    mask = keras.Input((None,), dtype="int64", name=MASK)
    past = [keras.Input((heads, None, dim), dtype=lm.compute_dtype, name=n) for n in kv_input_names(layers)]
    outputs = CachedDecoder(lm, layers, name="decoder")(ids, mask, past)
    return keras.Model({"input_ids": ids, MASK: mask, **{p.name: p for p in past}}, outputs,
                       name="cached_decoder")


def parity_feeds(config: GenerationConfig, *, dtype: str = "float32", seed: int = 0) -> list[dict]:
    """Feeds for :data:`PARITY_STEPS`: token ids below the vocabulary, a random normal past."""
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, past, new in PARITY_STEPS:
        if config.max_length and past + new > config.max_length:
            continue
        feed = {"input_ids": rng.integers(0, config.vocabulary_size, (batch, new)).astype("int64"),
                MASK: np.ones((batch, past + new), "int64")}
        for name in kv_input_names(config.num_layers):
            feed[name] = rng.standard_normal((batch, config.num_kv_heads, past, config.head_dim)).astype(dtype)
        feeds.append(feed)
    return feeds


def _max_length(lm, asked: int | None) -> int | None:
    backbone_limit = getattr(lm.backbone, "max_sequence_length", None)
    if asked is not None:
        if not isinstance(asked, int) or isinstance(asked, bool) or asked < 2:
            raise UsageError(f"max_length must be an integer >= 2. Received: max_length={asked!r}.")
        if backbone_limit and asked > backbone_limit:
            raise UsageError(f"max_length={asked} exceeds the model's position table ({backbone_limit}). "
                             f"Pass max_length <= {backbone_limit}.")
        return asked
    return backbone_limit if isinstance(backbone_limit, int) else None


def _sampler_settings(lm) -> dict:
    sampler = getattr(lm, "sampler", None)
    name = type(sampler).__name__.replace("Sampler", "").lower() if sampler is not None else "greedy"
    name = {"topk": "top_k", "topp": "top_p"}.get(name, name)
    settings = {"sampler": name if name in ("greedy", "top_k", "top_p") else "greedy"}
    for key in ("k", "p", "temperature"):
        value = getattr(sampler, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            settings[{"k": "top_k", "p": "top_p"}.get(key, key)] = value
    return settings


def generation_config(lm, *, shape: tuple[int, int, int], max_length: int | None, model_file: str,
                      precision: str, special: dict) -> GenerationConfig:
    layers, heads, dim = shape
    return GenerationConfig(
        format_version=FORMAT_VERSION, model_file=model_file, precision=precision,
        family=type(lm).__name__.removesuffix("CausalLM"), num_layers=layers, num_kv_heads=heads,
        head_dim=dim, vocabulary_size=int(lm.backbone.token_embedding.input_dim),
        max_length=_max_length(lm, max_length), cache_dtype=str(lm.compute_dtype),
        bos_token_id=special.get("bos"), add_bos_token=special.get("add_bos", False), eos_token_ids=special.get("eos", []),
        pad_token_id=special.get("pad"), defaults=_sampler_settings(lm),
        tokenizer="tokenizer.json" if special.get("tokenizer") else None)


def _verify_steps(decoder, proto_path: Path, config: GenerationConfig, precision: str) -> float:
    from .parity import verify

    worst, problems, mismatches = 0.0, [], []
    for feed in parity_feeds(config):
        try:
            worst = max(worst, verify(decoder, str(proto_path), inputs=feed, precision=precision).max_abs)
        except ParityError as exc:
            problems.append(str(exc))
            mismatches += exc.mismatches
    if problems:
        raise ParityError("The generation decoder does not match Keras: " + " | ".join(problems),
                          mismatches=mismatches)
    return worst


def _resolve_lm(model, *, unsafe: bool, import_modules):
    path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if path is not None and path.is_dir():
        from .lm_tokenizer import load_preset

        return load_preset(path)
    from .export import _resolve_model

    return _resolve_model(model, unsafe, import_modules)


def _export_decoder(decoder, staging: Path, precision: str, precision_options: dict, convert=None):
    """Export the decoder to ``staging/onnx/`` with the generation passes (unverified: the folder checks steps).

    Returns the file's path in the folder and the :class:`~tiedonnx.converter.export.ExportReport`.
    """
    from tiedonnx.runtime.graph.layer_norm import fuse_layer_norms
    from tiedonnx.runtime.graph.shape_chains import simplify_shape_chains
    from tiedonnx.runtime.graph.weight_views import fold_weight_views
    from tiedonnx.runtime.graph.stack_pick import fold_stack_picks

    from .export import export

    model_file = f"onnx/{MODEL_FILES[precision]}"
    (staging / "onnx").mkdir()
    report = export(decoder, staging / model_file, opset=GENERATION_OPSET, precision=precision, verify=False,
                    graph_passes=(fold_stack_picks, fuse_layer_norms, simplify_shape_chains, fold_weight_views),
                    convert=convert, **precision_options)
    return model_file, report


def export_generation(model, folder: str | os.PathLike, *, precision: str = "fp32", max_length: int | None = None,
                      verify: bool = True, force: bool = False, unsafe: bool = False, import_modules=(),
                      decoder: str = "auto", **precision_options) -> GenerationExportReport:
    """Write a generation folder for a KerasHub causal LM (see the module docstring).

    Args:
        model: a KerasHub ``CausalLM``, a ``.keras`` file of one, or a preset
            directory written by ``save_to_preset`` (its tokenizer comes along).
        folder: the folder to write (published in one rename when complete).
        precision: "fp32", "fp16", "int8" or "int4"; the tie is stored once in each.
        max_length: the longest sequence (prompt + new tokens) the folder allows;
            default the model's position table, or unbounded for rotary models.
        verify: check the decoder against Keras on cached steps before publishing.
        force: replace an existing folder.
        unsafe, import_modules: as in :func:`~tiedonnx.converter.export.export`.
        decoder: "auto" (default: the fused graph of :mod:`.generation_fused` for GPT-2, Qwen
            and Llama models, else traced), "fused" (refuse other models) or
            "traced" (tf2onnx through ``call_with_cache``, every family).
        **precision_options: block_size, symmetric, rounding, int8_ties, accuracy_level, per_channel,
            reduce_range, short_names. int4 folders default to ``accuracy_level=4`` (int8 activations).
            int8 folders default to ``per_channel=True`` (one scale per output channel); every
            folder defaults to ``short_names=True`` (tensor names t0, t1, ...: a smaller file).

    Returns:
        A :class:`GenerationExportReport`.

    Raises:
        UsageError: not a KerasHub causal LM, bad options, or an existing folder without ``force``.
        ConversionError, ParityError: as in :func:`~tiedonnx.converter.export.export`; nothing is written.
    """
    from tiedonnx.runtime.options import check_precision

    from .lm_tokenizer import write_tokenizer

    check_precision(precision)
    if decoder not in DECODER_KINDS:
        raise UsageError(f"decoder must be one of {', '.join(DECODER_KINDS)}. Received: decoder={decoder!r}.")
    folder_defaults(precision, precision_options)
    target = Path(folder)
    start = time.perf_counter()
    with _staging_folder(target, force=force) as staging:
        lm = _resolve_lm(model, unsafe=unsafe, import_modules=import_modules)
        shape = cache_shape(lm)
        keras_decoder = decoder_model(lm, shape)
        convert, chosen = decoder_writer(lm, shape, decoder)
        model_file, report = _export_decoder(keras_decoder, staging, precision, precision_options, convert)
        special = write_tokenizer(lm, staging)
        config = generation_config(lm, shape=shape, max_length=max_length, model_file=model_file, precision=precision,
                                   special=special)
        config.past_present_share_buffer = chosen["decoder"] == "fused"  # see generation_fused
        worst = _verify_steps(keras_decoder, staging / model_file, config, precision) if verify else None
        config.write(staging / CONFIG_NAME)
        _write_transformers_config(lm, config, staging)
    logger.info("generation folder %s: %s, %d bytes, %d tie(s)", target, model_file, report.bytes, len(report.ties))
    return GenerationExportReport(
        folder=str(target), model_file=model_file, bytes=report.bytes, precision=precision, config=config,
        ties=report.ties, decoder=chosen["decoder"], decoder_note=chosen["note"], parity_max_abs=worst,
        tokenizer=config.tokenizer,
        total_seconds=time.perf_counter() - start)
