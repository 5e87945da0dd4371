"""The generation folder's contract: ``tiedonnx.json`` and the decoder's input/output names.

Written by :func:`tiedonnx.converter.generation.export_generation`, read by
:mod:`tiedonnx.runtime.generate` (and by the browser module). One reader
validates every field, so a hand-edited or truncated file gets one clear
:class:`~tiedonnx.runtime.errors.ModelFileError`, never a ``KeyError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelFileError

#: The file in a generation folder that says what the runtime needs.
CONFIG_NAME = "tiedonnx.json"
FORMAT_VERSION = 1
#: Decoder file per precision, named as transformers.js names its dtypes
#: (fp32 ``model.onnx``, fp16 ``model_fp16.onnx``, q8 ``model_quantized.onnx``, q4 ``model_q4.onnx``).
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_quantized.onnx",
               "int4": "model_q4.onnx"}
SAMPLERS = ("greedy", "top_k", "top_p")
# Size limits for a hand-edited file: far above any real model.
_MAX_LAYERS, _MAX_HEADS, _MAX_DIM, _MAX_VOCAB = 4096, 4096, 65536, 10_000_000


def check_folder_target(target: str | os.PathLike, *, force: bool) -> Path:
    """Refuse a generation folder's output path before any work (the converter checks it again).

    Raises:
        OutputExistsError: something is there and ``force`` is False.
        UsageError: it is not a folder, or its parent does not exist.
    """
    from .errors import OutputExistsError, UsageError

    target = Path(target)
    if str(target) in ("", "."):
        raise UsageError("The output folder is empty or '.'. Name a new folder, e.g. -o lm-gen.")
    if target.exists() or target.is_symlink():
        if not force:
            raise OutputExistsError(f"Output folder exists: {str(target)!r}. Pass force=True (CLI: --force) "
                                    "to replace it, or choose another folder.")
        if not target.is_dir() or target.is_symlink():
            raise UsageError(f"Output {str(target)!r} exists and is not a folder; choose another path.")
    if not target.parent.is_dir():
        raise UsageError(f"The folder for {str(target)!r} does not exist. Create {str(target.parent)!r} first.")
    return target


def kv_input_names(num_layers: int) -> list[str]:
    """``past_key_values.{i}.key``, ``past_key_values.{i}.value`` for each layer, in order."""
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def kv_output_names(num_layers: int) -> list[str]:
    """``present.{i}.key``, ``present.{i}.value`` for each layer, in order."""
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


#: The decoder input that carries the lengths (Optimum's name): all ones, [batch, past + new].
MASK = "attention_mask"


def check_decoder_io(inputs: list[str], outputs: list[str], config: GenerationConfig, label: str) -> bool:
    """Whether the decoder takes :data:`MASK`; refuses a decoder that is not the one ``config`` describes.

    Inputs: ``input_ids``, ``past_key_values.*`` and ``attention_mask`` (folders written before it have
    none; a ``past_present_share_buffer`` decoder needs it); outputs ``logits`` and ``present.*``.

    Raises:
        ModelFileError: other inputs or outputs.
    """
    has_mask = MASK in inputs
    want_in = ["input_ids", *kv_input_names(config.num_layers)] + ([MASK] if has_mask else [])
    want_out = ["logits", *kv_output_names(config.num_layers)]
    if (sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out)
            or (config.past_present_share_buffer and not has_mask)):
        raise ModelFileError(
            f"{label!r} is not the decoder tiedonnx.json describes: inputs {sorted(inputs)[:4]}..., outputs "
            f"{sorted(outputs)[:4]}...; expected input_ids, {MASK} and past_key_values.* for {config.num_layers} "
            "layers. Export the folder again.")
    return has_mask


@dataclass
class GenerationConfig:
    """What a generation folder's decoder is and how to drive it."""

    format_version: int
    model_file: str
    precision: str
    family: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocabulary_size: int
    max_length: int | None
    cache_dtype: str = "float32"
    bos_token_id: int | None = None
    add_bos_token: bool = False
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    defaults: dict = field(default_factory=dict)
    tokenizer: str | None = None
    #: The decoder takes one buffer per layer bound as both past and present (its lengths come from
    #: ``attention_mask``), so a step writes only its new positions (:mod:`tiedonnx.converter.generation_fused`).
    past_present_share_buffer: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, folder: str | os.PathLike) -> GenerationConfig:
        """Read and validate ``folder/tiedonnx.json``.

        Raises:
            ModelFileError: the folder, the file or a field is missing or wrong.
        """
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not folder.is_dir():
            raise ModelFileError(f"Not a generation folder: {str(folder)!r} is not a folder. Write one with "
                                 "`tiedonnx export model.keras -o DIR --task generate`.")
        try:
            raw = json.loads(path.read_bytes()[:1_000_000].decode("utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"Not a generation folder: {str(folder)!r} has no {CONFIG_NAME}. Write one with "
                                 "`tiedonnx export model.keras -o DIR --task generate`.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{str(path)!r} is not valid JSON ({type(exc).__name__}). Export the folder "
                                 "again.") from None
        if not isinstance(raw, dict):
            raise ModelFileError(f"{str(path)!r} must hold a JSON object. Received: {type(raw).__name__}.")
        return cls(**_validated(raw, path))

    def model_path(self, folder: str | os.PathLike) -> Path:
        return Path(folder) / self.model_file


def _bad(path: Path, key: str, value, want: str) -> ModelFileError:
    return ModelFileError(f"{str(path)!r}: field {key!r} must be {want}. Received: {value!r:.80}. "
                          "Export the folder again.")


def _int(raw: dict, key: str, path: Path, low: int, high: int, *, optional: bool = False):
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(path, key, value, f"an integer in [{low}, {high}]")
    return value


def _validated(raw: dict, path: Path) -> dict:
    out = {"format_version": _int(raw, "format_version", path, 1, FORMAT_VERSION)}
    for key, high in (("num_layers", _MAX_LAYERS), ("num_kv_heads", _MAX_HEADS), ("head_dim", _MAX_DIM),
                      ("vocabulary_size", _MAX_VOCAB)):
        out[key] = _int(raw, key, path, 1, high)
    out["max_length"] = _int(raw, "max_length", path, 2, 1 << 24, optional=True)
    vocab = out["vocabulary_size"]
    for key in ("bos_token_id", "pad_token_id"):
        out[key] = _int(raw, key, path, 0, vocab - 1, optional=True)
    add_bos = raw.get("add_bos_token", False)
    if not isinstance(add_bos, bool) or (add_bos and out["bos_token_id"] is None):
        raise _bad(path, "add_bos_token", add_bos, "true (with a bos_token_id) or false")
    out["add_bos_token"] = add_bos
    eos = raw.get("eos_token_ids", [])
    if not isinstance(eos, list) or len(eos) > 64 or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in eos):
        raise _bad(path, "eos_token_ids", eos, f"a list of token ids below {vocab}")
    out["eos_token_ids"] = eos
    model_file = raw.get("model_file")
    if not isinstance(model_file, str) or Path(model_file).is_absolute() or ".." in Path(model_file).parts:
        raise _bad(path, "model_file", model_file, "a relative path inside the folder")
    out["model_file"] = model_file
    for key in ("precision", "family", "cache_dtype"):
        if not isinstance(raw.get(key), str):
            raise _bad(path, key, raw.get(key), "a string")
        out[key] = raw[key]
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None and (not isinstance(tokenizer, str) or "/" in tokenizer or tokenizer.startswith(".")):
        raise _bad(path, "tokenizer", tokenizer, "a file name in the folder, or null")
    out["tokenizer"] = tokenizer
    share = raw.get("past_present_share_buffer", False)
    if not isinstance(share, bool):
        raise _bad(path, "past_present_share_buffer", share, "true or false")
    out["past_present_share_buffer"] = share
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict) or defaults.get("sampler", "greedy") not in SAMPLERS:
        raise _bad(path, "defaults", defaults, f"an object whose sampler is one of {list(SAMPLERS)}")
    out["defaults"] = {k: v for k, v in defaults.items() if k in ("sampler", "top_k", "top_p", "temperature")}
    return out
