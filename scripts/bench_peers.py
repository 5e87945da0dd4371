"""tiedonnx against its peers on one model, side by side: raw onnxruntime, LiteRT, OpenVINO.

  python scripts/bench_peers.py [--threads 2] [--rounds 5] [--batches 1,64,256,1024]
  python scripts/bench_peers.py --ep-python /tmp/ovvenv/bin/python   # + onnxruntime's OpenVINO EP

The 784-256 tied autoencoder (``tiedonnx.runtime.testing.tied_autoencoder``,
weights N(0, 0.05)) as tiedonnx fp32 and int8 ``.onnx``; the same weights as a
plain Keras model converted to LiteRT fp32 and dynamic-range int8 (the TFLite
converter stores the tie twice; it needs TensorFlow); the fp32 ``.onnx`` run by
OpenVINO's own runtime with ``INFERENCE_PRECISION_HINT`` f32 and bf16.

Peers come from the ``bench`` extra (``pip install -e ".[bench]"``: LiteRT's
``ai-edge-litert``; TensorFlow's converter writes the ``.tflite`` files, and
TensorFlow 2.21 no longer ships ``tf.lite.Interpreter``). A peer that is not
installed is one line on stderr; the others are measured.

Fairness (tiedonnx.runtime.timing): every runtime gets ``--threads`` threads
(onnxruntime ``intra_op_num_threads``, LiteRT ``num_threads``, OpenVINO
``INFERENCE_NUM_THREADS``); each timed window starts after a sleep so the last
contender's spinning threads have stopped; rounds are interleaved with the
order rotated; ratios are taken within a round, median over rounds. Every
contender returns a fresh output array (LiteRT ``get_tensor`` copies,
OpenVINO's output is copied).

onnxruntime's OpenVINO EP: the plugin wheel (``onnxruntime-ep-openvino``)
installs beside the standard onnxruntime, but its factory offers no device on
a non-Intel CPU; ``onnxruntime-openvino`` replaces the ``onnxruntime`` module
itself, so it lives in a throwaway venv (``python3.11 -m venv /tmp/ovvenv &&
/tmp/ovvenv/bin/pip install onnxruntime-openvino onnx``) and ``--ep-python``
times it there against that wheel's own CPU EP, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from machine import describe  # noqa: E402  (scripts/ is on sys.path)

from tiedonnx.runtime import load  # noqa: E402
from tiedonnx.runtime._term import format_table  # noqa: E402
from tiedonnx.runtime.graph.quantize import to_precision  # noqa: E402
from tiedonnx.runtime.testing import tied_autoencoder, tied_autoencoder_reference, tied_autoencoder_weights  # noqa: E402
from tiedonnx.runtime.timing import Rounds, interleave, timed  # noqa: E402

FEATURES, HIDDEN, SCALE = 784, 256, 0.05
_SAID: set[str] = set()


def say_missing(line: str) -> None:
    """A missing peer, in one stderr line, once per run."""
    if line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr)


def build_onnx(folder: Path) -> dict[str, Path]:
    base = tied_autoencoder(FEATURES, HIDDEN, weight_scale=SCALE, bias_scale=0.0)
    paths = {}
    for precision in ("fp32", "int8"):
        paths[precision] = folder / f"ae_{precision}.onnx"
        onnx.save(to_precision(base, precision), paths[precision])
    return paths


def litert_interpreter():
    """LiteRT's Interpreter class, or None after one line saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        say_missing('LiteRT: ai-edge-litert is not installed (pip install -e ".[bench]"); no LiteRT rows')
        return None
    return Interpreter


