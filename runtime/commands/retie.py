HELP = "Fold duplicated and transposed initializers of any ONNX file into one per tie."


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file to read")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from tiedonnx.runtime.graph.retie import retie_file

    from ._report import emit, human_bytes

    report = retie_file(args.model, args.output, force=args.force)
    lines = [f"wrote {args.output}: {human_bytes(report['bytes_after'])} "
             f"(was {human_bytes(report['bytes_before'])}; saved {human_bytes(report['bytes_saved'])})"]
    lines += [f"  {f['copy']} -> {f['relation']} of {f['source']}" for f in report["folded"]]
    if not report["folded"]:
        lines.append("  nothing to fold: no initializer is a copy or transpose of another")
    emit(report, as_json=args.json, lines=lines)
    return 0
