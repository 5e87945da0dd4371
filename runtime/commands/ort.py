"""``tiedonnx ort``: write an ORT-format file (ORT Mobile, minimal builds) that keeps the ties."""

from __future__ import annotations

import argparse

from . import _flags

HELP = "Write an ORT-format (.ort) file for ORT Mobile and minimal builds, one copy per tie."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _flags.add_file_to_file(parser, dest="input", input_help="the model (fp32, fp16 or int8)",
                            output_metavar="OUT.ort",
                            output_help="the file to write; the required-operators config is written beside it")


def run(args: argparse.Namespace) -> int:
    from ._preflight import check_ort

    check_ort(args)  # before the heavier imports
    from ..graph.ort_format import save_ort

    report = save_ort(args.input, args.output, force=args.force)
    ops = "; ".join(f"{k}: {','.join(v)}" for k, v in report.operators.items())
    lines = [f"wrote {report.path}: {report.bytes:,} B, {report.ties} tie(s) stored once"
             f"{'' if report.optimized else ' (unoptimized)'}",
             f"wrote {report.config_path}: {ops}"]
    _flags.emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
