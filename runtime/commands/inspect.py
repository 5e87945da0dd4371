HELP = "Describe an ONNX file: inputs, outputs, opset, initializers, ties (re-checked), untied size."


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from tiedonnx.runtime.graph.inspect import inspect_model
    from tiedonnx.runtime.model_file import read_model

    from ._report import emit, human_bytes

    checked = read_model(args.model)
    info = inspect_model(checked.proto, file_bytes=checked.path.stat().st_size)
    lines = [f"{args.model}: {human_bytes(info['bytes'])}, opset {info['opset']}, producer {info['producer'] or '?'}"]
    lines += [f"  input  {v['name']}: {v['dtype']} {v['shape']}" for v in info["inputs"]]
    lines += [f"  output {v['name']}: {v['dtype']} {v['shape']}" for v in info["outputs"]]
    lines.append(f"  initializers: {len(info['initializers'])}")
    for init in sorted(info["initializers"], key=lambda i: -i["bytes"])[:10]:
        lines.append(f"    {init['name']}: {init['dtype']} {init['shape']} {init['bytes']:,} B")
    lines.append(f"  ties: {len(info['ties'])}")
    for tie in info["ties"]:
        keras = tie.get("keras", {})
        who = f" ({keras.get('decoder')} -> {keras.get('tied_to')})" if keras else ""
        uses = ", ".join(u["relation"] for u in tie.get("uses", [])) or "shared"
        lines.append(f"    {tie['initializer']}{who}: {uses}; {tie['status']}")
    if info["untied_duplicates"]:
        lines.append(f"  duplicated initializers left: {len(info['untied_duplicates'])} (run `tiedonnx retie`)")
    lines.append(f"  untied, this file would weigh {human_bytes(info['untied_bytes'])}")
    emit(info, as_json=args.json, lines=lines)
    return 0
