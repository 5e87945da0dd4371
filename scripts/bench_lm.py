"""Language-model benchmark: GPT-2 *base* from its configuration, exported three ways.

GPT-2 base (vocabulary 50257, 12 layers, 12 heads, hidden 768, random seeded
weights; nothing is downloaded) as a KerasHub ``GPT2CausalLM`` without a
preprocessor: inputs ``token_ids`` and ``padding_mask``. Its token embedding
is tied to the output projection (38.6 M of its 124 M parameters).

Each exporter runs in its own fresh process (so each peak RSS is its own):
the process builds the same model from the same seed, then exports it. Printed
per exporter: file bytes, export wall time (model build excluded), peak RSS of
the process and its growth during the export, and logits parity against Keras
at sequence length 128 (batch 2, the second row right-padded to 100 tokens).

    python scripts/bench_lm.py [--repeats 1] [--length 128] [--out DIR] [--precision fp32]
    python scripts/bench_lm.py --one tiedonnx --precision int8 --layers 4   # one exporter, one process, JSON

``--precision`` applies to tiedonnx only (the others export fp32); the JSON of
``--one tiedonnx`` also gives the seconds spent in each export step.

Plain tf2onnx and Keras export run inside tiedonnx's tf2onnx memory fix
(:mod:`tiedonnx.converter._tf2onnx_large`, which tiedonnx applies itself above
64 MB of weights): with tf2onnx's defaults, plain tf2onnx grew past 23 GB and
was killed on this project's 24 GB machine. ``--tf2onnx-defaults`` runs them
without it (expect the out-of-memory kill on such a machine).

Targets (issue 11): tiedonnx file <= 0.78x plain tf2onnx; tiedonnx export wall
time (no verification) <= 1.3x plain tf2onnx; logits max abs diff <= 1e-4.
Needs the [convert] extra and keras-hub; about 10 minutes and 6 GB of memory
on a 2-core machine.
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

EXPORTERS = ("tf2onnx", "keras.export", "tiedonnx")
SEED = 0


def gpt2_base(layers: int = 12):
    import keras
    import keras_hub

    keras.utils.set_random_seed(SEED)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=50257, num_layers=layers, num_heads=12, hidden_dim=768,
                                             intermediate_dim=3072, max_sequence_length=1024)
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)


def _plain_tf2onnx(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx


    specs = [tf.TensorSpec((None, None), tf.int32, name="token_ids"),
             tf.TensorSpec((None, None), tf.int32, name="padding_mask")]
    fn = tf.function(lambda t, m: {"logits": model({"token_ids": t, "padding_mask": m}, training=False)},
                     input_signature=specs)
    tf2onnx.convert.from_function(fn, input_signature=specs, opset=15, output_path=str(path))


def _keras_export(model, path: Path) -> None:
    import contextlib
    import io

    import numpy as np

    model({"token_ids": np.zeros((1, 4), "int32"), "padding_mask": np.ones((1, 4), "int32")})  # export needs a call
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints a summary of the export
        model.export(str(path), format="onnx", verbose=False)


def _tiedonnx(model, path: Path, precision: str = "fp32", steps: list | None = None) -> None:
    from tiedonnx.converter.export import export

    def on_step(message: str) -> None:  # seconds since the export started, per step
        if steps is not None:
            steps.append((time.perf_counter(), message.split(" (")[0][:40]))

    export(model, path, verify=False, force=True, precision=precision, on_step=on_step)


def _rss_mib() -> float:
    from tiedonnx.runtime.rss import rss_bytes

    return rss_bytes() / 2**20


def _parity(model, path: Path, length: int) -> float:
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50257, size=(2, length)).astype("int32")
    mask = np.ones((2, length), "int32")
    mask[1, 100:] = 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    by_name = {"token_ids": ids, "padding_mask": mask}
    # Other exporters may name inputs their own way: then the model's declared order.
    feed = by_name if set(names) == set(by_name) else dict(zip(names, [ids, mask]))
    got = session.run(None, feed)[0]
    want = np.asarray(model({"token_ids": ids, "padding_mask": mask}, training=False))
    return float(np.abs(got.astype(np.float64) - want).max())


def run_one(name: str, out: Path, length: int, defaults: bool = False, precision: str = "fp32",
            layers: int = 12, keep: bool = False) -> dict:
    """In a fresh process: build, export with ``name``, measure."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # quiet, but for the graph passes' timings (kept below)
    passes: list[str] = []
    keep_passes = logging.Handler(logging.INFO)
    keep_passes.emit = lambda record: passes.append(record.getMessage())
    pass_log = logging.getLogger("tiedonnx.runtime.graph.passes")
    pass_log.setLevel(logging.INFO)
    pass_log.addHandler(keep_passes)
    pass_log.propagate = False
    import tiedonnx.converter  # noqa: F401  (imports TensorFlow quietly)

    import contextlib

    from tiedonnx.converter._tf2onnx_large import large_model_conversion

    model = gpt2_base(layers)
    before = _rss_mib()
    path = out / f"gpt2_base.{name}.{precision}.onnx"
    fix = contextlib.nullcontext() if defaults or name == "tiedonnx" else large_model_conversion()
    steps = []
    start = time.perf_counter()
    try:
        with fix:
            if name == "tiedonnx":
                _tiedonnx(model, path, precision, steps)
            else:
                {"tf2onnx": _plain_tf2onnx, "keras.export": _keras_export}[name](model, path)
    except Exception as exc:  # a benchmark reports a failing exporter instead of stopping
        return {"name": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ends = [t for t, _ in steps[1:]] + [start + seconds]
    result = {"name": name, "precision": precision, "layers": layers, "bytes": path.stat().st_size, "seconds": seconds,
              "step_seconds": {m: round(end - t, 2) for (t, m), end in zip(steps, ends)}, "peak_rss_mib": peak,
              "rss_before_mib": before, "passes": passes}
    try:
        result["max_abs"] = _parity(model, path, length)
    except Exception as exc:
        result["max_abs_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if keep:
        result["path"] = str(path)
    else:
        path.unlink()
    return result


def _child(name: str, out: Path, length: int, defaults: bool, precision: str, layers: int) -> dict:
    command = [sys.executable, __file__, "--one", name, "--out", str(out), "--length", str(length),
               "--precision", precision, "--layers", str(layers)]
    done = subprocess.run(command + (["--tf2onnx-defaults"] if defaults else []), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode < 0:
        return {"name": name, "error": f"killed by signal {-done.returncode} (out of memory?)"}
    if done.returncode or not lines:
        return {"name": name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="export runs per exporter (median)")
    parser.add_argument("--length", type=int, default=128, help="sequence length of the parity check")
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--tf2onnx-defaults", action="store_true",
                        help="run plain tf2onnx and Keras export without the memory fix")
    parser.add_argument("--one", choices=EXPORTERS,
                        help="run only this exporter, in this process, and print its figures as JSON")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8", "int4"),
                        help="tiedonnx's weight precision (with --one tiedonnx: one precision per process)")
    parser.add_argument("--keep", action="store_true", help="with --one: keep the exported file (in --out)")
    parser.add_argument("--layers", type=int, default=12,
                        help="transformer layers (12 is GPT-2 base; fewer for a smaller, faster run)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.out or Path(tempfile.mkdtemp(prefix="tiedonnx-bench-lm-")),
                                 args.length, args.tf2onnx_defaults, args.precision,
                                 args.layers, args.keep)))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe

    print(describe())
    with tempfile.TemporaryDirectory(prefix="tiedonnx-bench-lm-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        runs = {name: [] for name in EXPORTERS}
        for _ in range(args.repeats):  # interleaved, so a burst of load does not land on one exporter
            for name in EXPORTERS:
                runs[name].append(_child(name, out, args.length, args.tf2onnx_defaults, args.precision, args.layers))
    _print(runs, args.length)
    if not args.tf2onnx_defaults:
        print("plain tf2onnx and keras.export ran inside tiedonnx's tf2onnx memory fix (--tf2onnx-defaults: without)")
    return 0


def _print(runs: dict, length: int) -> None:
    print(f"\nGPT-2 base (124 M parameters, random weights), logits parity at sequence length {length}:")
    print("| exporter | file bytes | x tf2onnx | export s (median) | x tf2onnx | peak RSS MiB | "
          "RSS growth MiB | logits max abs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {}
    for name, results in runs.items():
        good = [r for r in results if "error" not in r]
        if not good:
            print(f"| {name} | failed: {results[-1]['error']} | | | | | | |")
            continue
        seconds = statistics.median(r["seconds"] for r in good)
        last = good[-1]
        base.setdefault("bytes", last["bytes"])
        base.setdefault("seconds", seconds)
        parity = f"{last['max_abs']:.2e}" if "max_abs" in last else last.get("max_abs_error", "")
        print(f"| {name} | {last['bytes']:,} | {last['bytes'] / base['bytes']:.3f} | {seconds:.1f} | "
              f"{seconds / base['seconds']:.2f} | {max(r['peak_rss_mib'] for r in good):,.0f} | "
              f"{max(r['peak_rss_mib'] - r['rss_before_mib'] for r in good):,.0f} | {parity} |")


if __name__ == "__main__":
    sys.exit(main())
