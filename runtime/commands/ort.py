"""``tiedonnx ort``: write an ORT-format file (ORT Mobile, minimal builds) that keeps the ties."""

from __future__ import annotations

import argparse

HELP = "write an ORT-format (.ort) file for ORT Mobile / minimal builds, one copy per tie"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="the model (fp32, fp16 or int8)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.ort", help="file to write; "
                        "the required-operators config is written beside it")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def run(args: argparse.Namespace) -> int:
    from tiedonnx.runtime.graph.ort_format import save_ort

    report = save_ort(args.input, args.output, force=args.force)
    ops = "; ".join(f"{k}: {','.join(v)}" for k, v in report["operators"].items())
    print(f"wrote {report['path']}: {report['bytes']:,} bytes, {report['ties']} tie(s) stored once"
          f"{'' if report['optimized'] else ' (unoptimized)'}")
    print(f"wrote {report['config_path']}: {ops}")
    return 0
