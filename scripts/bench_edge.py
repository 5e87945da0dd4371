"""Edge benchmark: bytes, accuracy and throughput of every way to ship the 784-256 tied AE.

One run, side by side, same data, same machine:

* tiedonnx ``.onnx`` at fp32, fp16, int8 (per-tensor and per-channel) and
  int4 (block 32 asymmetric, block 32 symmetric, block 128);
* the plain tf2onnx file (tie stored twice);
* onnxruntime ``quantize_dynamic`` of the plain file and of the tied file;
* onnxruntime's ``MatMulNBitsQuantizer`` (int4, block 32) of the plain file and
  of the tied file, when its ``onnx_ir`` dependency is installed;
* ``.ort`` files: tiedonnx's ``save_ort`` vs ``python -m onnxruntime.tools.convert_onnx_models_to_ort``;
* TFLite fp32 and dynamic-range int8, when the TFLite converter is available.

The model is trained for a few epochs on scikit-learn's bundled digits (8x8,
upscaled 3x and padded to 28x28); "max abs" and "MSE" are measured on 297
held-out images against the Keras fp32 model. Throughput is samples/s,
the median of ``--repeats`` timed windows per batch size. "session MB" is the
RSS growth of a fresh process over onnxruntime session creation (median of 3).

Fairness (tiedonnx.runtime.timing): onnxruntime and LiteRT run with the same
``--threads`` (default: the CPUs this process may use), passed explicitly to
both (``intra_op_num_threads``, ``num_threads``: LiteRT's own default is one
thread); every contender's windows start after a sleep so the previous one's
spinning threads have stopped; rounds are interleaved. The first line names
the machine (scripts/machine.py).

Run: python scripts/bench_edge.py [--seconds 0.4] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from machine import describe  # noqa: E402  (scripts/ is on sys.path)
from tiedonnx.runtime.timing import settle  # noqa: E402

BATCHES = (1, 64, 256, 1024)
INT4_ROWS = [("tiedonnx int4", {}), ("tiedonnx int4 symmetric", {"symmetric": True}),
             ("tiedonnx int4 block 128", {"block_size": 128})]
_RSS_SCRIPT = """
import sys
import onnxruntime as ort
from tiedonnx.runtime.rss import rss_bytes
def rss():
    return rss_bytes() / 2**20
so = ort.SessionOptions()
if sys.argv[2] != "None":
    so.intra_op_num_threads = int(sys.argv[2])
before = rss()
session = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
print(rss() - before)
"""


def digits_784():
    from sklearn.datasets import load_digits

    images = load_digits().images.astype("float32") / 16.0
    x = np.pad(np.kron(images, np.ones((3, 3), "float32")), ((0, 0), (2, 2), (2, 2)))
    x = x.reshape(len(x), 784)
    return x[:1500], x[1500:]


def train_model(x_train):
    import keras

    from tiedonnx.converter import DenseTied

    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,), name="pixels")
    enc = keras.layers.Dense(256, activation="sigmoid", name="enc")
    model = keras.Model(inputs, DenseTied(784, activation="sigmoid", tied_to=enc, name="dec")(enc(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x_train, x_train, epochs=5, batch_size=64, verbose=0)
    return model


def plain_onnx(model):
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, 784), tf.float32, name="pixels")]
    fn = tf.function(lambda z: {"out": model(z, training=False)}, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    return proto


def build_onnx_files(model, out: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tiedonnx.runtime.graph.quantize import to_precision

    plain = plain_onnx(model)
    files = {"tf2onnx plain fp32": out / "plain.onnx"}
    onnx.save(plain, files["tf2onnx plain fp32"])
    for label, precision, per_channel in [("tiedonnx fp32", "fp32", None), ("tiedonnx fp16", "fp16", None),
                                          ("tiedonnx int8", "int8", None),
                                          ("tiedonnx int8 per-channel", "int8", True)]:
        files[label] = out / f"{label.replace(' ', '_')}.onnx"
        onnx.save(to_precision(plain, precision, per_channel=per_channel), files[label])
    for label, src in [("ort quantize_dynamic(plain)", "tf2onnx plain fp32"),
                       ("ort quantize_dynamic(tied)", "tiedonnx fp32")]:
        files[label] = out / f"{label.split('(')[1][:-1]}_qd.onnx"
        quantize_dynamic(files[src], files[label], weight_type=QuantType.QInt8)
    for label, options in INT4_ROWS:
        files[label] = out / f"{label.replace(' ', '_')}.onnx"
        onnx.save(to_precision(plain, "int4", **options), files[label])
    return files | build_ort_int4(files, out)


def build_ort_int4(files: dict[str, Path], out: Path) -> dict[str, Path]:
    """onnxruntime's own MatMulNBitsQuantizer (RTN, block 32, asymmetric) on the plain and tied files."""
    import logging

    import onnx

    root = logging.getLogger()
    state = (root.level, list(root.handlers))
    try:  # its module calls logging.basicConfig(level=INFO) on import: put the root logger back
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        print(f"onnxruntime's MatMulNBitsQuantizer not available ({exc}; pip install onnx-ir); "
              "skipping its rows", file=sys.stderr)
        return {}
    finally:
        root.setLevel(state[0])
        root.handlers[:] = state[1]
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    made = {}
    for label, src in [("ort MatMulNBits(plain)", "tf2onnx plain fp32"),
                       ("ort MatMulNBits(tied)", "tiedonnx fp32")]:
        quantizer = MatMulNBitsQuantizer(onnx.load(files[src]), block_size=32, is_symmetric=False)
        quantizer.process()
        made[label] = out / f"{label.split('(')[1][:-1]}_nbits.onnx"
        onnx.save(quantizer.model.model, made[label])
    return made


