"""``tiedonnx retie``: fold the duplicated tied tensors of any ONNX file."""

from __future__ import annotations

import argparse

from . import _flags

HELP = "Fold duplicated and transposed initializers of any ONNX file into one per tie."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _flags.add_file_to_file(parser, dest="model", input_help="the .onnx file to read", output_metavar="OUT.onnx",
                            output_help="the .onnx file to write")


def run(args: argparse.Namespace) -> int:
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.model, command="retie")  # before the heavier imports
    from ..graph.retie import retie_file

    report = retie_file(args.model, args.output, force=args.force)
    size = _flags.human_bytes
    lines = [f"wrote {args.output}: {size(report.bytes_after)} "
             f"(was {size(report.bytes_before)}; saved {size(report.bytes_saved)})"]
    lines += [f"  {d.copy} -> {d.relation} of {d.source}" for d in report.folded]
    if not report.folded:
        lines.append("  nothing to fold: no initializer is a copy or transpose of another")
    _flags.emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
