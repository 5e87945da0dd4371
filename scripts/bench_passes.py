"""Graph-pass time on one real file: ``to_precision`` per precision, this checkout against another.

    python scripts/bench_passes.py MODEL.onnx [--baseline CHECKOUT] [--rounds 2] [--precisions int8 int4]

Each (checkout, precision) runs in a fresh process that loads ``MODEL.onnx`` and
times ``to_precision`` alone (loading excluded): wall seconds and peak RSS of
the process. ``--baseline`` names another git checkout of tiedonnx (for
instance ``git worktree add /tmp/main main``); its ``runtime/`` is imported in
place of this one's through a shim package, so both run on the same file and
machine, interleaved round by round (STYLE 23); the median and the spread are
printed. The graph passes' cost grows with weights x nodes where a pass scans
the graph per weight, so a language model shows it: GPT-2 base with 4 layers
(``python scripts/bench_lm.py --one tiedonnx --layers 4 --keep --out DIR``
writes one: 544 nodes, 58 initializers, 271 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(model: str, precision: str) -> dict:
    import onnx

    from tiedonnx.runtime.graph import quantize

    proto = onnx.load(model)
    start = time.perf_counter()
    out = quantize.to_precision(proto, precision)
    seconds = time.perf_counter() - start
    return {"precision": precision, "seconds": seconds, "nodes": len(out.graph.node),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "code": str(Path(quantize.__file__).resolve().parents[2])}


def _shim(checkout: Path, folder: Path) -> Path:
    """A folder holding a ``tiedonnx`` package whose ``runtime``/``converter`` are ``checkout``'s."""
    package = folder / "tiedonnx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for part in ("runtime", "converter"):
        (package / part).symlink_to(checkout.resolve() / part)
    return folder


def _run(model: str, precision: str, path_entry: Path | None) -> dict:
    env = dict(os.environ)
    if path_entry is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path_entry), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__, "--child", model, precision], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir())
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an fp32 .onnx file (a tiedonnx export)")
    parser.add_argument("--baseline", type=Path, default=None, help="another tiedonnx checkout to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["int8", "int4"], choices=("fp16", "int8", "int4"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    sys.path.insert(0, str(HERE))
    from machine import describe

    print(describe())
    with tempfile.TemporaryDirectory(prefix="tiedonnx-bench-passes-") as tmp:
        contenders = {"this checkout": None}
        if args.baseline is not None:
            contenders["baseline"] = _shim(args.baseline, Path(tmp))
        runs = {(c, p): [] for c in contenders for p in args.precisions}
        for _ in range(args.rounds):
            for precision in args.precisions:
                for name, entry in contenders.items():
                    runs[name, precision].append(_run(args.model, precision, entry))
    print(f"\nto_precision on {args.model} ({args.rounds} round(s), interleaved; load {os.getloadavg()[0]:.1f}):")
    print("| code | precision | seconds median | min-max | peak RSS MiB | nodes |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, precision), results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            print(f"| {name} | {precision} | failed: {results[-1]['error']} | | | |")
            continue
        seconds = [r["seconds"] for r in good]
        print(f"| {name} ({good[0]['code']}) | {precision} | {statistics.median(seconds):.1f} | "
              f"{min(seconds):.1f}-{max(seconds):.1f} | {max(r['peak_rss_mib'] for r in good):,.0f} | "
              f"{good[0]['nodes']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
