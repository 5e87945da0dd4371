"""Text generation over a generation folder: a KV cache in onnxruntime, no TensorFlow.

:func:`load_lm` opens a folder written by ``tiedonnx export ... --task generate``
(see :mod:`tiedonnx.converter.generation` for the decoder's contract) and
returns a :class:`LanguageModel`; :meth:`LanguageModel.generate` runs the
prompt once and then one decoder step per new token.

The cache never leaves onnxruntime, and only the logits of the last position
come out as an array. A folder whose ``tiedonnx.json`` says
``past_present_share_buffer`` (the fused decoders) gets one ``OrtValue`` per
``past_key_values.*`` input, as long as the whole generation (longest prompt +
``max_new_tokens``), allocated once and bound by I/O binding as both the past
and the matching ``present.*`` output: each step writes only its new
positions, and ``attention_mask`` (all ones, ``[batch, past + new]``) gives
the kernel the lengths. Before, every step copied the whole past into a new
``present`` (100M Qwen int4, 128 + 128 tokens: see README "Generate text").
Other folders grow the past: each step's ``present.*`` outputs are
``OrtValue`` s fed back as the next step's ``past_key_values.*`` (no copy into
numpy and back).

A batch of prompts of different lengths runs the way KerasHub's ``generate``
does, so each row's tokens are those it would get alone: tokens are laid out
right-padded, the prompt runs once up to the shortest prompt's length, then
every row advances one position per step; a row still inside its own prompt
is fed its prompt token (and draws no random number), the others their
sampled token. Each row stops after ``max_new_tokens`` of its own, or at a
stop token (kept as the row's last token).

``memory="auto"`` (the default) opens fp32 and fp16 folders with
``memory="lean"``: the logits projection then reads the stored embedding
through ``Gemm(transB=1)`` (:mod:`tiedonnx.runtime.lean`), and an fp32 tie is
listed as a graph input of the session's graph, so the tie is held once in
memory while every other weight stays pre-packed (100M Qwen fused fp32: 1.03x
the file, fast's decode speed). int8 and int4 folders open with ``"fast"``. An int8 tie is
held once there too: the lookup gathers columns of the stored ``[hidden,
vocabulary]`` tie (:mod:`tiedonnx.runtime.graph.lookup_axis`) and the tie is
also a graph input, which onnxruntime neither folds nor pre-packs, while the
other weights stay pre-packed (GPT-2 small int8: 141.1 MiB after session
start, 1.158x the file, against 177.9 MiB, 1.46x, unlisted; decode step
0.90x). ``memory="lean"`` on an int8 folder now runs the same session (its
tie is already an input, so nothing disables pre-packing; before, lean turned
it off: no smaller, about 0.6x the speed). A 4-bit tie is held twice:
``MatMulNBits`` pre-packs a copy of its own, and without pre-packing it runs
34x slower, so ``lean`` does not help int4 (2-layer, hidden 768, vocabulary
50257 int4: fast 83 MiB at 29.6 tokens/s, lean 91 MiB at 1.8).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelFileError, UsageError
from .generation_folder import MASK, GenerationConfig, check_decoder_io, kv_input_names, kv_output_names
from .sampling import Mulberry32, SamplerSettings, sample

logger = logging.getLogger(__name__)

__all__ = ["GenerationResult", "LanguageModel", "load_lm"]

#: ``callback(row, token_id, text)``: text is the new piece of decoded text (None without a tokenizer).
StreamCallback = Callable[[int, int, "str | None"], None]


@dataclass
class GenerationResult:
    """What :meth:`LanguageModel.generate` produced, per row, and how fast."""

    tokens: list[list[int]]
    text: list[str] | None
    prompt_tokens: list[int]
    finish_reasons: list[str]
    time_to_first_token_s: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second per row after the first token (0 when nothing was decoded)."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d


#: Session memory mode per folder precision for ``memory="auto"`` (see the module docstring).
AUTO_MEMORY = {"fp32": "lean", "fp16": "lean", "int8": "fast", "int4": "fast"}


def load_lm(folder: str | os.PathLike, *, providers="auto", memory: str = "auto",
            threads: int | None = None) -> LanguageModel:
    """Open a generation folder.

    Args:
        folder: a folder written by ``tiedonnx export ... --task generate``.
        providers, threads: as in :func:`tiedonnx.runtime.load`.
        memory: "auto" (default: :data:`AUTO_MEMORY` by the folder's precision), "lean" or "fast".

    Raises:
        ModelFileError: not a generation folder, or its decoder is not what ``tiedonnx.json`` says.
    """
    return LanguageModel(folder, providers=providers, memory=memory, threads=threads)


class LanguageModel:
    """A loaded generation folder. Create it with :func:`load_lm`."""

    def __init__(self, folder, *, providers="auto", memory: str = "auto", threads: int | None = None):
        from .session import load

        self.folder = Path(folder)
        self.config = GenerationConfig.read(self.folder)
        path = self.config.model_path(self.folder)
        if not path.is_file():
            raise ModelFileError(f"Generation folder {str(self.folder)!r} lacks its decoder {self.config.model_file!r}."
                                 " Export the folder again.")
        if memory == "auto":
            memory = AUTO_MEMORY.get(self.config.precision, "fast")
        self.model = load(path, providers=providers, memory=memory, threads=threads)
        self._session = self.model._session
        self._past_names = kv_input_names(self.config.num_layers)
        self._present_names = kv_output_names(self.config.num_layers)
        self._check_contract()
        self._device = "cuda" if self.model.providers[0] in ("CUDAExecutionProvider",
                                                             "TensorrtExecutionProvider") else "cpu"
        self._tokenizer = None

    def _check_contract(self) -> None:
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        self._mask = check_decoder_io(inputs, outputs, self.config, self.config.model_file)
        self._ids_dtype = np.int64 if self._session.get_inputs()[inputs.index("input_ids")].type == \
            "tensor(int64)" else np.int32

    @property
    def tokenizer(self):
        """The folder's Hugging Face tokenizer (``tokenizers.Tokenizer``).

        Raises:
            UsageError: the folder has no tokenizer, or ``tokenizers`` is not installed.
        """
        if self._tokenizer is None:
            if not self.config.tokenizer:
                raise UsageError(f"Generation folder {str(self.folder)!r} has no tokenizer: pass token ids "
                                 "(a list of ints) instead of text, or export a model that has its preprocessor.")
            from .extras import TOKENIZERS

            tokenizers = TOKENIZERS.load("Text prompts (token-id prompts need nothing more)")
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.folder / self.config.tokenizer))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, after the start token where the model's preprocessor adds one."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.config.bos_token_id, *ids] if self.config.add_bos_token else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens left out."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def generate(self, prompts, *, max_new_tokens: int = 32, sampler: str | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop_token_ids: Sequence[int] | None = None,
                 callback: StreamCallback | None = None) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after each prompt.

        Args:
            prompts: a string, a list of strings, a list of token ids, or a list of such lists.
            max_new_tokens: new tokens per row.
            sampler: "greedy", "top_k" or "top_p" (default: the model's, from the folder).
            temperature, top_k, top_p: sampler settings (defaults from the folder).
            seed: seeds :class:`~tiedonnx.runtime.sampling.Mulberry32` (default 0).
            stop_token_ids: ids that end a row (default: the tokenizer's end token); ``[]`` for none.
            callback: called as each token is produced, ``callback(row, token_id, text_piece)``.

        Returns:
            A :class:`GenerationResult`.

        Raises:
            InputError: an empty prompt, a token id outside the vocabulary, or a prompt that
                with ``max_new_tokens`` does not fit ``max_length``.
            UsageError: bad options, or text without a tokenizer.

        Example:
            >>> lm = load_lm("gpt2-gen")  # doctest: +SKIP
            >>> lm.generate("The tie", max_new_tokens=8).text[0]  # doctest: +SKIP
        """
        defaults = self.config.defaults
        settings = SamplerSettings.make(sampler or defaults.get("sampler", "greedy"), temperature=temperature,
                                        top_k=top_k, top_p=top_p, defaults=defaults)
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be an integer >= 1. Received: max_new_tokens={max_new_tokens!r}.")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise UsageError(f"seed must be an integer. Received: seed={seed!r}.")
        rows, texts = self._prompt_ids(prompts)
        self._check_fits(rows, max_new_tokens)
        stops = set(self.config.eos_token_ids if stop_token_ids is None else self._stop_ids(stop_token_ids))
        run = _Run(self, rows, max_new_tokens, settings, Mulberry32(0 if seed is None else seed), stops, callback,
                   decode=texts)
        return run.go()

    def _stop_ids(self, ids) -> list[int]:
        if isinstance(ids, (str, bytes)) or not all(isinstance(i, (int, np.integer)) for i in ids):
            raise UsageError(f"stop_token_ids must be a list of token ids. Received: {ids!r:.80}.")
        return [int(i) for i in ids]

    def _prompt_ids(self, prompts) -> tuple[list[list[int]], bool]:
        if isinstance(prompts, str):
            prompts = [prompts]
        elif isinstance(prompts, np.ndarray):
            prompts = prompts.tolist() if prompts.ndim == 2 else [prompts.tolist()]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InputError(f"prompts must be a string, a list of strings or a list of token-id lists. "
                             f"Received: {type(prompts).__name__} {prompts!r:.60}.")
        if all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in prompts):
            prompts = [list(prompts)]
        texts = all(isinstance(p, str) for p in prompts)
        rows = [self.encode(p) for p in prompts] if texts else [self._ids(p, i) for i, p in enumerate(prompts)]
        for i, row in enumerate(rows):
            if not row:
                raise InputError(f"Prompt {i} is empty (0 tokens). Give every prompt at least one token.")
        return rows, texts and self.config.tokenizer is not None

    def _ids(self, prompt, index: int) -> list[int]:
        if isinstance(prompt, np.ndarray):
            prompt = prompt.tolist()
        if not isinstance(prompt, (list, tuple)) or not all(
                isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in prompt):
            raise InputError(f"Prompt {index} must be text or a list of token ids. Received: {prompt!r:.60}. "
                             "Do not mix text and token ids in one batch.")
        bad = [int(t) for t in prompt if not 0 <= t < self.config.vocabulary_size]
        if bad:
            raise InputError(f"Prompt {index} has token ids outside the vocabulary [0, "
                             f"{self.config.vocabulary_size}): {bad[:5]}. Use ids the model's tokenizer produces.")
        return [int(t) for t in prompt]

    def _check_fits(self, rows: list[list[int]], max_new_tokens: int) -> None:
        limit = self.config.max_length
        longest = max(len(r) for r in rows)
        if limit is not None and longest + max_new_tokens > limit:
            room = limit - longest
            fix = (f"lower max_new_tokens to {room}" if room >= 1 else
                   f"shorten the prompt to at most {limit - 1} tokens")
            raise InputError(f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                             f"model's maximum length {limit}; {fix}.")


