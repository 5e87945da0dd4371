"""``tiedonnx bench``: latency and throughput per batch size, beside Keras and numpy."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..timing import DEFAULT_ROUNDS
from . import _flags

HELP = ("Benchmark a model: median latency, throughput and GFLOP/s per batch size, "
        "with Keras (--keras) and numpy's sgemm measured in the same run; on a generation "
        "folder, time to first token and decode tokens/s.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="the .onnx or .ort file, or a generation "
                        "folder (tiedonnx export --task generate)")
    parser.add_argument("--keras", default=None, metavar="MODEL.keras",
                        help="the same model as .keras, to time its compiled call and predict "
                             "(needs the [convert] extra)")
    parser.add_argument("--batch-sizes", default=None, metavar="1,64,1024",
                        help="comma-separated batch sizes (default: 1,64,1024; 1 for a generation folder)")
    parser.add_argument("--sequence-length", type=int, default=None, metavar="N",
                        help="length of every dynamic axis besides the batch (a sequence model's "
                             "token axis); for a generation folder, the prompt's length (default 128)")
    parser.add_argument("--new-tokens", type=int, default=128, metavar="N",
                        help="generation folder only: tokens generated after the prompt (default 128)")
    _flags.add_provider(parser)
    _flags.add_memory(parser)
    _flags.add_threads(parser)
    parser.add_argument("--min-time", type=float, default=0.25, metavar="S",
                        help="seconds spent timing each figure at least, over all rounds (default: 0.25)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, metavar="N",
                        help="interleaved rounds: every contender once per round, the order rotated; "
                             f"figures are medians over rounds (default: {DEFAULT_ROUNDS})")
    _flags.add_json(parser)


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,64,1024"`` -> ``[1, 64, 1024]``; raises UsageError on anything else."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise UsageError(f"--batch-sizes must be comma-separated positive integers like 1,64,1024. "
                         f"Received: {text!r}.")
    return sizes


def run(args: argparse.Namespace) -> int:
    from ..bench_generation import is_generation_folder
    from ._preflight import check_keras_file, check_onnx_file, refuse_keras_for_onnx

    if is_generation_folder(args.model):
        return _run_generation(args)
    refuse_keras_for_onnx(args.model, command="bench")
    sizes = parse_batch_sizes("1,64,1024" if args.batch_sizes is None else args.batch_sizes)
    if not args.min_time > 0:
        raise UsageError(f"--min-time must be a positive number of seconds. Received: {args.min_time}.")
    keras = None
    if args.keras is not None:
        from ..extras import require

        check_onnx_file(args.model)  # refusals that need no Keras, before TensorFlow loads
        check_keras_file(args.keras, command="bench --keras")
        require("convert", what="tiedonnx bench --keras")
        from tiedonnx.converter.keras_bench import KerasTimer

        keras = KerasTimer(args.keras)
    from ..bench import bench_model

    report = bench_model(args.model, batch_sizes=sizes, keras=keras, providers=args.provider,
                         memory=args.memory, threads=args.threads, min_time=args.min_time,
                         rounds=args.rounds, sequence_length=args.sequence_length)
    _flags.emit(report.as_dict(), as_json=args.json, lines=[render(report)])
    return 0


def _run_generation(args: argparse.Namespace) -> int:
    """``bench DIR`` on a generation folder: time to first token and decode tokens/s."""
    from ..bench_generation import bench_generation, render as render_generation

    if args.keras is not None:
        raise UsageError("--keras compares single calls; a generation folder is timed on its own. "
                         f"Received: --keras {args.keras!r} with the folder {args.model!r}. Drop --keras.")
    report = bench_generation(args.model, batch_sizes=parse_batch_sizes("1" if args.batch_sizes is None
                                                                        else args.batch_sizes),
                              prompt_length=128 if args.sequence_length is None else args.sequence_length,
                              new_tokens=args.new_tokens, providers=args.provider,
                              memory=args.memory,
                              threads=args.threads, rounds=args.rounds)
    _flags.emit(report.as_dict(), as_json=args.json, lines=[render_generation(report)])
    return 0


def render(report) -> str:
    """The report as a text table with a header line."""
    from .._term import format_table

    keras = report.rows and report.rows[0].keras_call_s is not None
    headers = ["batch", "tiedonnx ms", "rows/s", "GFLOP/s", "numpy GFLOP/s", "% numpy"]
    if keras:
        headers += ["keras call ms", "x faster", "predict ms", "x faster"]
    rows = []
    for r in report.rows:
        row = [r.batch, r.tiedonnx_s * 1e3, r.samples_per_s, r.gflops, r.numpy_gflops,
               r.pct_of_numpy]
        if keras:
            row += [r.keras_call_s * 1e3, r.x_vs_call, r.keras_predict_s * 1e3, r.x_vs_predict]
        rows.append(row)
    lines = [f"{report.model} on {report.providers[0]} (memory={report.memory}); medians of "
             f"{report.rounds} interleaved rounds measured in this run"]
    lines.append(format_table(headers, rows))
    if report.keras_max_abs_diff is not None:
        lines.append(f"max |tiedonnx - keras| = {report.keras_max_abs_diff:.3g}")
    worst = max((s for r in report.rows for s in r.spread.values()), default=None)
    if worst is not None:
        lines.append(f"spread: the slowest round was at most {worst:.2f}x the fastest")
    if report.timing_note:
        lines.append(report.timing_note)
    return "\n".join(lines)
