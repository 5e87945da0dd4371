HELP = ("Train a tied autoencoder on bundled digits, export fp32/fp16/int8 ONNX, verify, "
        "benchmark, and draw the results.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--force", action="store_true", help="overwrite earlier demo output in --out")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    import sys
    import time

    from tiedonnx.converter.demo import run_demo
    from tiedonnx.converter.demo_plots import TABLE_HEADER, table_rows

    from ._report import emit

    start = time.perf_counter()

    def step(message: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    report = run_demo(args.out, epochs=args.epochs, force=args.force, on_step=step)
    rows = [TABLE_HEADER] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", f"done in {report.seconds:.1f} s; wrote {args.out}/: reconstructions.png, "
              "size_latency.png, report.md, report.json, model.keras and the .onnx files"]
    emit(report.as_dict(), as_json=args.json, lines=lines)
    return 0