class _Run:
    """One call of :meth:`LanguageModel.generate`: the token table, the cache and the loop."""

    def __init__(self, lm: LanguageModel, rows, max_new_tokens, settings, rng, stops, callback, *, decode: bool):
        self.lm, self.settings, self.rng, self.stops, self.callback = lm, settings, rng, stops, callback
        self.lengths = np.array([len(r) for r in rows])
        self.ends = self.lengths + max_new_tokens  # exclusive end position per row
        self.tokens = np.zeros((len(rows), int(self.ends.max())), dtype=np.int64)
        for i, row in enumerate(rows):
            self.tokens[i, :len(row)] = row
        self.new = [[] for _ in rows]
        self.done = [""] * len(rows)
        self.decode = decode
        # One incremental decoder per row: each step decodes only what is new (decoding the whole
        # row again per token made streaming quadratic in its length).
        self.streams = None
        if decode:  # text prompts: the tokenizer (and so the [text] extra) is already loaded
            from tokenizers.decoders import DecodeStream

            self.streams = [DecodeStream(skip_special_tokens=True) for _ in rows]
            self.shown = [""] * len(rows)  # what the callback was given, per row
        self.io = lm._session.io_binding()
        self.shared = lm.config.past_present_share_buffer
        self._bound = False  # the one-token bindings of a shared cache are in place (see _step)
        self._ones = np.ones(len(rows) * int(self.ends.max()), np.int64)  # the attention mask's memory

    def _step(self, ids: np.ndarray, past: list, total: int):
        """One decoder call over ``ids`` at positions ``total - len(ids) .. total - 1``: the last logits, the past.

        With a shared buffer, one-token steps keep the cache, logits and ``input_ids`` bindings of the
        previous step (the token is written into the bound array) and rebind only the mask, whose shape
        grows: about 50 bindings and 25 output wrappers less per step.
        """
        io, lm = self.io, self.lm
        single = self.shared and ids.shape[1] == 1
        if not (single and self._bound):
            self._bind(ids, past, single)
        if single:  # the bound one-token array is read in place
            self._ids[:] = ids
        if lm._mask:  # all ones: any batch x total stretch of the preallocated ones is the mask
            io.bind_cpu_input(MASK, self._ones[:len(ids) * total].reshape(len(ids), total))
        lm._session.run_with_iobinding(io)
        if single:  # the logits were written into self._logits
            return self._logits[:, -1, :], past
        outputs = io.get_outputs()
        return outputs[0].numpy()[:, -1, :], (past if self.shared else outputs[1:])

    def _bind(self, ids: np.ndarray, past: list, single: bool) -> None:
        """Every binding but the mask; ``single``: the one-token arrays that later steps reuse."""
        import onnxruntime as ort

        io, lm = self.io, self.lm
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, value in zip(lm._past_names, past):
            io.bind_ortvalue_input(name, value)
        if single:
            self._logits = np.empty((len(self.lengths), 1, lm.config.vocabulary_size), np.float32)
            io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
            self._ids = np.empty((len(self.lengths), 1), lm._ids_dtype)
            io.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self._ids))
        else:
            io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=lm._ids_dtype))
            io.bind_output("logits", "cpu")
        for name, value in zip(lm._present_names, past):
            if self.shared:  # the kernel writes the new positions into the buffer it reads
                io.bind_ortvalue_output(name, value)
            else:
                io.bind_output(name, lm._device)
        self._bound = single

    def _empty_past(self) -> list:
        """A past of length 0, or with a shared buffer, one zeroed buffer per input for every position."""
        import onnxruntime as ort

        c = self.lm.config
        length = int(self.ends.max()) if self.shared else 0
        shape = (len(self.lengths), c.num_kv_heads, length, c.head_dim)
        # One array each: a CPU OrtValue is a view of its array, and each layer writes its own buffer.
        return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.dtype(c.cache_dtype)), self.lm._device, 0)
                for _ in self.lm._past_names]

    def _emit(self, row: int, token: int, position: int) -> None:
        self.tokens[row, position] = token
        self.new[row].append(token)
        if token in self.stops:
            self.done[row] = "stop"
        elif position + 1 >= self.ends[row]:
            self.done[row] = "length"
        if self.callback is not None:
            self.callback(row, token, self._piece(row))

    def _piece(self, row: int) -> str | None:
        if not self.decode:
            return None
        # None while a character is cut between tokens: the stream holds it until the rest arrives.
        piece = self.streams[row].step(self.lm.tokenizer, int(self.new[row][-1])) or ""
        self.shown[row] += piece
        if self.done[row]:  # the row's last token: what the stream still holds (a cut character) goes out now
            text = self.lm.decode(self.new[row])
            if text.startswith(self.shown[row]):
                piece, self.shown[row] = piece + text[len(self.shown[row]):], text
        return piece

    def go(self) -> GenerationResult:
        start = time.perf_counter()
        first = int(self.lengths.min())
        logits, past = self._step(self.tokens[:, :first], self._empty_past(), first)
        first_token_at = decode_start = None
        steps = 0
        # Python ints, not numpy scalars, and no copy of the logits when every row samples: the loop's
        # own time per step (scripts/profile_decode.py loop) is a few percent of a 100M model's step.
        rows = list(zip(range(len(self.lengths)), self.lengths.tolist(), self.ends.tolist()))
        for position in range(first, int(self.ends.max())):
            generating = [r for r, length, end in rows if not self.done[r] and length <= position < end]
            if generating:
                chosen = sample(logits if len(generating) == len(rows) else logits[generating], self.settings,
                                self.rng)
                for row, token in zip(generating, chosen):
                    self._emit(row, int(token), position)
                if first_token_at is None:
                    first_token_at = decode_start = time.perf_counter()
                else:
                    steps += 1
            if all(self.done[r] or position + 1 >= end for r, _, end in rows):
                break
            logits, past = self._step(self.tokens[:, position:position + 1], past, position + 1)
        end = time.perf_counter()
        return GenerationResult(
            tokens=self.new, text=[self.lm.decode(t) for t in self.new] if self.decode else None,
            prompt_tokens=self.lengths.tolist(), finish_reasons=[d or "length" for d in self.done],
            time_to_first_token_s=(first_token_at or end) - start,
            decode_seconds=end - (decode_start or end), decode_steps=steps,
            settings=self.settings.__dict__)
