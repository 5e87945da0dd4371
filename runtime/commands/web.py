"""``tiedonnx web``: a static page that runs the model in the browser (onnxruntime-web)."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ..options import DEFAULT_PORT, PRECISIONS, RUNTIME_MODES
from ._flags import add_force, add_json, emit

HELP = ("Write a static web page that runs MODEL.onnx in the browser (onnxruntime-web), or that "
        "generates text from a generation folder, or --serve a written one.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL.onnx|GEN_DIR",
                        help="the .onnx file to put on the page (copied unchanged), or a generation folder "
                             "(tiedonnx export ... --task generate): a page that streams generated text")
    parser.add_argument("out", nargs="?", metavar="OUT_DIR", help="the site folder to write")
    parser.add_argument("--runtime", choices=RUNTIME_MODES, default="local",
                        help="local: copy the pinned onnxruntime-web wasm files into the site "
                             "(offline); cdn: load them from jsDelivr with integrity hashes "
                             "(default: local)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="generation folders: which decoder in DIR/onnx/ the page loads "
                             "(default: the one DIR/tiedonnx.json names)")
    add_force(parser)
    add_json(parser)
    parser.add_argument("--serve", metavar="SITE_DIR", default=None,
                        help="serve a written site on 127.0.0.1 (COOP/COEP headers, .mjs/.wasm "
                             "MIME types) instead of writing one")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                        help=f"port for --serve (default: {DEFAULT_PORT}; 0 picks a free one)")


def run(args: argparse.Namespace) -> int:
    if args.serve is not None:
        if args.model is not None:
            raise UsageError(f"--serve takes only the site folder; received extra arguments "
                             f"{[a for a in (args.model, args.out) if a]}. Run "
                             f"'tiedonnx web --serve {args.serve}' alone.")
        return _serve(args)
    if args.model is None or args.out is None:
        raise UsageError("tiedonnx web needs MODEL.onnx (or a generation folder) and OUT_DIR (or --serve "
                         "SITE_DIR). Example: tiedonnx web ae.onnx site/ && tiedonnx web --serve site/")
    from ..generation_folder import CONFIG_NAME

    if os.path.isdir(args.model) and os.path.isfile(os.path.join(args.model, CONFIG_NAME)):
        return _generation_site(args)
    if args.precision is not None:
        raise UsageError(f"--precision picks a decoder of a generation folder; {args.model!r} is not one "
                         f"(no {CONFIG_NAME}). Drop --precision, or pass the folder.")
    from ..web import write_site

    report = write_site(args.model, args.out, runtime=args.runtime, force=args.force)
    model = report.models[0]
    lines = [f"wrote {report.out_dir}/ ({len(report.written)} files, runtime={report.runtime})"]
    lines += [f"  input  {spec['name']}: {spec['dtype']} {spec['shape']}" for spec in model["inputs"]]
    lines += [f"  output {spec['name']}: {spec['dtype']} {spec['shape']}" for spec in model["outputs"]]
    return _emit_site(args, report, lines, f"onnxruntime-web {report.runtime_bytes:,}, model {model['bytes']:,}, "
                                           f"page {report.page_bytes:,}")


#: Measured with scripts/bench_web_generate.py (README "Deploy in a browser").
INT4_NOTE = ("  note: onnxruntime-web's wasm build has no SIMD kernel for int4's MatMulNBits and "
             "GatherBlockQuantized: the GPT-2 small int4 page decoded at 0.02-0.11x native onnxruntime, "
             "the int8 page at 0.32x. int4 is the smallest download; for speed, publish --precision int8.")


def _generation_site(args: argparse.Namespace) -> int:
    from ..generation_folder import MODEL_FILES
    from ..web import write_generation_site

    report = write_generation_site(args.model, args.out, precision=args.precision, runtime=args.runtime,
                                   force=args.force)
    model = report.models[0]
    data = sum(f["bytes"] for f in report.data_files)
    lines = [f"wrote {report.out_dir}/ ({len(report.written)} files, runtime={report.runtime}): text generation",
             f"  decoder {model['file']} ({model['bytes']:,} bytes)"]
    if model["file"].endswith("/" + MODEL_FILES["int4"]):
        lines.append(INT4_NOTE)
    return _emit_site(args, report, lines, f"runtime and tokenizer library {report.runtime_bytes:,}, decoder "
                                           f"{model['bytes']:,}, tokenizer and config files {data:,}, "
                                           f"page {report.page_bytes:,}")


def _emit_site(args: argparse.Namespace, report, lines: list[str], parts: str) -> int:
    """Print a written site's report: ``lines``, its download size (``parts`` itemizes it) and how to open it."""
    lines = [*lines, f"  download: {report.download_bytes:,} bytes ({report.download_gzip_bytes():,} gzipped): "
                     f"{parts}",
             f"open: tiedonnx web --serve {report.out_dir}"]
    emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..web import serve

    def ready(url: str) -> None:
        print(f"serving {args.serve} at {url} (Ctrl+C to stop)", flush=True)

    try:
        serve(args.serve, port=args.port, on_ready=ready)
    except KeyboardInterrupt:
        print("stopped")
    return 0