def session_mb(path: Path, threads: int | None) -> float:
    """RSS growth over session creation in a fresh process (median of 3); nan for non-ONNX files."""
    import subprocess

    if path.suffix != ".onnx":
        return float("nan")
    runs = [float(subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(threads)],
                                 capture_output=True, text=True, check=True).stdout) for _ in range(3)]
    return statistics.median(runs)


def build_ort_files(files: dict[str, Path], out: Path) -> dict[str, Path]:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from tiedonnx.runtime.graph.ort_format import save_ort

    ort_files = {}
    for precision in ("fp32", "fp16", "int8", "int4"):
        label = f"tiedonnx .ort {precision}"
        ort_files[label] = out / f"tied_{precision}.ort"
        save_ort(files[f"tiedonnx {precision}"], ort_files[label])
        stock_dir = out / f"stock_{precision}"
        convert_onnx_models_to_ort(files[f"tiedonnx {precision}"], output_dir=stock_dir,
                                   optimization_styles=[OptimizationStyle.Fixed])
        ort_files[f"ort converter .ort {precision}"] = next(stock_dir.glob("*.ort"))
    return ort_files


def build_tflite(model, out: Path) -> dict[str, Path]:
    try:
        import tensorflow as tf

        converter_cls = tf.lite.TFLiteConverter
    except (ImportError, AttributeError) as exc:
        print(f"TFLite converter not available ({exc}); skipping TFLite rows", file=sys.stderr)
        return {}
    files = {}
    for label, optimize in [("tflite fp32", False), ("tflite dynamic-range int8", True)]:
        converter = converter_cls.from_keras_model(model)
        if optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        path = out / f"{label.replace(' ', '_')}.tflite"
        path.write_bytes(converter.convert())
        files[label] = path
    return files


def onnx_runner(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def tflite_runner(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's copy (deprecated there)
        from tensorflow.lite import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp, outp = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    state = {"batch": None}

    def call(x):
        if state["batch"] != len(x):
            interp.resize_tensor_input(inp, list(x.shape))
            interp.allocate_tensors()
            state["batch"] = len(x)
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(outp)

    return call


def throughput(fn, x, *, seconds: float, repeats: int) -> float:
    fn(x)  # warm-up (allocations, prepacking)
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            fn(x)
            n += 1
        rates.append(n * len(x) / elapsed)
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per batch size")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for every runtime (default: the CPUs this process may use)")
    args = parser.parse_args(argv)

    x_train, x_test = digits_784()
    model = train_model(x_train)
    keras_y = np.asarray(model(x_test, training=False))
    keras_mse = float(np.mean((keras_y - x_test) ** 2))
    pool = x_train[:1024]

    with tempfile.TemporaryDirectory(prefix="tiedonnx-bench-") as tmp:
        out = Path(tmp)
        # The converters print progress to stdout; keep the table readable.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files = build_onnx_files(model, out)
            files |= build_ort_files(files, out)
            files |= build_tflite(model, out)
        runners, accuracy = {}, {}
        for label, path in files.items():
            with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
                warnings.simplefilter("ignore")
                runners[label] = (tflite_runner if path.suffix == ".tflite" else onnx_runner)(path, args.threads)
            y = runners[label](x_test)
            accuracy[label] = (float(np.abs(y - keras_y).max()), float(np.mean((y - x_test) ** 2)) / keras_mse - 1)
        # Interleaved: every round times each model at each batch once, so a burst of
        # load on this shared machine spreads over all rows instead of landing on one.
        windows = {(label, b): [] for label in files for b in BATCHES}
        for _ in range(args.repeats):
            for label, runner in runners.items():
                settle()  # the previous contender's threads stop spinning first
                for b in BATCHES:
                    windows[(label, b)].append(throughput(runner, pool[:b], seconds=args.seconds, repeats=1))
        rows = [(label, path.stat().st_size, *accuracy[label],
                 [statistics.median(windows[(label, b)]) for b in BATCHES], session_mb(path, args.threads))
                for label, path in files.items()]
        structure = int4_structure(files["tiedonnx int4"])
        stored = stored_dtypes(files)
    print(f"{describe()}; {args.threads} threads for onnxruntime and LiteRT alike, settled between "
          "contenders")
    print_table(rows, keras_mse, stored)
    print_int4(rows, structure)
    return 0


def int4_structure(path: Path) -> str:
    """What the saved int4 file holds for the tie: 4-bit and float initializers of the kernel's size."""
    import onnx

    graph = onnx.load(path).graph
    packed = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 3]
    float_w = [i.name for i in graph.initializer if i.data_type in (1, 10) and len(i.dims) == 2
               and sorted(i.dims) == [256, 784]]
    ops = sorted({n.op_type for n in graph.node})
    return f"4-bit initializers {packed}, float 784x256 initializers {float_w}, ops {ops}"


