"""``tiedonnx run``: run a model on a .npy/.npz input and save the outputs."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..options import DEFAULT_RUN_BATCH
from . import _flags

HELP = "Run an ONNX model on X.npy/X.npz and write the outputs to Y.npy (Y.npz for several)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx or .ort file")
    parser.add_argument("-i", "--input", required=True, metavar="X.npy|X.npz",
                        help=".npy (memory-mapped, may exceed RAM) or .npz keyed by input name")
    parser.add_argument("-o", "--output", required=True, metavar="Y.npy|Y.npz",
                        help="output file; .npz is required when the model has several outputs")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_RUN_BATCH, metavar="N",
                        help=f"rows per chunk (default: {DEFAULT_RUN_BATCH})")
    _flags.add_provider(parser)
    _flags.add_memory(parser)
    _flags.add_threads(parser)
    _flags.add_force(parser)
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="run inputs containing NaN/inf instead of refusing them")
    _flags.add_json(parser)
    parser.add_argument("--ray", action="store_true", help="run distributed on a Ray cluster")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster address (with --ray; default: start a local one)")


def run(args: argparse.Namespace) -> int:
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.model, command="run")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer; received {args.batch_size}.")
    if args.address is not None and not args.ray:
        raise UsageError("--address is a Ray cluster address; pass it together with --ray.")
    if args.ray:
        return _run_ray(args)
    from .._term import ProgressBar
    from ..score import run_file

    bar = ProgressBar(label="tiedonnx run ")
    try:
        report = run_file(args.model, args.input, args.output, batch_size=args.batch_size,
                          providers=args.provider, memory=args.memory, threads=args.threads,
                          force=args.force, allow_nonfinite=args.allow_nonfinite, progress=bar)
    finally:
        bar.close()
    described = ", ".join(f"{name} {shape}" for name, shape in report.shapes.items())
    _flags.emit(report.as_dict(), as_json=args.json,
                lines=[f"wrote {report.output}: {described} in {report.seconds:.2f} s on "
                       f"{report.provider} (memory={report.memory})"])
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    from ..distributed import run_ray  # needs Ray only when called: MissingExtraError then

    report = run_ray(args.model, args.input, args.output, batch_size=args.batch_size,
                     address=args.address, force=args.force, providers=args.provider,
                     memory=args.memory, allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {report.output}: {report.rows} rows in {report.chunks} chunks on "
          f"{report.workers} Ray actor(s) in {report.seconds:.2f} s")
    return 0
