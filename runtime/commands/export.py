HELP = "Export a .keras model to ONNX with one initializer per tie, verified against Keras."

from tiedonnx.runtime.options import PRECISIONS


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .keras file")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 15)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="weight precision")
    parser.add_argument("--ort", action="store_true", help="also write an ORT-format (.ort) copy")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against Keras")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--unsafe-load-code", action="store_true",
                        help="DANGEROUS: let code stored in the .keras/.h5 file run (trusted files only)")


def run(args) -> int:
    from tiedonnx.converter.export import export
    from tiedonnx.converter.tf_convert import DEFAULT_OPSET

    from ._report import emit, human_bytes

    report = export(
        args.model, args.output, opset=args.opset or DEFAULT_OPSET, verify=not args.no_verify,
        precision=args.precision, force=args.force, ort=args.ort, unsafe=args.unsafe_load_code,
    )
    lines = [
        f"wrote {report.path}: {human_bytes(report.bytes)}",
        f"  untied (plain tf2onnx) would be {human_bytes(report.untied_bytes)}; "
        f"ratio {report.bytes / report.untied_bytes:.3f}",
        f"  ties stored once: {len(report.ties)}; opset {report.opset}; precision {report.precision}",
    ]
    if report.parity:
        lines.append(f"  parity vs Keras: max abs diff {report.parity.max_abs:.3g} at batch sizes "
                     f"{list(report.parity.batch_sizes)} (atol {report.parity.atol:g})")
    else:
        lines.append("  parity: not checked (--no-verify)")
    if report.ort_path:
        lines.append(f"  ORT format: {report.ort_path}")
    emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
