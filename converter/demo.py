"""``tiedonnx demo``: the whole promise on real data, in one command.

Trains a tied autoencoder (``DenseTied``, 784 -> 256 -> 784) on scikit-learn's
bundled digits upscaled to 28x28 (:mod:`.demo_data`), saves it, exports it with
plain tf2onnx (for comparison) and with tiedonnx at each precision in
:data:`ONNX_VARIANTS`, checks every export against Keras on the held-out
digits, times Keras and onnxruntime side by side, and writes pictures, a
report and (when onnxruntime-web is installed) a browser page. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tiedonnx.runtime.commands._preflight import DEMO_OUTPUT_FILES, check_demo_out_dir
from tiedonnx.runtime.options import check_positive_int

from .demo_data import HIDDEN, PIXELS, SIDE, DigitsSplit, load_digits_28, train
from .errors import UsageError

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 30
BENCH_BATCHES = (1, 256)
# Many short rounds, each contender once per round: at load average 7, two equal models'
# ratio over 7 rounds of 50 ms read 0.64-1.49 across runs, over 25 rounds of 10 ms
# 0.98-1.03 (python scripts/bench_timing_noise.py --rounds 25 --window 0.01 --settle 0).
BENCH_ROUNDS = 25
BENCH_WINDOW_S = 0.01  # seconds of calls per contender per round (at least 3 calls)
BENCH_SETTLE_S = 0.01  # one-thread sessions leave no pool spinning; Keras's pools get this long
#: onnxruntime threads per session: at load average 7 a one-thread session's rounds spread
#: 3.0x, a two-thread one's 9-17x (a 2-thread call waits for whichever thread the OS delays).
ONNX_THREADS = 1
WEB_DIR = "web"


@dataclass(frozen=True)
class VariantSpec:
    """One way to run the model: a row of the table, a bar, a colour in every panel.

    Attributes:
        name: the label in the table, the figures and ``report.json``.
        color: its colour in every figure.
        file: the ONNX file written into ``out_dir`` (None: Keras itself).
        precision: ``export(precision=...)`` for a tiedonnx file; None for plain
            tf2onnx and for Keras.
    """

    name: str
    color: str
    file: str | None = None
    precision: str | None = None


# Okabe-Ito colours (readable with colour-vision deficiencies).
KERAS_CALL = VariantSpec("keras call (tf.function)", "#E69F00")
KERAS_PREDICT = VariantSpec("keras predict", "#D55E00")
PLAIN = VariantSpec("plain tf2onnx fp32", "#999999", "plain_tf2onnx.onnx")  # the baseline
#: The ONNX files the demo writes, in table order. A precision is one more line,
#: e.g. ``VariantSpec("tiedonnx int4", "#CC79A7", "model.int4.onnx", "int4")``:
#: it then gets a table row, a bar in each panel, a reconstruction row and a
#: model on the web page.
ONNX_VARIANTS = (
    PLAIN,
    VariantSpec("tiedonnx fp32", "#0072B2", "model.fp32.onnx", "fp32"),
    VariantSpec("tiedonnx fp16", "#56B4E9", "model.fp16.onnx", "fp16"),
    VariantSpec("tiedonnx int8", "#009E73", "model.int8.onnx", "int8"),
    VariantSpec("tiedonnx int4", "#CC79A7", "model.int4.onnx", "int4"),
)
VARIANTS = (KERAS_CALL, KERAS_PREDICT, *ONNX_VARIANTS)
#: What a finished run leaves in ``out_dir`` (``web/`` only with onnxruntime-web). The CLI
#: refuses an ``out_dir`` holding any of them before TensorFlow loads, so the list lives
#: in the runtime; every variant's file must be on it (tests/test_preflight.py checks).
OUTPUT_FILES = DEMO_OUTPUT_FILES


@dataclass
class Variant:
    """Measured figures of one :class:`VariantSpec` (a row of ``report.json``)."""

    name: str
    path: str | None
    bytes: int | None
    precision: str | None = None
    max_abs_vs_keras: float | None = None
    test_mse: float | None = None
    latency_us: dict = field(default_factory=dict)  # batch -> median µs per call over the rounds
    latency_range_us: dict = field(default_factory=dict)  # batch -> [fastest, slowest round] µs
    x_vs_plain: dict = field(default_factory=dict)  # batch -> plain tf2onnx time / this time, per round


@dataclass
class DemoReport:
    """What ``tiedonnx demo`` did and measured (``report.json``); ``variants`` in table order."""

    out_dir: str
    epochs: int
    train_rows: int
    test_rows: int
    model: str = f"{PIXELS} -> {HIDDEN} -> {PIXELS} tied autoencoder on {SIDE}x{SIDE} digits"
    machine: str = ""
    variants: list[Variant] = field(default_factory=list)
    web_dir: str | None = None  # the browser page, when written
    web_note: str = ""          # why it was not written
    timing_note: str = ""       # set when the rounds disagreed: the machine was busy
    step_seconds: dict = field(default_factory=dict)  # step -> seconds
    seconds: float = 0.0  # the whole run

    def as_dict(self) -> dict:
        return asdict(self)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


_CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI",
              "avx_vnni": "AVX-VNNI", "avx512_bf16": "BF16", "amx_tile": "AMX"}


def machine_name() -> str:
    """The CPU, its cores and the flags that change the timings (VNNI: int8 speed), and
    onnxruntime's version; the format of ``scripts/machine.py``'s ``describe``."""
    import onnxruntime

    info = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = " ".join(n for f, n in _CPU_FLAGS.items() if f in info.get("flags", "").split()) or "no AVX2"
    return f"{cpu}, {os.cpu_count()} cores ({flags}); onnxruntime {onnxruntime.__version__}"


def _save_keras_atomic(model, path: Path) -> None:
    from tiedonnx.runtime.atomic import atomic_path

    with atomic_path(path, force=True) as tmp:  # the temporary name keeps the .keras suffix
        model.save(tmp)


def _export_onnx(model, spec: VariantSpec, path: Path) -> int:
    """Write one ONNX variant (after the folder check, so force=True); returns its bytes."""
    from tiedonnx.runtime.atomic import write_bytes_atomic

    from .export import export
    from .tf_convert import keras_to_onnx

    if spec.precision:
        return export(model, path, precision=spec.precision, force=True).bytes
    data = keras_to_onnx(model).SerializeToString()
    write_bytes_atomic(path, data, force=True)
    return len(data)


def _onnx_runners(report: DemoReport) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from tiedonnx.runtime import load

    runners = {}
    for v in report.variants:
        if v.path:
            session = load(v.path, providers="cpu", threads=ONNX_THREADS)
            name = session.outputs[0].name
            runners[v.name] = lambda x, s=session, n=name: s.run(x)[n]
    return runners


def _time_variants(variants, runners, keras_model, x_test, *, rounds: int = BENCH_ROUNDS) -> list[str]:
    """Latency per variant and batch: the median of ``rounds`` interleaved rounds
    (:func:`tiedonnx.runtime.timing.interleave`), each the median of its calls, with the
    fastest and slowest round, and each file's speed against plain tf2onnx taken within
    rounds (a ratio both sides of which saw the same load). Returns the noisy-machine
    warnings, one per batch whose rounds disagreed."""
    import tensorflow as tf

    from tiedonnx.runtime.timing import interleave, timed

    call = tf.function(lambda t: keras_model(t, training=False))
    fns = {KERAS_CALL.name: lambda x: call(x).numpy(),
           KERAS_PREDICT.name: lambda x: keras_model.predict(x, batch_size=len(x), verbose=0),
           **runners}
    warnings = []
    for batch in BENCH_BATCHES:
        x = np.ascontiguousarray(np.resize(x_test, (batch, PIXELS)))
        for fn in fns.values():  # one warm-up call each; the median over rounds drops the rest
            fn(x)
        timers = {name: timed(lambda f=fn: f(x), min_time=BENCH_WINDOW_S, warmup=0,
                              min_calls=1 if name == KERAS_PREDICT.name else 3)
                  for name, fn in fns.items()}
        measured = interleave(timers, rounds=rounds, settle_s=BENCH_SETTLE_S)
        for v in variants:
            if v.name in measured.seconds:
                v.latency_us[batch] = 1e6 * measured.median(v.name)
                v.latency_range_us[batch] = [1e6 * s for s in measured.low_high(v.name)]
                if v.name in runners and v.name != PLAIN.name and PLAIN.name in runners:
                    v.x_vs_plain[batch] = measured.ratio(PLAIN.name, v.name)
        if measured.warning():
            warnings.append(f"batch {batch}: {measured.warning()}")
    return warnings


def _write_web(out: Path, report: DemoReport) -> None:
    """The digits page on onnxruntime-web, if its pinned npm package is installed."""
    from tiedonnx.runtime.web import ort_web, write_demo_site

    try:
        ort_web.dist_dir()
    except UsageError as exc:  # optional: the rest of the demo needs no Node.js
        report.web_note = (f"{WEB_DIR}/ (the page that runs the models in a browser) was not "
                           f"written: {exc}; then run the demo again with --force")
        return
    models = {v.name: v.path for v in report.variants if v.precision}
    site = write_demo_site(out / WEB_DIR, models, runtime="local", force=True)
    report.web_dir = site.out_dir


class _Clock:
    """Seconds per step of the run, and in all."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return round(seconds, 2)

    def total(self) -> float:
        return time.perf_counter() - self.start


