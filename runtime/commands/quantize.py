"""``tiedonnx quantize``: store an exported model's weights as fp16 or int8, ties kept."""

from __future__ import annotations

import argparse

HELP = "store an .onnx file's weights as fp16 or int8, one tensor per tie (ties restored first)"

from tiedonnx.runtime.options import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="the exported model (fp32)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="file to write")
    parser.add_argument("--precision", required=True, choices=PRECISIONS,
                        help="fp16: weights float16, float32 in and out; int8: weights int8, "
                             "activations quantized at run time; fp32: retie only")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                        help="int8 only: per-channel weight scales (default: per-tensor, "
                             "see tiedonnx.runtime.graph.quantize)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.onnx if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tiedonnx.runtime.graph.metadata import read_ties
    from tiedonnx.runtime.graph.ort_format import load_onnx
    from tiedonnx.runtime.graph.quantize import to_precision
    from tiedonnx.runtime.atomic import check_output_path, write_bytes_atomic

    check_output_path(args.output, force=args.force)
    model = load_onnx(args.input)
    out = to_precision(model, args.precision, per_channel=args.per_channel)
    write_bytes_atomic(args.output, out.SerializeToString(), force=args.force)
    before, after = Path(args.input).stat().st_size, Path(args.output).stat().st_size
    ties = read_ties(out)
    stored = ", ".join(f"{t['initializer']} ({t['dtype']})" for t in ties) or "none"
    print(f"wrote {args.output}: {args.precision}, {after:,} bytes "
          f"({after / before:.2f}x of {before:,}); ties stored once: {stored}")
    return 0