def build_litert(folder: Path) -> dict[str, Path]:
    """The same weights as a plain Keras model, converted by the TFLite converter ({} without TF or LiteRT)."""
    if litert_interpreter() is None:
        return {}
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        say_missing(f"LiteRT: TensorFlow is not installed ({exc}; pip install -e \".[convert]\"), it "
                    "converts the .tflite files; no LiteRT rows")
        return {}
    w = tied_autoencoder_weights(FEATURES, HIDDEN, weight_scale=SCALE, bias_scale=0.0)
    x = keras.Input((FEATURES,), name="x")
    enc = keras.layers.Dense(HIDDEN, activation="sigmoid")
    dec = keras.layers.Dense(FEATURES, activation="sigmoid")
    model = keras.Model(x, dec(enc(x)))
    enc.set_weights([w["W"], w["b1"]])
    dec.set_weights([np.ascontiguousarray(w["W"].T), w["b2"]])
    paths = {}
    for name, optimize in (("fp32", False), ("int8", True)):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if optimize:  # dynamic range: int8 weights, float activations quantized per call
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        paths[name] = folder / f"ae_{name}.tflite"
        paths[name].write_bytes(converter.convert())
    return paths


def litert_runner(path: Path, threads: int, x: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    index = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(index, list(x.shape))
    interp.allocate_tensors()
    out = interp.get_output_details()[0]["index"]

    def run():
        interp.set_tensor(index, x)
        interp.invoke()
        return interp.get_tensor(out)  # a copy

    return run


def openvino_runners(path: Path, threads: int, x: np.ndarray) -> dict:
    try:
        import openvino as ov
    except ImportError as exc:
        say_missing(f"OpenVINO: openvino is not installed ({exc}; pip install openvino); no OpenVINO rows")
        return {}
    core = ov.Core()
    runners = {}
    for hint in ("f32", "bf16"):
        compiled = core.compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()

        def run(request=request):
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

        runners[f"OpenVINO {hint}"] = run
    return runners


def ort_runner(path: Path, threads: int, x: np.ndarray):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feeds)


def contenders(onnx_paths, tflite_paths, threads: int, x: np.ndarray) -> dict:
    found = {}
    for precision, path in onnx_paths.items():
        model = load(path, providers="cpu", threads=threads)
        found[f"tiedonnx {precision}"] = lambda model=model: model.run(x)
        found[f"raw onnxruntime {precision}"] = ort_runner(path, threads, x)
    for name, path in tflite_paths.items():
        found[f"LiteRT {name}"] = litert_runner(path, threads, x)
    found.update(openvino_runners(onnx_paths["fp32"], threads, x))
    return found


def max_abs(runners: dict, x: np.ndarray) -> dict[str, float]:
    want = tied_autoencoder_reference(x, FEATURES, HIDDEN, weight_scale=SCALE, bias_scale=0.0)
    out = {}
    for name, run in runners.items():
        got = run()
        got = got["y"] if isinstance(got, dict) else got[0] if isinstance(got, list) else got
        out[name] = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    return out


_EP_SCRIPT = r"""
import json, sys, time, statistics
import numpy as np, onnxruntime as ort
path, threads, batches, rounds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
def session(provider, options):
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=[(provider, options)] if options is not None else [provider])
kinds = {"ORT CPU EP": ("CPUExecutionProvider", None),
         "ORT OpenVINO EP f32": ("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32",
                                 "num_of_threads": str(threads)}),
         "ORT OpenVINO EP bf16": ("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(threads),
                                  "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})})}
sessions = {k: session(*v) for k, v in kinds.items()}
active = {k: s.get_providers()[0] for k, s in sessions.items()}
result = {"onnxruntime": ort.__version__, "active": active, "batches": {}}
for batch in batches:
    x = {"x": np.random.default_rng(1).random((batch, 784), dtype=np.float32)}
    calls = max(5, 3000 // batch)
    medians = {k: [] for k in sessions}
    for r in range(rounds):
        names = list(sessions)[r % len(sessions):] + list(sessions)[:r % len(sessions)]
        for k in names:
            time.sleep(0.15)
            for _ in range(10): sessions[k].run(None, x)
            ts = []
            for _ in range(calls):
                t = time.perf_counter(); sessions[k].run(None, x); ts.append(time.perf_counter() - t)
            medians[k].append(statistics.median(ts))
    result["batches"][str(batch)] = medians
print(json.dumps(result))
"""


