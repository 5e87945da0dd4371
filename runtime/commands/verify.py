"""``tiedonnx verify``: compare a .keras model and its ONNX export on the same inputs."""

from __future__ import annotations

import argparse

from ..options import PRECISIONS
from . import _flags

HELP = "Compare a .keras model and its ONNX export on the same inputs (exit 1 on mismatch)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keras_model", metavar="MODEL.keras", help="the .keras file")
    parser.add_argument("onnx_model", metavar="MODEL.onnx", help="the .onnx file")
    parser.add_argument("--input", metavar="X.npy|X.npz",
                        help="your own inputs: .npy (one input) or .npz (by input name) "
                             "(default: random inputs at several batch sizes)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="selects the tolerance (default: the precision the file records)")
    _flags.add_json(parser)
    _flags.add_keras_loading(parser)


def run(args: argparse.Namespace) -> int:
    from ._preflight import before_tensorflow, check_verify

    before_tensorflow(check_verify, args, what="tiedonnx verify")  # before TensorFlow loads
    from tiedonnx.converter.parity import verify_files

    report = verify_files(args.keras_model, args.onnx_model, input_path=args.input,
                          precision=args.precision, unsafe=args.unsafe_load_code,
                          import_modules=args.import_modules)
    inputs = args.input or "random"
    lines = [f"parity ok on {inputs} inputs: max abs diff "
             f"{report.max_abs:.3g} (atol {report.atol:g}, rtol {report.rtol:g}) at batch sizes "
             f"{list(report.batch_sizes)}"
             + (f", sequence lengths {list(report.sequence_lengths)}" if report.sequence_lengths else "")]
    lines += [f"  {o.name} {list(o.shape)}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}"
              for o in report.outputs]
    # The demo's int4 file: max abs 0.0009 on random inputs, 0.124 on the 297 held-out digits
    # (tiedonnx verify demo-out/model.keras demo-out/model.int4.onnx [--input heldout.npy]).
    if not args.input:
        lines.append("  random inputs can understate the error on real data (quantized files "
                     "most): pass --input X.npy|X.npz with your own rows")
    _flags.emit({**report.as_dict(), "inputs": inputs}, as_json=args.json, lines=lines)
    return 0