def stored_dtypes(files: dict[str, Path]) -> dict[str, str]:
    """Per .ort file, the ONNX dtype names of its 784x256 initializers (what it really stores).

    onnxruntime's converter folds the fp16 Cast and the int4 dequantization into
    float32 tensors, so its "fp16" and "int4" files are float32 files.
    """
    from onnx import helper

    from tiedonnx.runtime.graph.ort_format import ort_initializers

    stored = {}
    for label, path in files.items():
        if path.suffix == ".ort":
            names = sorted({helper.tensor_dtype_to_string(i["data_type"]).removeprefix("TensorProto.")
                            for i in ort_initializers(path) if sorted(i["dims"]) == [256, 784]})
            stored[label] = ", ".join(names) or "no 784x256 tensor (packed 4-bit only)"
    return stored


def print_table(rows, keras_mse: float, stored: dict[str, str]) -> None:
    head = f"{'model':<30}{'bytes':>11}{'max abs':>10}{'MSE vs fp32':>12}" + "".join(
        f"{'b=' + str(b) + ' /s':>13}" for b in BATCHES) + f"{'session MB':>12}"
    print(f"784-256 tied AE, digits held-out Keras fp32 MSE {keras_mse:.5f}; throughput in samples/s")
    print(head)
    print("-" * len(head))
    for label, size, max_abs, mse_rel, rates, mb in rows:
        print(f"{label:<30}{size:>11,}{max_abs:>10.4f}{mse_rel:>+11.2%} " + "".join(f"{r:>13,.0f}" for r in rates)
              + f"{mb:>12.1f}")
    by = {r[0]: r for r in rows}
    i8, f32, f16 = by["tiedonnx int8"], by["tiedonnx fp32"], by["tiedonnx fp16"]
    untied_int8 = min(by[k][1] for k in by if k in ("ort quantize_dynamic(plain)", "tflite dynamic-range int8"))
    print()
    print(f"int8 file {i8[1]:,} bytes (target <= 215,000); {i8[1] / untied_int8:.3f}x of the best untied int8 "
          f"file (target <= 0.53)")
    print(f"int8 / fp32 throughput at batch 256: {i8[4][2] / f32[4][2]:.2f}x (target >= 2)")
    print(f"fp16 file {f16[1] / f32[1]:.3f}x of the fp32 tied file (target <= 0.52)")
    for p in ("fp32", "fp16", "int8", "int4"):
        mine, stock = f"tiedonnx .ort {p}", f"ort converter .ort {p}"
        # Like with like: a converter file that stores other dtypes than ours is flagged.
        note = "" if stored[mine] == stored[stock] else (
            f"; NOT like for like: ours stores {stored[mine]}, the converter's {stored[stock]}")
        print(f".ort {p}: {by[mine][1]:,} vs onnxruntime converter {by[stock][1]:,} bytes = "
              f"{by[mine][1] / by[stock][1]:.3f}x (target <= 0.52){note}")


def print_int4(rows, structure: str) -> None:
    by = {r[0]: r for r in rows}
    i4, f32, i8, plain = by["tiedonnx int4"], by["tiedonnx fp32"], by["tiedonnx int8"], by["tf2onnx plain fp32"]
    print()
    print(f"int4 (block 32): {i4[1]:,} bytes (target <= 130,000), {i4[1] / plain[1]:.3f}x plain tf2onnx "
          f"(target <= 0.081); MSE {i4[3]:+.2%} vs Keras fp32 (target within 5%), max abs {i4[2]:.4f}")
    print(f"int4 {structure}")
    for b in (1, 256):
        at = BATCHES.index(b)
        print(f"int4 throughput at batch {b}: {i4[4][at] / f32[4][at]:.2f}x tiedonnx fp32, "
              f"{i4[4][at] / i8[4][at]:.2f}x tiedonnx int8")
    print(f"session MB: int4 {i4[5]:.1f}, fp32 {f32[5]:.1f}, int8 {i8[5]:.1f}")
    for label in ("ort MatMulNBits(plain)", "ort MatMulNBits(tied)"):
        if label in by:
            print(f"{label}: {by[label][1]:,} bytes = {i4[1] / by[label][1]:.3f}x ours")


if __name__ == "__main__":
    sys.exit(main())
