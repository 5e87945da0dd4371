HELP = "Compare a .keras model and its ONNX export on the same inputs (exit 1 on mismatch)."

from tiedonnx.runtime.options import PRECISIONS


def add_arguments(parser) -> None:
    parser.add_argument("keras_model", help="the .keras file")
    parser.add_argument("onnx_model", help="the .onnx file")
    parser.add_argument("--input", help="your own inputs: .npy (one input) or .npz (by input name)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="selects the tolerance (default fp32)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--unsafe-load-code", action="store_true",
                        help="DANGEROUS: let code stored in the .keras/.h5 file run (trusted files only)")


def run(args) -> int:
    from tiedonnx.converter.parity import verify_files

    from ._report import emit

    report = verify_files(args.keras_model, args.onnx_model, input_path=args.input,
                          precision=args.precision, unsafe=args.unsafe_load_code)
    lines = [f"parity ok: max abs diff {report.max_abs:.3g} (atol {report.atol:g}, rtol {report.rtol:g}) "
             f"at batch sizes {list(report.batch_sizes)}"]
    lines += [f"  {o.name} {list(o.shape)}: max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}"
              for o in report.outputs]
    emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
