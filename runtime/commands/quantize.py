"""``tiedonnx quantize``: store an exported model's weights as fp16, int8 or int4, ties kept."""

from __future__ import annotations

import argparse

from ..options import ACCURACY_LEVELS, BLOCK_SIZES, DEFAULT_BLOCK_SIZE, INT4_ROUNDINGS, PRECISIONS
from . import _flags

HELP = "Store an .onnx file's weights as fp16, int8 or int4, one tensor per tie (ties restored first)."


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    """``--per-channel`` and ``--reduce-range``, shared with ``tiedonnx export``."""
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                        help="int8 only: one weight scale per output channel "
                             "(default: per channel for a language model, whose tie is read by a "
                             "lookup; one per tensor otherwise; --no-per-channel for one per tensor)")
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                        help="int8 only: 7-bit weights, safe on every CPU (default); "
                             "--no-reduce-range: full 8-bit weights, more accurate, for CPUs "
                             "with VNNI or ARM only (they saturate on AVX2 without VNNI)")


def add_int4_arguments(parser: argparse.ArgumentParser) -> None:
    """``--block-size``, ``--symmetric``, ``--short-names``, ``--rounding`` and ``--int8-ties``, shared with
    ``tiedonnx export``."""
    parser.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=None, metavar="N",
                        help=f"int4 only: weights per scale, one of {', '.join(map(str, BLOCK_SIZES))} "
                             f"(default: {DEFAULT_BLOCK_SIZE})")
    parser.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None,
                        help="int4 only: no zero points, a smaller file (default: asymmetric, "
                             "one 4-bit zero point per block)")
    parser.add_argument("--short-names", action=argparse.BooleanOptionalAction, default=None,
                        help="rename internal tensors to short names and drop node names; inputs "
                             "and outputs keep theirs (default: on for int4, off otherwise)")
    parser.add_argument("--rounding", choices=INT4_ROUNDINGS, default=None,
                        help="int4 only: rtn, onnxruntime's round-to-nearest (default); search, each "
                             "block's scale chosen by least squares over narrower ranges (slower to write, "
                             "closer to the float model: see README 'Quantization quality')")
    parser.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=None, metavar="N",
                        help="int4 only: MatMulNBits' accuracy level, 0 float activations or 4 int8 "
                             "activations (about 3x the decode speed on a language model; default: 0, and 4 "
                             "for export --task generate)")
    parser.add_argument("--int8-ties", action=argparse.BooleanOptionalAction, default=None,
                        help="int4 only: keep each tie (a language model's embedding and head) in int8, "
                             "the other weights in int4 (default: off)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="IN.onnx", help="the exported model (fp32)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the file to write")
    parser.add_argument("--precision", required=True, choices=PRECISIONS,
                        help="fp16: weights float16, float32 in and out; int8: weights int8, "
                             "activations quantized at run time; int4: weights 4-bit in blocks "
                             "(MatMulNBits); fp32: retie only")
    add_int8_arguments(parser)
    add_int4_arguments(parser)
    parser.add_argument("--input", metavar="X.npy|X.npz",
                        help="your own inputs (.npy for one input, .npz by input name): both files run "
                             "on them and the error figure is printed (default: no figure; random inputs "
                             "understate quantization error)")
    _flags.add_force(parser)
    _flags.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.model, command="quantize")  # before the heavier imports
    if args.input is not None:
        from ..inputs import check_array_file

        check_array_file(args.input)  # before any work
    from ..quantize_file import quantize_file

    report = quantize_file(args.model, args.output, precision=args.precision,
                           per_channel=args.per_channel, block_size=args.block_size,
                           symmetric=args.symmetric, short_names=args.short_names,
                           reduce_range=args.reduce_range, rounding=args.rounding,
                           int8_ties=args.int8_ties, accuracy_level=args.accuracy_level, force=args.force)
    stored = ", ".join(f"{t.initializer} ({t.dtype}{_origin(t)})" for t in report.ties) or "none"
    line = (f"wrote {report.path}: {report.precision}, {report.bytes:,} B "
            f"({report.bytes / report.bytes_before:.2f}x of {report.bytes_before:,} B); "
            f"ties stored once: {stored}")
    lines, loss = [line], None
    if args.input is not None:
        from ..graph.quantize_loss import loss_on_inputs

        found = loss_on_inputs(args.model, args.output, args.input)
        loss = [x.as_dict() for x in found]
        lines += [f"  on {args.input}, vs {args.model}: {x.line()}" for x in found]
    elif args.precision != "fp32":
        lines.append("  error not measured: pass --input X.npy|X.npz with your own rows to see what "
                     f"{args.precision} loses (random inputs understate it)")
    _flags.emit({**report.as_dict(), "loss_on_inputs": loss, "inputs": args.input}, as_json=args.json, lines=lines)
    return 0


def _origin(tie) -> str:
    """``; was <name>``: the Keras variable, or the float tensor, behind a renamed stored tensor."""
    name = (tie.keras or {}).get("variable") or tie.source
    return f"; was {name}" if name and name != tie.initializer else ""
