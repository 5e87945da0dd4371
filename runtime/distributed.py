"""Score a large ``.npy`` array with Ray Data: one loaded model per actor.

How it works:

* The driver validates everything first (model file, input names, ranks,
  shapes, dtypes, output path), without reading the data.
* The Ray Data dataset holds one row per chunk (``batch_size`` input rows).
  A fixed-size actor pool loads the model once per actor with
  :func:`tiedonnx.runtime.load`; each actor memory-maps the input itself and
  reads only the rows of the chunks it is given, so the input never travels
  through Ray's object store.
* The driver sizes the output files first (one ``.npy`` per output, memory-
  mapped, next to the output path); each actor writes its chunk's results
  straight into their rows, so results do not travel through the object store
  either, and the file is in the input's row order whatever order Ray
  finishes in. Only chunk numbers come back to the driver, which checks that
  every chunk was done. The output appears atomically, only when every chunk
  succeeded (an ``.npz`` is packed from the per-output files at the end).

Chunk boundaries are those of ``TiedModel.run(x, batch_size=batch_size)``, so
the result equals the single-process run bit for bit.

On a cluster (``address=``), every node needs tiedonnx installed, the model
and input readable and the output folder writable at the same absolute paths
(a shared filesystem).

Example:
    >>> from tiedonnx.runtime.distributed import run_ray
    >>> report = run_ray("ae.onnx", "x.npy", "y.npy", batch_size=1024)  # doctest: +SKIP
    >>> report.rows, report.workers  # doctest: +SKIP
    (1000000, 2)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path, check_output_path
from .errors import InputError, TiedOnnxError, UsageError
from .options import DEFAULT_RUN_BATCH
from .ray_env import GPU_PROVIDERS, data_context, import_ray, pool_size, ray_session

logger = logging.getLogger(__name__)

#: Rows per chunk, the same default as ``tiedonnx run`` (one source). Each chunk
#: is one Ray Data task on one actor; measured on the 784-256 AE, one actor
#: scored about 17k rows/s with 1,024-row chunks and 26k rows/s with 8,192, so
#: larger chunks keep Ray's per-task cost small next to the model call.
DEFAULT_BATCH_SIZE = DEFAULT_RUN_BATCH



@dataclass
class RayReport:
    """What :func:`run_ray` did. Times in seconds; ``outputs``: name -> shape.

    ``startup_seconds``: starting or reaching Ray; ``seconds``: scoring, actor
    start-up included; ``first_result_seconds``: until the driver heard of the
    first finished chunk (actor start-up plus one chunk).
    """

    rows: int
    batch_size: int
    chunks: int
    workers: int
    address: str
    providers: str
    memory: str
    output: str
    outputs: dict[str, list[int]] = field(default_factory=dict)
    startup_seconds: float = 0.0
    first_result_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else math.inf

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_second": self.rows_per_second}


def run_ray(
    model_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    address: str | None = None,
    force: bool = False,
    providers: str = "cpu",
    memory: str = "fast",
    num_workers: int | None = None,
    allow_nonfinite: bool = False,
) -> RayReport:
    """Score ``input_path`` (``.npy``) with the model on Ray and write ``output_path``.

    Args:
        model_path: the tied ``.onnx`` file.
        input_path: a ``.npy`` array for the model's one input; memory-mapped.
        output_path: ``.npy`` (models with one output) or ``.npz`` (every
            output, keyed by name).
        batch_size: input rows per chunk (one task on one actor).
        address: a running Ray cluster (``"auto"``, ``"ray://host:10001"``,
            ``"host:6379"``). ``None`` starts a local Ray instance for this
            call, or uses the one this process already started.
        force: overwrite ``output_path`` if it exists.
        providers: execution providers for each actor's model (see
            :func:`tiedonnx.runtime.load`); ``"cuda"``/``"tensorrt"`` reserve
            one GPU per actor.
        memory: ``"fast"`` or ``"lean"``, passed to :func:`tiedonnx.runtime.load`.
        num_workers: actors in the pool, each with one onnxruntime thread;
            default: the CPUs (GPUs for GPU providers) of the Ray cluster.
        allow_nonfinite: accept NaN/inf inputs instead of raising.

    Returns:
        A :class:`RayReport`.

    Raises:
        UsageError: Ray is not installed, or a bad option or path.
        InputError: the input does not fit the model.
        ModelFileError: the model file is refused.
        OutputExistsError: ``output_path`` exists and ``force`` is False.
    """
    ray = import_ray()
    plan = _plan(model_path, input_path, output_path, batch_size=batch_size, force=force,
                 providers=providers, memory=memory, num_workers=num_workers)
    started = time.perf_counter()
    with ray_session(ray, address=address, num_workers=num_workers) as ray_address:
        # No idle actors: a pool larger than the chunk count only costs start-up.
        workers = min(pool_size(ray, providers, num_workers), plan["chunks"])
        startup = time.perf_counter() - started
        logger.info("scoring %d rows in %d chunks on %d Ray actors at %s",
                    plan["rows"], plan["chunks"], workers, ray_address)
        scoring = time.perf_counter()
        shapes, first = _score(ray, plan, workers=workers, allow_nonfinite=allow_nonfinite)
        seconds = time.perf_counter() - scoring
    return RayReport(
        rows=plan["rows"], batch_size=batch_size, chunks=plan["chunks"], workers=workers,
        address=ray_address, providers=providers, memory=memory, output=str(output_path),
        outputs=shapes, startup_seconds=startup, first_result_seconds=first - scoring,
        seconds=seconds)


def _plan(model_path, input_path, output_path, *, batch_size, force, providers, memory,
          num_workers) -> dict:
    """Validate every argument and the input against the model, reading no data."""
    from .inputs import check_inputs, load_array_file
    from .options import PROVIDER_CHOICES, positive_int_problem
    from .session import load

    problems = []
    problems += filter(None, [positive_int_problem("batch_size", batch_size),
                              positive_int_problem("num_workers", num_workers, allow_none=True)])
    if not isinstance(providers, str) or providers not in PROVIDER_CHOICES:
        problems.append(f"providers must be one of {list(PROVIDER_CHOICES)} for Ray scoring. "
                        f"Received: providers={providers!r}")
    suffix = Path(output_path).suffix.lower()
    if suffix not in (".npy", ".npz"):
        problems.append(f"output must be a .npy or .npz path. Received: {str(output_path)!r}")
    if Path(input_path).suffix.lower() != ".npy":
        problems.append(f"Ray scoring reads one memory-mapped .npy input. Received: "
                        f"{str(input_path)!r}; save the array with np.save")
    if problems:
        raise UsageError("; ".join(problems) + ".")
    check_output_path(output_path, force=force)
    # The driver's copy only checks the model and the input's header; CPU with
    # one thread so a GPU-less driver can plan a GPU run.
    model = load(model_path, providers="cpu", memory=memory, threads=1)
    if len(model.inputs) != 1:
        raise UsageError(f"Ray scoring feeds one .npy to a one-input model; the model takes "
                         f"{[s.name for s in model.inputs]}. Use `tiedonnx run` with an .npz.")
    outputs = [s.name for s in model.outputs]
    if suffix == ".npy" and len(outputs) != 1:
        raise UsageError(f"The model has {len(outputs)} outputs {outputs}; a .npy holds one. "
                         "Pass an .npz output path to get all of them.")
    array = load_array_file(input_path)
    _, rows = check_inputs(array, model.inputs)
    # One row gives each output's per-row shape and dtype, to size the files
    # the actors write into (NaN in it is the actors' to report, by row).
    probe = model.run(array[:1], allow_nonfinite=True)
    return {
        "model": str(Path(model_path).resolve()), "input": str(Path(input_path).resolve()),
        "output": Path(output_path), "npz": suffix == ".npz",
        "outputs": {name: (probe[name].shape[1:], probe[name].dtype) for name in outputs},
        "rows": rows, "chunks": math.ceil(rows / batch_size), "batch_size": batch_size,
        "force": force, "providers": providers, "memory": memory,
    }


class _ChunkScorer:
    """Ray Data actor: one model; reads its chunks from the memory-mapped input
    and writes their results straight into the memory-mapped output files."""

    def __init__(self, *, model: str, input: str, targets: dict[str, str], batch_size: int,
                 rows: int, providers: str, memory: str, allow_nonfinite: bool):
        from tiedonnx.runtime.session import load

        threads = None if providers in GPU_PROVIDERS else 1
        try:
            self.model = load(model, providers=providers, memory=memory, threads=threads)
        except TiedOnnxError as exc:  # e.g. no CUDA on this node
            raise _chunk_error(exc) from None
        self.array = np.load(input, mmap_mode="r", allow_pickle=False)
        if self.array.shape[0] != rows:
            raise _chunk_error(InputError(
                f"Input {input!r} has {self.array.shape[0]} rows on this node; the driver saw "
                f"{rows}. Point every node at the same file (a shared filesystem)."))
        self.targets = {name: np.load(path, mmap_mode="r+") for name, path in targets.items()}
        self.batch_size, self.rows, self.allow_nonfinite = batch_size, rows, allow_nonfinite

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (chunk,) = batch["id"]  # batch_size=1: one chunk per call
        start = int(chunk) * self.batch_size
        stop = min(start + self.batch_size, self.rows)
        out = {name: target[start:stop] for name, target in self.targets.items()}
        try:
            self.model.run(self.array[start:stop], allow_nonfinite=self.allow_nonfinite, out=out)
        except InputError as exc:  # its row numbers count within this chunk
            raise _chunk_error(InputError(f"{exc} (Row numbers here count from input row "
                                         f"{start}, where the failing chunk starts.)")) from None
        except TiedOnnxError as exc:
            raise _chunk_error(exc) from None
        for target in self.targets.values():
            target.flush()  # on disk before the driver hears the chunk is done (shared FS)
        return {"id": np.array([chunk])}


def _score(ray, plan: dict, *, workers: int, allow_nonfinite: bool):
    """Run the pool and write the output atomically.

    Returns:
        ``(output name -> shape, perf_counter time of the first result)``.
    """
    with data_context(ray), atomic_path(plan["output"], force=plan["force"]) as tmp:
        with _output_files(tmp, plan) as targets:
            first = _execute(ray, plan, targets=targets, workers=workers,
                             allow_nonfinite=allow_nonfinite)
            if plan["npz"]:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{name: np.load(path, mmap_mode="r")
                                    for name, path in targets.items()})
    return {name: [plan["rows"], *shape] for name, (shape, _) in plan["outputs"].items()}, first


@contextlib.contextmanager
def _output_files(tmp: Path, plan: dict):
    """Create the memory-mapped output ``.npy`` files the actors write into.

    A ``.npy`` output is written in place at ``tmp`` (moved onto the output
    path on success); an ``.npz`` gets one ``.npy`` per output in a temporary
    folder beside it, packed into ``tmp`` at the end and then removed.
    """
    folder = None
    if plan["npz"]:
        folder = tempfile.TemporaryDirectory(prefix=f".{tmp.name}.", dir=tmp.parent)
        paths = {name: Path(folder.name) / f"{i}.npy" for i, name in enumerate(plan["outputs"])}
    else:
        paths = {name: tmp for name in plan["outputs"]}
    try:
        for name, (shape, dtype) in plan["outputs"].items():
            target = np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype,
                                               shape=(plan["rows"], *shape))
            del target  # header and size on disk; the actors fill it
        yield {name: str(path.resolve()) for name, path in paths.items()}
    finally:
        if folder is not None:
            folder.cleanup()


def _execute(ray, plan: dict, *, targets: dict[str, str], workers: int,
             allow_nonfinite: bool) -> float:
    """Score every chunk; returns the perf_counter time the first chunk was done."""
    gpus = 1 if plan["providers"] in GPU_PROVIDERS else 0
    # The chunk list is made on the driver, one block per chunk: a read task
    # (ray.data.range) would wait forever for a CPU the actor pool holds, and
    # one chunk per block lets idle actors take the next chunk.
    chunks = ray.data.from_items([{"id": i} for i in range(plan["chunks"])],
                                 override_num_blocks=plan["chunks"])
    dataset = chunks.map_batches(
        _ChunkScorer, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0 if gpus else 1, num_gpus=gpus,
        fn_constructor_kwargs={
            "model": plan["model"], "input": plan["input"], "targets": targets,
            "batch_size": plan["batch_size"], "rows": plan["rows"],
            "providers": plan["providers"], "memory": plan["memory"],
            "allow_nonfinite": allow_nonfinite,
        },
    )
    done = np.zeros(plan["chunks"], dtype=bool)
    first = None
    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            done[block["id"]] = True
            first = first or time.perf_counter()
    except Exception as exc:
        _reraise_ours(exc)
        raise
    if not done.all():  # a lost block must never leave a silent hole in the output
        missing = np.flatnonzero(~done)
        raise RuntimeError(f"Ray reported no result for {missing.size} chunks (first: chunk "
                           f"{missing[0]}); the output was not written.")
    return first


def _reraise_ours(exc: BaseException) -> None:
    """Raise the tiedonnx error a Ray actor raised, unwrapped from Ray's wrappers."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # Ray raises RayTaskError(_ChunkError); the _ChunkError sits in .cause.
        if isinstance(getattr(exc, "error", None), TiedOnnxError):
            raise exc.error from None
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__


def _chunk_error_type() -> type:
    """Build :class:`_ChunkError` on first use, so that importing this module needs no Ray.

    It subclasses Ray's ``UserCodeException`` so that Ray Data reports it as a
    user error (one line, no "internal error, open an issue"), and it pickles
    the tiedonnx error it carries, so the driver re-raises that error intact:
    Ray Data's own wrapper keeps only the text of the original.
    """
    from ray.exceptions import UserCodeException

    class _ChunkError(UserCodeException):
        def __init__(self, error: TiedOnnxError):
            super().__init__(f"{type(error).__name__}: {error}")
            self.error = error

        def __reduce__(self):
            return (type(self), (self.error,))

    _ChunkError.__qualname__ = "_ChunkError"  # picklable by reference via __getattr__
    return _ChunkError


def _chunk_error(error: TiedOnnxError) -> Exception:
    cls = globals().get("_ChunkError") or __getattr__("_ChunkError")
    return cls(error)


def __getattr__(name: str):
    if name == "_ChunkError":
        globals()[name] = _chunk_error_type()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
