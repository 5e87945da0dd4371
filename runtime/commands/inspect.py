"""``tiedonnx inspect``: describe an ONNX file and re-check its ties."""

from __future__ import annotations

import argparse

from . import _flags

HELP = "Describe an ONNX file: inputs, outputs, opset, initializers, ties (re-checked), untied size."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="the .onnx or .ort file")
    _flags.add_json(parser)


def run(args: argparse.Namespace) -> int:
    from ._preflight import refuse_keras_for_onnx

    refuse_keras_for_onnx(args.model, command="inspect")  # before the heavier imports
    from ..graph.inspect import inspect_file

    report = inspect_file(args.model)
    _flags.emit(report.as_dict(), as_json=args.json, lines=render(args.model, report))
    return 0


def render(path: str, info) -> list[str]:
    size = _flags.human_bytes
    # tf2onnx writes producer_version "1.17.0 None" when its build has no git hash.
    producer = (info.producer or "").removesuffix(" None") or "?"
    lines = [f"{path}: {size(info.bytes)}, opset {info.opset}, producer {producer}"]
    lines += [f"  input  {v['name']}: {v['dtype']} {v['shape']}" for v in info.inputs]
    lines += [f"  output {v['name']}: {v['dtype']} {v['shape']}" for v in info.outputs]
    lines.append(f"  initializers: {len(info.initializers)}")
    for init in sorted(info.initializers, key=lambda i: -i["bytes"])[:10]:
        lines.append(f"    {init['name']}: {init['dtype']} {init['shape']} {init['bytes']:,} B")
    lines.append(f"  ties: {len(info.ties)}")
    for tie in info.ties:
        keras = tie.get("keras") or {}
        who = f" ({keras.get('decoder')} -> {keras.get('tied_to')})" if keras else ""
        uses = ", ".join(u["relation"] for u in tie.get("uses", [])) or "shared"
        lines.append(f"    {tie['initializer']}{who}: {uses}; {tie['status']}")
    if info.untied_duplicates:
        lines.append(f"  duplicated initializers left: {len(info.untied_duplicates)} "
                     "(run `tiedonnx retie`)")
    lines.append(f"  untied, this file would weigh {size(info.untied_bytes)}")
    return lines
