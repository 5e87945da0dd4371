"""``tiedonnx export``: a .keras model to ONNX, one initializer per tie, verified against Keras."""

from __future__ import annotations

import argparse

from ..options import DECODER_KINDS, DEFAULT_OPSET, PRECISIONS, SUPPORTED_OPSETS
from . import _flags
from .quantize import add_int4_arguments, add_int8_arguments

HELP = "Export a .keras model to ONNX with one initializer per tie, verified against Keras."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.keras",
                        help="the .keras file (with --task generate also a KerasHub preset folder)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                        help="the .onnx file to write (with --task generate: the folder)")
    parser.add_argument("--task", choices=("forward", "generate"), default="forward",
                        help="forward: one forward pass (default); generate: a generation folder with a "
                             "KV-cache decoder and the tokenizer, for `tiedonnx generate` (KerasHub CausalLM)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="--task generate: longest prompt + new tokens (default: the model's position "
                             "table, unbounded for rotary models)")
    parser.add_argument("--decoder", choices=DECODER_KINDS, default=None,
                        help="--task generate: auto (default) writes GPT-2, Qwen and Llama decoders with "
                             "onnxruntime's fused ops (GroupQueryAttention) and traces other families; "
                             "fused refuses other families; traced always traces KerasHub's call_with_cache")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        choices=list(SUPPORTED_OPSETS), metavar="N",
                        help=f"ONNX opset, {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]} "
                             f"(default: {DEFAULT_OPSET})")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="weight precision (default: fp32)")
    add_int8_arguments(parser)
    add_int4_arguments(parser)
    parser.add_argument("--ort", action="store_true",
                        help="also write an ORT-format copy (OUT.ort) and its operator config")
    parser.add_argument("--input-spec", action="append", metavar="NAME:DTYPE:AXES",
                        help="declare an input of a model that declares none (a subclassed model), "
                             "once per input in order, e.g. token_ids:int32:batch,sequence")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the parity check against Keras (default: verify)")
    _flags.add_force(parser)
    _flags.add_json(parser)
    _flags.add_quiet(parser)
    _flags.add_keras_loading(parser)


def run(args: argparse.Namespace) -> int:
    from ._preflight import before_tensorflow, check_export
    from ._progress import StepPrinter

    before_tensorflow(check_export, args, what="tiedonnx export")  # before TensorFlow loads
    if args.task == "generate":
        return _run_generate(args)
    if args.max_length is not None:
        from ..errors import UsageError

        raise UsageError("--max-length applies to --task generate only. Add --task generate or drop --max-length.")
    if args.decoder is not None:
        from ..errors import UsageError

        raise UsageError("--decoder applies to --task generate only. Add --task generate or drop --decoder.")
    # Step lines on a terminal only: a pipe or a log gets one result or error line.
    with StepPrinter(enabled=False if args.json or args.quiet else None) as step:
        step("loading TensorFlow and Keras")
        from tiedonnx.converter.export import export

        report = export(args.model, args.output, opset=args.opset, verify=not args.no_verify,
                        precision=args.precision, block_size=args.block_size,
                        symmetric=args.symmetric, short_names=args.short_names,
                        per_channel=args.per_channel, reduce_range=args.reduce_range,
                        rounding=args.rounding, int8_ties=args.int8_ties, accuracy_level=args.accuracy_level,
                        force=args.force, ort=args.ort, unsafe=args.unsafe_load_code,
                        import_modules=args.import_modules, input_spec=args.input_spec, on_step=step)
    _flags.emit(report.as_dict(), as_json=args.json, lines=render(report))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from tiedonnx.converter.generation import export_generation

    report = export_generation(
        args.model, args.output, precision=args.precision, max_length=args.max_length,
        verify=not args.no_verify, force=args.force, unsafe=args.unsafe_load_code,
        import_modules=args.import_modules, block_size=args.block_size, symmetric=args.symmetric,
        short_names=args.short_names, per_channel=args.per_channel, reduce_range=args.reduce_range,
        rounding=args.rounding, int8_ties=args.int8_ties, accuracy_level=args.accuracy_level,
        decoder=args.decoder or "auto")
    _flags.emit(report.as_dict(), as_json=args.json, lines=render_generation(report))
    return 0


def _graph_detail(report) -> str:
    if report.decoder == "fused":
        return "(onnxruntime's fused ops)"
    return "(tf2onnx through call_with_cache" + (f": {report.decoder_note})" if report.decoder_note else ")")


def render_generation(report) -> list[str]:
    c = report.config
    lines = [f"wrote generation folder {report.folder}: {report.model_file} "
             f"{_flags.human_bytes(report.bytes)}, "
             f"precision {report.precision}",
             f"  decoder: {c.num_layers} layers, {c.num_kv_heads} key/value heads of {c.head_dim}, vocabulary "
             f"{c.vocabulary_size}, max length {c.max_length or 'unbounded'}; ties stored once: {len(report.ties)}",
             f"  graph: {report.decoder} " + _graph_detail(report),
             "  tokenizer: " + (report.tokenizer or "none (generate from token ids)")]
    if report.parity_max_abs is not None:
        lines.append(f"  parity vs Keras on cached steps: max abs diff {report.parity_max_abs:.3g}")
    else:
        lines.append("  parity: not checked (--no-verify)")
    lines.append(f'  next: tiedonnx generate {report.folder} "Your prompt"')
    return lines


def render(report) -> list[str]:
    size = _flags.human_bytes
    lines = [f"wrote {report.path}: {size(report.bytes)}; opset {report.opset}, "
             f"precision {report.precision}"]
    if report.ties:
        lines.append(f"  ties stored once: {len(report.ties)}; untied, this file would weigh "
                     f"{size(report.untied_bytes)} (ratio {report.bytes / report.untied_bytes:.3f}); "
                     f"plain tf2onnx wrote {size(report.plain_bytes)}")
    else:
        lines.append(f"  no ties to keep: the model has no tied weights "
                     f"(plain tf2onnx wrote {size(report.plain_bytes)})")
    if report.bytes > report.plain_bytes:
        saved = report.untied_bytes - report.bytes
        lines.append(f"  {report.bytes - report.plain_bytes:,} B larger than plain tf2onnx's file: on "
                     f"a model this small tiedonnx's metadata (tie record, versions) outweighs "
                     f"the {saved:,} B it saves")
    if report.parity:
        lengths = (f", sequence lengths {list(report.parity.sequence_lengths)}"
                   if report.parity.sequence_lengths else "")
        lines.append(f"  parity vs Keras: max abs diff {report.parity.max_abs:.3g} at batch sizes "
                     f"{list(report.parity.batch_sizes)}{lengths} (atol {report.parity.atol:g}, "
                     f"{report.parity.compute_dtype} compute)")
    else:
        lines.append("  parity: not checked (--no-verify)")
    if report.ort_path:
        lines.append(f"  ORT format: {report.ort_path}")
    return lines
