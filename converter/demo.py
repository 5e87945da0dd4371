"""``tiedonnx demo``: the whole promise on real data, in one command.

Trains a tied autoencoder (``DenseTied``) on scikit-learn's bundled 8x8
digits, saves it, exports it with plain tf2onnx (for comparison) and with
tiedonnx at fp32, fp16 and int8, checks every export against Keras on the
held-out digits, times Keras and onnxruntime side by side, and writes
pictures and a report. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tiedonnx.runtime.options import check_positive_int

from .errors import OutputExistsError, UsageError

logger = logging.getLogger(__name__)

HIDDEN = 32
DEFAULT_EPOCHS = 30
TEST_ROWS = 297  # digits has 1,797 images: 1,500 train, 297 held out
BENCH_BATCHES = (1, 256)
OUTPUT_FILES = ("model.keras", "plain_tf2onnx.onnx", "model.fp32.onnx", "model.fp16.onnx",
                "model.int8.onnx", "reconstructions.png", "size_latency.png", "report.md", "report.json")


@dataclass
class Variant:
    name: str
    path: str | None
    bytes: int | None
    max_abs_vs_keras: float | None = None
    test_mse: float | None = None
    latency_us: dict = field(default_factory=dict)  # batch -> median microseconds per call


@dataclass
class DemoReport:
    out_dir: str
    epochs: int
    train_rows: int
    test_rows: int
    variants: list[Variant] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bundled 8x8 digits scaled to [0, 1], split into train and held-out rows."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order[TEST_ROWS:]], x[order[:TEST_ROWS]]


def build_model():
    import keras

    from .layers import DenseTied

    inputs = keras.Input((64,), name="pixels")
    encoder = keras.layers.Dense(HIDDEN, activation="sigmoid", name="encoder")
    decoder = DenseTied(activation="sigmoid", tied_to=encoder, name="decoder")
    return keras.Model(inputs, decoder(encoder(inputs)), name="tied_digits_ae")


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out must be a directory. Received a file: {str(out_dir)!r}.")
    existing = [n for n in OUTPUT_FILES if (out_dir / n).exists()]
    if existing and not force:
        raise OutputExistsError(
            f"{str(out_dir)!r} already holds demo output ({', '.join(existing[:3])}...). "
            "Pass force=True (CLI: --force) to overwrite, or choose another --out."
        )


def _save_keras_atomic(model, path: Path) -> None:
    from tiedonnx.runtime.atomic import atomic_path

    with atomic_path(path, force=True) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)


def _plain_export(model, path: Path) -> int:
    from tiedonnx.runtime.atomic import write_bytes_atomic

    from .tf_convert import keras_to_onnx

    data = keras_to_onnx(model).SerializeToString()
    write_bytes_atomic(path, data, force=True)
    return len(data)


def _evaluate(variant: Variant, x_test: np.ndarray, keras_out: np.ndarray, model_runner) -> np.ndarray:
    out = model_runner(x_test)
    variant.max_abs_vs_keras = float(np.abs(out - keras_out).max())
    variant.test_mse = float(np.mean((out - x_test) ** 2))
    return out


def _time_variants(variants, runners, keras_model, x_test, *, rounds: int = 3) -> None:
    """Median latency per variant and batch; rounds interleave the variants so a
    burst of load on a shared machine does not land on one of them."""
    import tensorflow as tf

    from tiedonnx.runtime.bench import median_seconds

    call = tf.function(lambda t: keras_model(t, training=False))
    fns = {"keras call (tf.function)": lambda x: call(x).numpy(),
           "keras predict": lambda x: keras_model.predict(x, batch_size=len(x), verbose=0), **runners}
    for batch in BENCH_BATCHES:
        x = np.ascontiguousarray(np.resize(x_test, (batch, 64)))
        samples: dict[str, list[float]] = {v.name: [] for v in variants if v.name in fns}
        for _ in range(rounds):
            for name in samples:
                slow = name == "keras predict"
                samples[name].append(median_seconds(lambda: fns[name](x), min_time=0.1,
                                                    min_calls=2 if slow else 5))
        for v in variants:
            if v.name in samples:
                v.latency_us[batch] = 1e6 * float(np.median(samples[v.name]))


def run_demo(out_dir: str | os.PathLike = "demo-out", *, epochs: int = DEFAULT_EPOCHS, force: bool = False,
             on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Train, export, verify, benchmark and draw; see the module docstring.

    Args:
        out_dir: folder for the files in :data:`OUTPUT_FILES` (created if missing).
        epochs: training epochs (30 takes about 10 s on 2 cores).
        force: overwrite demo files already in ``out_dir``.
        on_step: called with a short message as each step starts (the CLI prints it).

    Returns:
        A :class:`DemoReport` (also written as ``report.json``).

    Raises:
        UsageError: bad ``epochs`` or an ``out_dir`` that is a file.
        OutputExistsError: ``out_dir`` holds demo output and ``force`` is False.
    """
    import keras

    from tiedonnx.runtime import load

    from .export import export
    from .demo_plots import draw_reconstructions, draw_size_latency, write_markdown

    check_positive_int("epochs", epochs)
    step = on_step or (lambda msg: logger.info("%s", msg))
    out = Path(out_dir)
    _check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    step("loading scikit-learn's bundled 8x8 digits")
    x_train, x_test = load_digits_split()
    step(f"training a tied autoencoder 64 -> {HIDDEN} -> 64 for {epochs} epochs on {len(x_train)} digits")
    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x_train, x_train, epochs=epochs, batch_size=32, verbose=0)
    _save_keras_atomic(model, out / "model.keras")
    keras_out = model.predict(x_test, verbose=0)

    report = DemoReport(str(out), epochs, len(x_train), len(x_test))
    report.variants += [Variant("keras call (tf.function)", None, None, 0.0,
                                float(np.mean((keras_out - x_test) ** 2))),
                        Variant("keras predict", None, None)]
    step("exporting: plain tf2onnx (for comparison), then tiedonnx fp32, fp16, int8 (each verified)")
    plain = out / "plain_tf2onnx.onnx"
    report.variants.append(Variant("plain tf2onnx fp32", str(plain), _plain_export(model, plain)))
    for precision in ("fp32", "fp16", "int8"):
        path = out / f"model.{precision}.onnx"
        r = export(model, path, precision=precision, force=True)
        report.variants.append(Variant(f"tiedonnx {precision}", str(path), r.bytes))

    step("checking every export against Keras on the held-out digits")
    runners, recon = {}, {"keras": keras_out}
    for v in report.variants:
        if v.path:
            session = load(v.path, providers="cpu")
            name = session.outputs[0].name
            runners[v.name] = lambda x, s=session, n=name: s.run(x)[n]
            recon[v.name] = _evaluate(v, x_test, keras_out, runners[v.name])

    step("benchmarking Keras and onnxruntime side by side (batch 1 and 256)")
    _time_variants(report.variants, runners, model, x_test)

    step("drawing figures and writing the report")
    draw_reconstructions(out / "reconstructions.png", x_test, recon)
    draw_size_latency(out / "size_latency.png", report)
    report.seconds = time.perf_counter() - start
    write_markdown(out / "report.md", report)
    from tiedonnx.runtime.atomic import write_bytes_atomic

    write_bytes_atomic(out / "report.json", json.dumps(report.as_dict(), indent=2).encode(), force=True)
    return report

