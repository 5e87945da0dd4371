"""Score a data file: run a model on a ``.npy``/``.npz`` input, write its outputs atomically.

The library side of ``tiedonnx run``. Everything that can be refused is
checked before the output is opened: the output path, the input file, the
model, the input shapes and the model's output types. The output is then
written through :func:`tiedonnx.runtime.atomic.atomic_path`: a ``.npy`` is
streamed into a memory map (outputs larger than memory work), a ``.npz`` holds
every output by name. Pickles are never written.

Example:
    >>> from tiedonnx.runtime.score import run_file  # doctest: +SKIP
    >>> report = run_file("ae.onnx", "x.npy", "y.npy", batch_size=4096)
    >>> report.as_dict()["outputs"]
    {'dec': [10000, 784]}
"""

from __future__ import annotations

import errno
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelFileError, UsageError, short_error
from .options import DEFAULT_RUN_BATCH, check_positive_int

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".npz")
# posix_fallocate failures that mean "no room", as opposed to "not supported here".
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass
class RunReport:
    """What :func:`run_file` wrote."""

    output: Path
    shapes: dict[str, tuple[int, ...]]
    rows: int
    seconds: float
    provider: str
    memory: str

    def as_dict(self) -> dict:
        return {"output": str(self.output), "rows": self.rows, "seconds": self.seconds,
                "provider": self.provider, "memory": self.memory,
                "outputs": {name: list(shape) for name, shape in self.shapes.items()}}


def run_file(model_path: str | os.PathLike, input_path: str | os.PathLike,
             output_path: str | os.PathLike, *, batch_size: int = DEFAULT_RUN_BATCH,
             providers="auto", memory: str = "fast", threads: int | None = None,
             force: bool = False, allow_nonfinite: bool = False,
             progress: Callable[[int, int], None] | None = None) -> RunReport:
    """Run ``model_path`` on ``input_path`` and write the outputs to ``output_path``.

    Args:
        model_path: the ``.onnx`` file (read with :func:`tiedonnx.runtime.load`).
        input_path: ``.npy`` (memory-mapped) or ``.npz`` keyed by input name.
        output_path: ``.npy`` (one output) or ``.npz`` (every output by name).
        batch_size: rows per chunk.
        providers, memory, threads: as for :func:`tiedonnx.runtime.load`.
        force: overwrite ``output_path``.
        allow_nonfinite: run NaN/inf inputs instead of refusing them.
        progress: called as ``progress(rows_done, rows_total)`` when the input
            takes more than one chunk.

    Returns:
        A :class:`RunReport`.

    Raises:
        UsageError: a bad output suffix, several outputs into a ``.npy``, or an
            output that is not a numeric tensor (strings, sequences, maps).
        InputError, ModelFileError, ProviderError: see :func:`tiedonnx.runtime.load`
            and :meth:`TiedModel.run`; also ModelFileError when onnxruntime fails
            while running a model it loaded.
        OutputExistsError, OutputWriteError: see :func:`tiedonnx.runtime.atomic.atomic_path`.
    """
    from .atomic import atomic_path, check_output_path
    from .inputs import check_inputs, load_array_file, match_archive
    from .session import load

    check_positive_int("batch_size", batch_size)
    output = check_output_path(output_path, force=force)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"Output must end in .npy or .npz; received {str(output_path)!r}.")
    inputs = load_array_file(input_path)
    model = load(model_path, providers=providers, memory=memory, threads=threads)
    if isinstance(inputs, dict):
        inputs = match_archive(inputs, model.inputs)
    arrays, rows = check_inputs(inputs, model.inputs)
    _check_outputs(model, output)
    options = {"batch_size": batch_size, "allow_nonfinite": allow_nonfinite,
               "progress": progress if rows > batch_size else None}
    start = time.perf_counter()
    try:
        with atomic_path(output, force=force) as tmp:
            write = _write_npy if output.suffix == ".npy" else _write_npz
            shapes = write(model, arrays, rows, tmp, **options)
    except _onnxruntime_errors() as exc:
        raise ModelFileError(
            f"onnxruntime failed while running {str(model_path)!r}: {short_error(exc, 300)}. The "
            "model loads but cannot run on these inputs (an op or shape it cannot execute); check "
            "it with `tiedonnx inspect` and re-export it. Nothing was written."
        ) from None
    return RunReport(output, shapes, rows, time.perf_counter() - start,
                     model.providers[0], model.memory)


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception classes (plain ``Exception`` subclasses)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _check_outputs(model, output: Path) -> None:
    names = [o.name for o in model.outputs]
    if len(names) > 1 and output.suffix != ".npz":
        raise UsageError(
            f"The model has {len(names)} outputs {names}; a .npy holds one. "
            f"Pass -o with a .npz name (received {str(output)!r})."
        )
    unsupported = [o.name for o in model.outputs if o.dtype == np.dtype(object)]
    if unsupported:
        raise UsageError(
            f"Output(s) {unsupported} of {model.path!r} are not numeric tensors (strings, "
            "sequences, maps or a type numpy lacks); .npy/.npz files hold numeric arrays only. "
            "Run the model from Python (tiedonnx.runtime.load(...).run) to get them."
        )


def _write_npy(model, arrays, rows: int, tmp: Path, *, batch_size: int,
               allow_nonfinite: bool, progress) -> dict[str, tuple]:
    """Stream the one output into a memory-mapped ``.npy``, so outputs larger than RAM work."""
    name = model.outputs[0].name
    # One row gives the output's dtype and trailing shape.
    probe = model.run({k: a[:1] for k, a in arrays.items()}, allow_nonfinite=allow_nonfinite)[name]
    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=probe.dtype,
                                       shape=(rows, *probe.shape[1:]))
    _reserve(tmp)
    model.run(arrays, out={name: target}, batch_size=batch_size,
              allow_nonfinite=allow_nonfinite, progress=progress)
    target.flush()
    shape = target.shape
    del target
    return {name: shape}


def _reserve(path: Path) -> None:
    """Allocate the memory-mapped file's blocks now.

    A write through a memory map into a sparse file on a full disk is a SIGBUS,
    not an exception; ``posix_fallocate`` turns it into ``ENOSPC`` here, before
    any row is computed.
    """
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover (macOS, Windows)
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise
        logger.debug("posix_fallocate not supported for %s: %s", path, exc)
    finally:
        os.close(fd)


def _write_npz(model, arrays, rows: int, tmp: Path, *, batch_size: int,
               allow_nonfinite: bool, progress) -> dict[str, tuple]:
    """Every output, keyed by name, as ``np.savez`` lays it out (without pickles)."""
    results = model.run(arrays, batch_size=batch_size, allow_nonfinite=allow_nonfinite,
                        progress=progress)
    # Written member by member: np.savez(**results) would take an output named
    # "file" or "allow_pickle" as its own argument.
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in results.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return {name: tuple(a.shape) for name, a in results.items()}
