"""Writing a generation folder (:mod:`.generation`): its precision defaults, staged beside
the target and published in one rename, and the transformers.js configs of the GPT-2 family.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tiedonnx.runtime.atomic import remove_leftover_folders, staging_prefix
from tiedonnx.runtime.generation_folder import GenerationConfig, check_folder_target


@contextlib.contextmanager
def _staging_folder(target: Path, *, force: bool):
    """Build the folder beside ``target`` and publish it in one rename; a failure leaves ``target`` as it was."""
    check_folder_target(target, force=force)
    remove_leftover_folders(target)  # staging folders of killed exports
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "was")
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:  # put the previous folder back
                os.replace(old / "was", target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_transformers_config(lm, config: GenerationConfig, folder: Path) -> None:
    """config.json / generation_config.json for transformers.js (the GPT-2 family's keys)."""
    if config.family != "GPT2":
        return
    backbone = lm.backbone
    eos = config.eos_token_ids[0] if config.eos_token_ids else None
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocabulary_size,
          "n_layer": config.num_layers, "n_head": config.num_kv_heads,
          "n_embd": config.num_kv_heads * config.head_dim, "n_positions": backbone.max_sequence_length,
          "bos_token_id": config.bos_token_id, "eos_token_id": eos, "use_cache": True,
          "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": eos, "max_length": config.max_length}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def folder_defaults(precision: str, precision_options: dict) -> None:
    """The precision options a generation folder defaults to (in place; see :func:`export_generation`)."""
    if precision == "int8" and precision_options.get("per_channel") is None:
        # Per-tensor int8 (export's default) fails this folder's own parity check on the GPT-2 small
        # configuration: logits 0.068 off against 0.05 x 1.25 (scripts/bench_generate.py, random
        # weights); one scale per output channel passes it, at the same size.
        precision_options["per_channel"] = True
    if precision == "int4" and precision_options.get("accuracy_level") is None:
        # int8 activations in MatMulNBits: 220.7 decode tokens/s against 70.9 at level 0 on the 100M Qwen
        # (runtime/options.py ACCURACY_LEVELS); folders are opened with constant folding on.
        precision_options["accuracy_level"] = 4
    # A folder is what gets deployed: tf2onnx's tensor names (cached_decoder_1/decoder_1/...) cost about
    # 26 KB per layer of file (52,809 B on a 2-layer, hidden-768 GPT-2). Short names keep the inputs,
    # outputs and the tie record; short_names=False keeps tf2onnx's names.
    precision_options.setdefault("short_names", True)