def _measure(report: DemoReport, model, data: DigitsSplit, out: Path, step, clock: _Clock) -> dict:
    """Export every variant, check it against Keras, time it; returns reconstructions by name."""
    keras_out = model.predict(data.x_test, verbose=0)
    report.variants += [Variant(KERAS_CALL.name, None, None, max_abs_vs_keras=0.0,
                                test_mse=float(np.mean((keras_out - data.x_test) ** 2))),
                        Variant(KERAS_PREDICT.name, None, None)]
    step("exporting: plain tf2onnx (for comparison), then tiedonnx "
         f"{', '.join(s.precision for s in ONNX_VARIANTS if s.precision)} (each verified)")
    for spec in ONNX_VARIANTS:
        path = out / spec.file
        report.variants.append(Variant(spec.name, str(path), _export_onnx(model, spec, path),
                                       spec.precision))
    report.step_seconds["export"] = clock.lap()

    step(f"checking every export against Keras on the {len(data.x_test)} held-out digits")
    runners, recon = _onnx_runners(report), {KERAS_CALL.name: keras_out}
    for v in report.variants:
        if v.name in runners:
            recon[v.name] = runners[v.name](data.x_test)
            v.max_abs_vs_keras = float(np.abs(recon[v.name] - keras_out).max())
            v.test_mse = float(np.mean((recon[v.name] - data.x_test) ** 2))
    step(f"benchmarking Keras and onnxruntime side by side (batch {BENCH_BATCHES[0]} and "
         f"{BENCH_BATCHES[1]})")
    report.timing_note = "; ".join(_time_variants(report.variants, runners, model, data.x_test))
    report.step_seconds["check and benchmark"] = clock.lap()
    return recon


