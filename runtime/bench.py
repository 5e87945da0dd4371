"""Benchmarks measured side by side in one run: tiedonnx, Keras, numpy's sgemm.

Every figure a report holds was measured in the same run as the figures it is
compared with, interleaved round by round (:mod:`tiedonnx.runtime.timing`):
each is the median over rounds, each row carries the spread of its rounds, and
the report says when rounds disagreed (a busy machine). The numpy sgemm figure is the practical
ceiling: the same matrix products the model does, at the same batch size,
through numpy's BLAS.

The Keras side (``tiedonnx bench --keras``) is
:class:`tiedonnx.converter.keras_bench.KerasTimer`, passed in as ``keras``:
this module never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Protocol
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import UsageError
from .options import check_positive_int
from .timing import DEFAULT_ROUNDS, Rounds, interleave, timed, window

logger = logging.getLogger(__name__)


def median_seconds(fn: Callable[[], object], *, min_time: float = 0.25, min_calls: int = 5,
                   max_calls: int = 20000) -> float:
    """Median wall time of ``fn()`` over at least ``min_calls`` calls and ``min_time`` s.

    One untimed warm-up call comes first (session arenas, tracing). One window of
    :func:`tiedonnx.runtime.timing.window`; compare contenders with
    :func:`~tiedonnx.runtime.timing.interleave` instead of one window each.
    """
    return window(fn, min_time=min_time, min_calls=min_calls, max_calls=max_calls, warmup=1)


def matmul_shapes(proto) -> list[tuple[int, int]] | None:
    """Per-row matrix products ``(K, N)`` of a model; None if it has other heavy ops.

    Counts MatMul/Gemm whose weight is an initializer or a Transpose of one.
    """
    from .graph.edit import attribute

    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    transposed = {n.output[0]: inits[n.input[0]][::-1] for n in proto.graph.node
                  if n.op_type == "Transpose" and n.input[0] in inits and len(inits[n.input[0]]) == 2}
    shapes = []
    for node in proto.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Attention", "LSTM", "GRU"):
            return None
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        dims = inits.get(node.input[1]) or transposed.get(node.input[1])
        if dims is None or len(dims) != 2:
            return None
        trans_b = attribute(node, "transB", 0)
        shapes.append(dims[::-1] if trans_b else dims)
    return shapes or None


def numpy_sgemm_call(shapes: Sequence[tuple[int, int]], batch: int, *, seed: int = 0) -> Callable[[], None]:
    """The model's float32 matrix products at ``batch`` rows, through numpy's BLAS."""
    rng = np.random.default_rng(seed)
    pairs = [(rng.random((batch, k), dtype=np.float32), rng.random((k, n), dtype=np.float32))
             for k, n in shapes]

    def products():
        for a, b in pairs:
            a @ b

    return products


def numpy_sgemm_seconds(shapes: Sequence[tuple[int, int]], batch: int, *,
                        min_time: float = 0.25, seed: int = 0) -> float:
    """Median time of the same float32 matrix products through numpy's BLAS."""
    return median_seconds(numpy_sgemm_call(shapes, batch, seed=seed), min_time=min_time)


def rows_report_dict(report) -> dict:
    """A report dataclass as a dict, each of its ``rows`` by its own ``as_dict`` (derived figures included)."""
    data = asdict(report)
    data["rows"] = [r.as_dict() for r in report.rows]
    return data


def report_json(report) -> str:
    return json.dumps(report.as_dict(), indent=2)


@dataclass
class BenchRow:
    """One batch size. Times are median seconds per call; None = not measured."""

    batch: int
    tiedonnx_s: float
    gflops: float | None = None
    numpy_gflops: float | None = None
    keras_call_s: float | None = None
    keras_predict_s: float | None = None
    spread: dict = field(default_factory=dict)  # contender -> slowest round / fastest round

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.tiedonnx_s

    @property
    def pct_of_numpy(self) -> float | None:
        return None if not self.numpy_gflops else 100.0 * self.gflops / self.numpy_gflops

    @property
    def x_vs_call(self) -> float | None:
        return None if self.keras_call_s is None else self.keras_call_s / self.tiedonnx_s

    @property
    def x_vs_predict(self) -> float | None:
        return None if self.keras_predict_s is None else self.keras_predict_s / self.tiedonnx_s

    def as_dict(self) -> dict:
        extra = {k: getattr(self, k) for k in ("samples_per_s", "pct_of_numpy", "x_vs_call",
                                               "x_vs_predict")}
        return {**asdict(self), **extra}


