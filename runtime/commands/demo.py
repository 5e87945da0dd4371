"""``tiedonnx demo``: train, export, verify and benchmark a tied autoencoder on bundled digits."""

from __future__ import annotations

import argparse

from . import _flags

HELP = ("Train a tied autoencoder on bundled digits, export fp32/fp16/int8 ONNX, verify, "
        "benchmark, and draw the results.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-out", metavar="DIR",
                        help="output folder (default: demo-out)")
    parser.add_argument("--epochs", type=int, default=30, metavar="N",
                        help="training epochs (default: 30)")
    parser.add_argument("--force", action="store_true",
                        help="replace earlier demo output in --out (default: refuse)")
    _flags.add_json(parser)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from ..extras import require

    require("convert", "demo", what="tiedonnx demo")
    from tiedonnx.converter.demo import run_demo
    from tiedonnx.converter.demo_plots import TABLE_HEADER, table_rows

    from .._term import format_table

    start = time.perf_counter()

    def step(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    report = run_demo(args.out, epochs=args.epochs, force=args.force, on_step=step)
    lines = [format_table(TABLE_HEADER, table_rows(report)), "",
             f"done in {report.seconds:.1f} s; wrote {args.out}/: reconstructions.png, "
             "size_latency.png, report.md, report.json, model.keras, the .onnx files"
             f"{' and web/ (tiedonnx web --serve ' + args.out + '/web)' if report.web_dir else ''}"]
    _flags.emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
