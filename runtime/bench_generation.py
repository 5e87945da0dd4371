"""``tiedonnx bench DIR`` on a generation folder: time to first token and decode tokens/s.

A prompt of ``prompt_length`` random token ids (seeded, drawn below the
vocabulary size) is generated from greedily for ``new_tokens`` tokens with no
stop token, so every row produces exactly ``new_tokens`` tokens and every
round does the same work. Each batch size runs ``rounds`` times (the first
run, a warm-up, is not counted: it pays onnxruntime's first-call allocations);
figures are medians over rounds, with the slowest/fastest spread of each, as
:mod:`tiedonnx.runtime.bench` reports for single-call models.

The timings are the ones :meth:`tiedonnx.runtime.generate.LanguageModel.generate`
takes itself: time to first token = the prompt's forward pass and the first
pick; decode = every later step (tokens/s per row).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import UsageError
from .generation_folder import CONFIG_NAME
from .bench import report_json, rows_report_dict
from .options import check_positive_int
from .timing import DEFAULT_ROUNDS


def is_generation_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding ``tiedonnx.json`` (validated when it is opened)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_NAME))


@dataclass
class GenerationRow:
    """One batch size: medians over rounds."""

    batch: int
    time_to_first_token_s: float
    decode_tokens_per_s: float  # per row
    spread: dict = field(default_factory=dict)  # figure -> slowest round / fastest round

    def as_dict(self) -> dict:
        return {**asdict(self), "total_tokens_per_s": self.decode_tokens_per_s * self.batch}


@dataclass
class GenerationBenchReport:
    """What :func:`bench_generation` measured."""

    folder: str
    model_file: str
    precision: str
    providers: list[str]
    memory: str
    prompt_length: int
    new_tokens: int
    rounds: int
    rows: list[GenerationRow] = field(default_factory=list)

    as_dict = rows_report_dict
    to_json = report_json


def bench_generation(folder: str | os.PathLike, *, batch_sizes=(1,), prompt_length: int = 128,
                     new_tokens: int = 128, providers="auto", memory: str = "auto",
                     threads: int | None = None, rounds: int = DEFAULT_ROUNDS,
                     seed: int = 0) -> GenerationBenchReport:
    """Time to first token and decode tokens/s of a generation folder, per batch size.

    Raises:
        UsageError: bad sizes, or a prompt plus new tokens longer than the folder's maximum length.
        ModelFileError: not a generation folder.
    """
    from .generate import load_lm

    for name, value in (("prompt_length", prompt_length), ("new_tokens", new_tokens), ("rounds", rounds)):
        check_positive_int(name, value)
    if not batch_sizes:
        raise UsageError("batch_sizes is empty. Pass at least one positive integer, e.g. (1, 8).")
    for batch in batch_sizes:
        check_positive_int("batch_sizes[i]", batch)
    lm = load_lm(folder, providers=providers, memory=memory, threads=threads)
    limit = lm.config.max_length
    if limit is not None and prompt_length + new_tokens > limit:
        raise UsageError(f"A {prompt_length}-token prompt plus {new_tokens} new tokens is longer than the "
                         f"folder's maximum length, {limit}. Pass a smaller --sequence-length or "
                         "--new-tokens (or export with a larger --max-length).")
    report = GenerationBenchReport(str(folder), lm.config.model_file, lm.config.precision,
                                   list(lm.model.providers), lm.model.memory, prompt_length,
                                   new_tokens, rounds)
    rng = np.random.default_rng(seed)
    for batch in batch_sizes:
        prompts = rng.integers(0, lm.config.vocabulary_size, size=(int(batch), prompt_length)).tolist()
        runs = [lm.generate(prompts, max_new_tokens=new_tokens, sampler="greedy", stop_token_ids=[])
                for _ in range(rounds + 1)][1:]  # the first is a warm-up
        ttft = [r.time_to_first_token_s for r in runs]
        decode = [r.decode_tokens_per_s for r in runs]
        report.rows.append(GenerationRow(
            int(batch), statistics.median(ttft), statistics.median(decode),
            spread={"ttft": round(max(ttft) / min(ttft), 3),
                    "decode": round(max(decode) / min(decode), 3) if min(decode) > 0 else None}))
    return report


def render(report: GenerationBenchReport) -> str:
    """The report as a text table with a header line."""
    from ._term import format_table

    head = (f"{report.folder}: {report.model_file} ({report.precision}), {report.prompt_length}-token "
            f"prompt + {report.new_tokens} new tokens, greedy; median of {report.rounds} rounds; "
            f"providers {report.providers}, memory={report.memory}")
    rows = [[r.batch, f"{r.time_to_first_token_s * 1e3:.1f}", f"{r.decode_tokens_per_s:,.1f}",
             f"{r.decode_tokens_per_s * r.batch:,.1f}", f"{r.spread['ttft']:.2f}/{r.spread['decode'] or 0:.2f}"]
            for r in report.rows]
    table = format_table(["batch", "TTFT ms", "tokens/s per row", "tokens/s total", "spread ttft/decode"],
                         rows)
    return head + "\n" + table