def openvino_ep(python: str, path: Path, threads: int, batches: list[int], rounds: int) -> None:
    proc = subprocess.run([python, "-c", _EP_SCRIPT, str(path), str(threads), json.dumps(batches),
                           str(rounds)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"\nOpenVINO EP run failed: {proc.stderr.strip()[-600:]}")
        return
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nonnxruntime's OpenVINO EP ({python}: onnxruntime {data['onnxruntime']}, "
          f"active providers {data['active']}), same {threads} threads, us per call:")
    rows = []
    for batch, medians in data["batches"].items():
        rounds = Rounds({k: tuple(v) for k, v in medians.items()})
        rows.append([int(batch)] + [1e6 * rounds.median(k) for k in medians]
                    + [rounds.ratio(k, "ORT CPU EP") for k in list(medians)[1:]])
    names = list(next(iter(data["batches"].values())))
    print(format_table(["batch", *names, *[f"{n} / CPU EP" for n in names[1:]]], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,64,256,1024")
    parser.add_argument("--ep-python", default=None, help="interpreter with onnxruntime-openvino")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(describe())
    print(f"784-256 tied AE; every runtime on {args.threads} thread(s); {args.rounds} interleaved rounds, "
          "settled; us per call (median over rounds of each window's median)")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths, tflite_paths = build_onnx(Path(tmp)), build_litert(Path(tmp))
        check = np.random.default_rng(3).random((64, FEATURES), dtype=np.float32)
        print("max abs vs float64 numpy at batch 64:", {k: f"{v:.1e}" for k, v in
                                                       max_abs(contenders(onnx_paths, tflite_paths, args.threads, check), check).items()})
        rows = []
        for batch in batches:
            x = np.random.default_rng(batch).random((batch, FEATURES), dtype=np.float32)
            runners = contenders(onnx_paths, tflite_paths, args.threads, x)
            timers = {n: timed(fn, min_calls=max(5, 3000 // batch), warmup=max(3, 300 // batch))
                      for n, fn in runners.items()}
            rounds = interleave(timers, rounds=args.rounds)
            rows.append((batch, rounds))
            del runners
        _print_results(rows)
        if args.ep_python:
            openvino_ep(args.ep_python, onnx_paths["fp32"], args.threads, batches, args.rounds)
    return 0


def _print_results(rows: list[tuple[int, Rounds]]) -> None:
    names = list(rows[0][1].seconds)
    print(format_table(["contender", *[f"batch {b}" for b, _ in rows]],
                       [[n, *[1e6 * r.median(n) for _, r in rows]] for n in names]))
    print("spread (slowest / fastest round): " + "; ".join(
        f"batch {b}: {max(r.spread(n) for n in names):.2f}x" for b, r in rows))
    for batch, r in rows:
        if r.warning():
            print(f"batch {batch}: {r.warning()}")
    pairs = [("tiedonnx fp32", "raw onnxruntime fp32"), ("tiedonnx int8", "raw onnxruntime int8"),
             ("tiedonnx int8", "LiteRT int8"), ("raw onnxruntime int8", "LiteRT int8"),
             ("tiedonnx fp32", "LiteRT fp32"), ("OpenVINO f32", "tiedonnx fp32"),
             ("OpenVINO bf16", "tiedonnx fp32")]
    table = [[f"{a} / {b}", *[r.ratio(a, b) for _, r in rows]] for a, b in pairs if a in names and b in names]
    print("\nratios (within each round, median over rounds; < 1: the first is faster)")
    print(format_table(["ratio", *[f"batch {b}" for b, _ in rows]], table))


if __name__ == "__main__":
    sys.exit(main())
