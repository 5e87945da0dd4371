"""``tiedonnx ort``: write an ORT-format file (ORT Mobile, minimal builds) that keeps the ties."""

from __future__ import annotations

import argparse

from . import _flags

HELP = "Write an ORT-format (.ort) file for ORT Mobile and minimal builds, one copy per tie."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="the model (fp32, fp16 or int8)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ort",
                        help="the file to write; the required-operators config is written beside it")
    _flags.add_force(parser)
    _flags.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UsageError
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.input, command="ort")  # before the heavier imports
    if Path(args.output).suffix != ".ort":  # onnxruntime reads a file as ORT format by its suffix
        raise UsageError(f"-o must name an .ort file: onnxruntime loads a file as ORT format by its "
                         f".ort suffix. Received: {args.output!r}. Use e.g. "
                         f"-o {Path(args.output).with_suffix('.ort')}")
    from ..graph.ort_format import save_ort

    report = save_ort(args.input, args.output, force=args.force)
    ops = "; ".join(f"{k}: {','.join(v)}" for k, v in report.operators.items())
    lines = [f"wrote {report.path}: {report.bytes:,} B, {report.ties} tie(s) stored once"
             f"{'' if report.optimized else ' (unoptimized)'}",
             f"wrote {report.config_path}: {ops}"]
    _flags.emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