@dataclass
class BenchReport:
    """Everything :func:`bench_model` measured, in one run."""

    model: str
    providers: list[str]
    memory: str
    flops_per_row: int | None
    rows: list[BenchRow] = field(default_factory=list)
    keras_max_abs_diff: float | None = None
    rounds: int = DEFAULT_ROUNDS
    timing_note: str = ""  # one line per batch whose rounds disagreed (a busy machine)

    as_dict = rows_report_dict
    to_json = report_json


_NUMPY_WORKER = """
import json, sys
from tiedonnx.runtime.bench import numpy_sgemm_seconds
for line in sys.stdin:
    a = json.loads(line)
    print(numpy_sgemm_seconds([tuple(s) for s in a["shapes"]], a["batch"], min_time=a["min_time"],
                              seed=a["seed"]), flush=True)
"""


class CleanNumpy:
    """numpy's sgemm timed in a separate Python process, one window per request.

    Used when TensorFlow is loaded in this one: its thread pools share the
    cores with numpy's BLAS threads and made the reference 1,000x slower
    (0.14 GFLOP/s instead of 139 on the 784-256 model, 2 cores). One process
    serves every round, so the reference interleaves with the other contenders
    without a Python start-up per window. Use as a context manager.
    """

    def __enter__(self) -> CleanNumpy:
        self._proc = subprocess.Popen([sys.executable, "-c", _NUMPY_WORKER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self._proc.stdin.close()
        self._proc.wait()

    def timer(self, shapes: Sequence[tuple[int, int]], batch: int, *, min_time: float,
              seed: int = 0) -> Callable[[], float]:
        """A timer for :func:`~tiedonnx.runtime.timing.interleave`."""
        request = json.dumps({"shapes": [list(s) for s in shapes], "batch": batch,
                              "min_time": min_time, "seed": seed}) + "\n"

        def measure() -> float:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
            if not answer:
                raise UsageError(f"The numpy reference failed in a subprocess: "
                                 f"{self._proc.stderr.read().strip()[-300:]}")
            return float(answer)

        return measure


class KerasReference(Protocol):
    """The Keras side of a benchmark (see ``tiedonnx.converter.keras_bench.KerasTimer``)."""

    def timers(self, feeds: dict[str, np.ndarray], *, min_time: float) -> dict[str, Callable[[], float]]:
        """``{"keras call": timer, "keras predict": timer}`` for :func:`~tiedonnx.runtime.timing.interleave`."""

    def max_abs_diff(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float: ...


def _check_bench_options(batch_sizes: Sequence[int], rounds: int, sequence_length: int | None) -> None:
    """Refuse empty or non-positive batch sizes, rounds and sequence length before the model loads."""
    if not batch_sizes:
        raise UsageError("batch_sizes is empty. Pass at least one positive integer, e.g. (1, 64).")
    for batch in batch_sizes:
        check_positive_int("batch_sizes[i]", batch)
    check_positive_int("rounds", rounds)
    if sequence_length is not None:
        check_positive_int("sequence_length", sequence_length)


def _timers(model, feeds: dict, batch: int, *, shapes, clean, keras: KerasReference | None, window_s: float,
            seed: int) -> dict:
    """One batch's contenders, name -> timer: tiedonnx, numpy (when FLOPs are counted), Keras (when given)."""
    timers = {"tiedonnx": timed(lambda: model.run(feeds), min_time=window_s)}
    if shapes:
        timers["numpy"] = (clean.timer(shapes, batch, min_time=window_s, seed=seed) if clean
                           else timed(numpy_sgemm_call(shapes, batch, seed=seed), min_time=window_s))
    if keras is not None:
        timers.update(keras.timers(feeds, min_time=window_s))
    return timers


def bench_model(path: str | os.PathLike, *, batch_sizes: Sequence[int] = (1, 64, 1024),
                keras: KerasReference | None = None, providers="auto",
                memory: str = "fast", threads: int | None = None,
                min_time: float = 0.25, rounds: int = DEFAULT_ROUNDS, seed: int = 0,
                sequence_length: int | None = None) -> BenchReport:
    """Median latency, throughput and GFLOP/s per batch size, with Keras and numpy beside.

    Args:
        path: the ``.onnx`` model.
        batch_sizes: rows per call to measure.
        keras: the same model on the Keras side, timed beside it (its compiled
            ``tf.function`` call and ``predict``); the numpy reference then runs
            in a clean subprocess, away from TensorFlow's threads.
        providers, memory, threads: as for :func:`tiedonnx.runtime.load`.
        min_time: seconds spent timing each figure at least, over all its rounds.
        rounds: every contender (tiedonnx, numpy, Keras) is timed once per round,
            the order rotated (:func:`tiedonnx.runtime.timing.interleave`); each
            figure is the median over rounds.
        sequence_length: the length every dynamic non-batch axis takes (a
            sequence model's inputs, e.g. token ids ``[batch, sequence]``).

    Raises:
        UsageError: empty or non-positive batch sizes, or an input with a
            dynamic axis other than the batch and no ``sequence_length``.
    """
    from .model_file import read_model
    from .session import load

    _check_bench_options(batch_sizes, rounds, sequence_length)
    model = load(path, providers=providers, memory=memory, threads=threads)
    from .graph.ort_format import is_ort_file

    # An .ort file holds no ONNX graph to count FLOPs in: no GFLOP/s, no numpy reference.
    # A sequence model's products scale with its length, which per-row FLOPs do not count.
    shapes = (None if is_ort_file(path) or sequence_length is not None
              else matmul_shapes(read_model(path).proto))
    flops_per_row = sum(2 * k * n for k, n in shapes) if shapes else None
    report = BenchReport(str(path), model.providers, memory, flops_per_row, rounds=rounds)
    rng = np.random.default_rng(seed)
    check_synthetic_size(model.inputs, max(int(b) for b in batch_sizes), sequence_length)  # before timing
    window_s = min_time / rounds  # each figure is timed min_time in all, over its rounds
    notes = []
    with contextlib.ExitStack() as stack:
        clean = stack.enter_context(CleanNumpy()) if keras is not None and shapes else None
        for batch in batch_sizes:
            feeds = synthetic_inputs(model.inputs, int(batch), rng, sequence_length)
            timers = _timers(model, feeds, int(batch), shapes=shapes, clean=clean, keras=keras, window_s=window_s,
                             seed=seed)
            measured = interleave(timers, rounds=rounds)
            report.rows.append(_row(int(batch), measured, flops_per_row))
            if keras is not None:
                diff = keras.max_abs_diff(feeds, model.run(feeds))
                report.keras_max_abs_diff = max(diff, report.keras_max_abs_diff or 0.0)
            if measured.warning():
                notes.append(f"batch {batch}: {measured.warning()}")
            logger.info("bench batch %d: %.1f us", batch, report.rows[-1].tiedonnx_s * 1e6)
    report.timing_note = "; ".join(notes)
    return report


def _row(batch: int, measured: Rounds, flops_per_row: int | None) -> BenchRow:
    """A :class:`BenchRow` from one batch size's interleaved rounds."""
    median = {name: measured.median(name) for name in measured.seconds}
    row = BenchRow(batch, median["tiedonnx"], keras_call_s=median.get("keras call"),
                   keras_predict_s=median.get("keras predict"),
                   spread={name: round(measured.spread(name), 3) for name in measured.seconds})
    if flops_per_row:
        row.gflops = flops_per_row * batch / row.tiedonnx_s / 1e9
        row.numpy_gflops = flops_per_row * batch / median["numpy"] / 1e9
    return row


# What synthetic inputs may take, all inputs together: the cap read_model puts on
# the tensors a model file declares (model_file.DEFAULT_MAX_BYTES, 4 GiB).
MAX_SYNTHETIC_BYTES = 4 * 1024**3


def _fixed_dims(spec, sequence_length: int | None = None) -> list[int]:
    """The non-batch dims, each dynamic one set to ``sequence_length`` (a sequence model's length)."""
    dims = [d if isinstance(d, int) else sequence_length for d in spec.shape[1:]]
    if any(d is None for d in dims):
        raise UsageError(
            f"Input {spec.name!r} has shape {spec.shape_text()}: an axis besides the batch is dynamic. "
            "Pass --sequence-length N (sequence_length=N) to bench a sequence model at length N, "
            "or export with fixed feature sizes."
        )
    return dims


def check_synthetic_size(specs, batch: int, sequence_length: int | None = None) -> None:
    """Refuse inputs whose declared shapes need more than :data:`MAX_SYNTHETIC_BYTES` at ``batch`` rows.

    Counted with Python integers (no overflow), at what allocation takes: the
    float64 draw plus the copy in the input's dtype.

    Raises:
        UsageError: a dynamic axis other than the batch (without ``sequence_length``), or the
            inputs too large.
    """
    total = 0
    for spec in specs:
        elements = batch * int(np.prod([1, *_fixed_dims(spec, sequence_length)], dtype=object))
        total += elements * (8 + np.dtype(spec.dtype).itemsize)
    if total > MAX_SYNTHETIC_BYTES:
        shapes = ", ".join(f"{s.name!r}: {s.shape_text()}" for s in specs)[:200]
        raise UsageError(
            f"Synthetic inputs for batch {batch} would take {total / 2**30:.3g} GiB (inputs {shapes}), "
            f"over the limit of {MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB. Pass smaller --batch-sizes, or "
            "bench a model whose fixed axes are smaller.")


def synthetic_inputs(specs, batch: int, rng: np.random.Generator,
                     sequence_length: int | None = None) -> dict[str, np.ndarray]:
    """Inputs of each spec's shape with ``batch`` rows (size-checked first).

    Floats are uniform in [0, 1); integers and booleans are ones: a valid token id
    or index for any table of two or more rows, and "attend" in a padding mask.
    """
    check_synthetic_size(specs, batch, sequence_length)
    feeds = {}
    for spec in specs:
        shape = (batch, *_fixed_dims(spec, sequence_length))
        kind = np.dtype(spec.dtype).kind
        feeds[spec.name] = (np.ones(shape, spec.dtype) if kind in "iub"
                            else rng.random(shape).astype(spec.dtype))
    return feeds


_MEMORY_PROBE = """
import gc, json, sys
import numpy as np, onnx, onnxruntime
import tiedonnx.runtime.session, tiedonnx.runtime.lean, tiedonnx.runtime.model_file
from tiedonnx.runtime.bench import synthetic_inputs
from tiedonnx.runtime.rss import rss_bytes as rss
path, memory, providers = sys.argv[1:4]
def session():
    model = tiedonnx.runtime.session.load(path, memory=memory, providers=providers)
    model.run(synthetic_inputs(model.inputs, 1, np.random.default_rng(0)))
    return model
# Warm-up: lazy imports, onnxruntime's environment and thread pools stay
# resident; the large buffers of this first session go back to the OS.
first = session(); del first; gc.collect()
before = rss()
model = session(); gc.collect()
print(json.dumps({"bytes": rss() - before}))
"""


def session_memory_mb(path: str | os.PathLike, *, memory: str = "fast",
                      providers: str = "cpu") -> float:
    """Resident memory a fresh process gains by loading ``path`` and running it once (MiB).

    Measured in a subprocess so earlier sessions and allocator caches do not
    blur it. Linux only (reads /proc/self/status).
    """
    if not os.path.exists("/proc/self/status"):
        raise UsageError("session_memory_mb needs Linux (/proc/self/status).")
    # A fixed mmap threshold keeps glibc from moving large buffers onto the
    # heap after the warm-up frees them, where RSS would not drop.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), memory, providers],
                          capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise UsageError(f"Memory probe failed for {str(path)!r}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["bytes"] / 2**20
