"""Write the text-generation page: a prompt box that streams tokens from a generation folder.

The site holds the folder's files under ``lm/`` (the decoder of one precision,
``tiedonnx.json``, the tokenizer files, and transformers.js's ``config.json``)
beside the common page files; ``generate.mjs`` is the JavaScript API
(``loadLM(url) -> {generate(prompt, options)}``) and ``@huggingface/tokenizers``
(pinned, checked like onnxruntime-web) reads ``tokenizer.json``::

    OUT/
      index.html, generate-page.mjs, generate.mjs, tiedonnx.mjs, style.css, site.json
      lm/tiedonnx.json, lm/tokenizer.json, lm/tokenizer_config.json, lm/onnx/<decoder>.onnx
      ort/, tokenizers/   the pinned npm files (``runtime="local"`` only)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from ..errors import ModelFileError, UsageError
from ..generation_folder import MODEL_FILES, GenerationConfig, check_decoder_io
from .site import SiteReport, _describe, _Extra, _write

LM_FOLDER = "lm"
#: Files transformers.js reads from a folder; copied so it can load the site's lm/ too (not fetched by the page).
_PEER_FILES = ("config.json", "generation_config.json")


def write_generation_site(folder: str | os.PathLike, out_dir: str | os.PathLike, *,
                          precision: str | None = None, runtime: str = "local", force: bool = False,
                          npm_prefix: str | os.PathLike | None = None,
                          tokenizer_prefix: str | os.PathLike | None = None) -> SiteReport:
    """Write a page that generates text from a generation folder in the browser.

    Args:
        folder: a folder written by ``tiedonnx export ... --task generate``.
        out_dir: the site folder (created if its parent exists).
        precision: which decoder the page loads ("fp32", "fp16", "int8", "int4"):
            ``folder/onnx/`` must hold it; default the one ``tiedonnx.json`` names.
            Only that file is copied, so a visitor downloads one decoder.
        runtime, force, npm_prefix: as for :func:`~tiedonnx.runtime.web.write_site`;
            ``runtime`` also decides where the tokenizer library comes from.
        tokenizer_prefix: npm prefix of the pinned ``@huggingface/tokenizers``
            (default ``~/.cache/tiedonnx/huggingface-tokenizers/0.2.0``).

    Returns:
        A :class:`SiteReport` (``page="generate"``; ``data_files`` are the
        folder files the page fetches).

    Raises:
        ModelFileError: not a generation folder, or its decoder breaks the contract.
        UsageError: the precision's file is missing, a pinned npm package is
            missing or damaged, a bad site folder.
        OutputExistsError: a target file exists and ``force`` is False.

    Example:
        >>> write_generation_site("gpt2-gen", "site", precision="int4")  # doctest: +SKIP
    """
    folder = Path(folder)
    config = GenerationConfig.read(folder)
    model_file = _model_file(folder, config, precision)
    path = folder / model_file
    model = _describe(path, label=f"{config.family} {Path(model_file).stem}")
    _check_contract(model, config, path)
    model["file"] = f"{LM_FOLDER}/{model_file}"
    model["url"] = quote(model["file"])
    site_config = config.as_dict()
    site_config.update(model_file=model_file, precision=_precision_of(model_file))
    files: dict[str, bytes | Path] = {
        f"{LM_FOLDER}/tiedonnx.json": (json.dumps(site_config, indent=2, sort_keys=True) + "\n").encode()}
    if config.tokenizer:
        for name in (config.tokenizer, "tokenizer_config.json"):
            if (folder / name).is_file():
                files[f"{LM_FOLDER}/{name}"] = folder / name
        if f"{LM_FOLDER}/{config.tokenizer}" not in files:
            raise ModelFileError(f"Generation folder {str(folder)!r} names the tokenizer {config.tokenizer!r} but "
                                 "lacks that file. Export the folder again.")
    copies = {f"{LM_FOLDER}/{n}": folder / n for n in _PEER_FILES if (folder / n).is_file()}
    extra = _Extra(files=files, copies=copies, tokenizer=True, tokenizer_prefix=tokenizer_prefix,
                   site={"lm": {"url": f"{LM_FOLDER}/", "precision": site_config["precision"],
                                "max_length": config.max_length, "tokenizer": bool(config.tokenizer),
                                "defaults": config.defaults}})
    return _write(out_dir, "generate", [(path, model)], runtime=runtime, force=force,
                  npm_prefix=npm_prefix, extra=extra)


def _precision_of(model_file: str) -> str:
    by_file = {name: p for p, name in MODEL_FILES.items()}
    return by_file.get(Path(model_file).name, "unknown")


def _model_file(folder: Path, config: GenerationConfig, precision: str | None) -> str:
    if precision is None:
        if not config.model_path(folder).is_file():
            raise ModelFileError(f"Generation folder {str(folder)!r} lacks its decoder {config.model_file!r}. "
                                 "Export the folder again.")
        return config.model_file
    if precision not in MODEL_FILES:
        raise UsageError(f"Unknown precision. Received: precision={precision!r}. Use one of {list(MODEL_FILES)}.")
    have = [p for p, name in MODEL_FILES.items() if (folder / "onnx" / name).is_file()]
    if precision not in have:
        raise UsageError(f"Generation folder {str(folder)!r} has no {precision} decoder (onnx/"
                         f"{MODEL_FILES[precision]}); it holds {have or 'none'}. Export it with "
                         f"--precision {precision}, or pick one of those.")
    return f"onnx/{MODEL_FILES[precision]}"


def _check_contract(model: dict, config: GenerationConfig, path: Path) -> None:
    """The decoder takes and returns what ``tiedonnx.json`` says (as :class:`LanguageModel` checks)."""
    check_decoder_io([s["name"] for s in model["inputs"]], [s["name"] for s in model["outputs"]], config, str(path))