def run_demo(out_dir: str | os.PathLike = "demo-out", *, epochs: int = DEFAULT_EPOCHS, force: bool = False,
             on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Train, export, verify, benchmark and draw; see the module docstring.

    Args:
        out_dir: folder for the files in :data:`OUTPUT_FILES` (created if missing).
        epochs: training epochs (30 take about 15 s on 2 cores).
        force: overwrite demo files already in ``out_dir``.
        on_step: called with a short message as each step starts (the CLI prints it).

    Returns:
        A :class:`DemoReport` (also written as ``report.json``).

    Raises:
        UsageError: bad ``epochs`` or an ``out_dir`` that is a file.
        OutputExistsError: ``out_dir`` holds demo output and ``force`` is False.

    Example:
        >>> report = run_demo("demo-out", epochs=30, force=True)  # doctest: +SKIP
        >>> report.variant("tiedonnx int8").bytes  # doctest: +SKIP
    """
    from tiedonnx.runtime.atomic import write_bytes_atomic

    from .demo_plots import draw_reconstructions, draw_size_latency, write_markdown

    check_positive_int("epochs", epochs)
    step = on_step or (lambda msg: logger.info("%s", msg))
    out = Path(out_dir)
    check_demo_out_dir(out, force=force)
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()

    step(f"loading scikit-learn's bundled digits, upscaled from 8x8 to {SIDE}x{SIDE}")
    data = load_digits_28()
    report = DemoReport(str(out), epochs, len(data.x_train), len(data.x_test), machine=machine_name())
    step(f"training a tied autoencoder {PIXELS} -> {HIDDEN} -> {PIXELS} for {epochs} epochs "
         f"on {len(data.x_train)} digits")
    model = train(data.x_train, epochs=epochs)
    _save_keras_atomic(model, out / "model.keras")
    report.step_seconds["load and train"] = clock.lap()
    recon = _measure(report, model, data, out, step, clock)

    step("drawing figures, writing the report and the web page")
    colors = {v.name: v.color for v in VARIANTS}
    picks = data.one_per_class()  # plain tf2onnx computes what tiedonnx fp32 does: no row
    rows = {n: images[picks] for n, images in recon.items() if n != PLAIN.name}
    draw_reconstructions(out / "reconstructions.png", report, data.x_test[picks], rows, colors)
    draw_size_latency(out / "size_latency.png", report, colors)
    _write_web(out, report)
    report.step_seconds["figures, report, web"] = clock.lap()
    report.seconds = clock.total()
    write_markdown(out / "report.md", report)
    write_bytes_atomic(out / "report.json", json.dumps(report.as_dict(), indent=2).encode(), force=True)
    return report
