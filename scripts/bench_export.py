"""Export benchmark: file bytes and wall time, plain tf2onnx vs Keras export vs tiedonnx.

Prints one table, all measured side by side in this run (median of --repeats
interleaved runs per exporter). Run:

    python scripts/bench_export.py [--repeats 3]

Targets (issue 3): tiedonnx file <= 0.505x plain tf2onnx on the 784-256 AE;
tiedonnx export time (no verification) <= 1.3x plain tf2onnx.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from tiedonnx.converter import Conv2DTransposeTied, DenseTied  # noqa: E402
from tiedonnx.converter.export import export  # noqa: E402
from tiedonnx.converter.tf_convert import input_specs  # noqa: E402


def ae_784_256():
    x = keras.Input((784,), name="pixels")
    enc = keras.layers.Dense(256, activation="sigmoid", name="enc", bias_initializer="random_normal")
    return keras.Model(x, DenseTied(activation="sigmoid", tied_to=enc, name="dec",
                                    bias_initializer="random_normal")(enc(x)), name="ae_784_256")


def stacked_784_512_256_64():
    x = inputs = keras.Input((784,), name="pixels")
    encs = []
    for size in (512, 256, 64):
        encs.append(keras.layers.Dense(size, activation="relu", bias_initializer="random_normal"))
        x = encs[-1](x)
    for i, enc in reversed(list(enumerate(encs))):
        x = DenseTied(activation="sigmoid" if i == 0 else "relu", tied_to=enc)(x)
    return keras.Model(inputs, x, name="stacked_784_512_256_64")


def conv_ae():
    x = inputs = keras.Input((28, 28, 1), name="image")
    c1 = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")
    c2 = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")
    x = c2(c1(x))
    x = Conv2DTransposeTied(tied_to=c2, activation="relu")(x)
    x = Conv2DTransposeTied(tied_to=c1, activation="sigmoid")(x)
    return keras.Model(inputs, x, name="conv_ae_28x28")


def text_model():
    tokens = keras.Input((32,), dtype="int32", name="tokens")
    emb = keras.layers.ReversibleEmbedding(8000, 256, tie_weights=True)
    h = keras.layers.Dense(256, activation="gelu")(emb(tokens))
    return keras.Model(tokens, emb(h, reverse=True), name="text_tied_embedding_8000x256")


MODELS = [ae_784_256, stacked_784_512_256_64, conv_ae, text_model]


def plain_tf2onnx(model, path):
    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in input_specs(model)]
    fn = tf.function(lambda x: model(x, training=False), input_signature=specs)
    tf2onnx.convert.from_function(fn, input_signature=specs, opset=15, output_path=str(path))


def keras_export(model, path):
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints a summary of the export
        model.export(str(path), format="onnx", verbose=False)


def tiedonnx_export(model, path):
    export(model, path, verify=False, force=True)


EXPORTERS = {"tf2onnx": plain_tf2onnx, "keras.export": keras_export, "tiedonnx": tiedonnx_export}


def measure(model, folder: Path, repeats: int) -> dict:
    times = {name: [] for name in EXPORTERS}
    sizes, invalid = {}, set()
    for r in range(repeats + 1):  # round 0 warms up (tracing caches, imports)
        for name, fn in EXPORTERS.items():
            path = folder / f"{model.name}.{name}.{r}.onnx"
            start = time.perf_counter()
            try:
                fn(model, path)
            except Exception as exc:  # report, don't hide: a failing exporter is a result
                sizes[name] = f"failed: {type(exc).__name__}"
                continue
            if r:
                times[name].append(time.perf_counter() - start)
            sizes[name] = path.stat().st_size
            if r == 0 and not _loads(path):
                invalid.add(name)
    for name in invalid:  # the exporter wrote a file onnxruntime refuses to load
        sizes[name] = f"{sizes[name]:,}*"
    return {"sizes": sizes, "times": {k: statistics.median(v) if v else None for k, v in times.items()}}


def _loads(path: Path) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def main() -> int:
    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    print(describe())
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}; "
          f"{os.cpu_count()} CPUs; median of {args.repeats} runs")
    header = (f"{'model':32s} {'tf2onnx B':>11s} {'keras.export B':>15s} {'tiedonnx B':>11s} {'ratio':>6s}"
              f" | {'tf2onnx s':>9s} {'keras s':>8s} {'tiedonnx s':>10s} {'ratio':>6s}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for build in MODELS:
            model = build()
            res = measure(model, Path(tmp), args.repeats)
            s, t = res["sizes"], res["times"]
            raw = {k: int(str(v).rstrip("*").replace(",", "")) for k, v in s.items() if str(v)[0].isdigit()}
            size_ratio = raw["tiedonnx"] / raw["tf2onnx"] if "tf2onnx" in raw else float("nan")
            time_ratio = t["tiedonnx"] / t["tf2onnx"] if t["tf2onnx"] else float("nan")
            fmt = lambda v: f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
            fmt_t = lambda v: f"{v:.3f}" if v else "-"  # noqa: E731
            print(f"{model.name:32s} {fmt(s['tf2onnx']):>11s} {fmt(s['keras.export']):>15s} "
                  f"{fmt(s['tiedonnx']):>11s} {size_ratio:6.3f} | {fmt_t(t['tf2onnx']):>9s} "
                  f"{fmt_t(t['keras.export']):>8s} {fmt_t(t['tiedonnx']):>10s} {time_ratio:6.2f}")
            sys.stdout.flush()
    print("* the exporter wrote a file that onnxruntime refuses to load (e.g. tf2onnx leaves the TF op "
          "Erfc of exact gelu unconverted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
