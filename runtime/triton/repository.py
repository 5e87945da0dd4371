"""Write a Triton model repository for a tied ONNX file.

Every option, the model and every target path are checked before anything
is written; then the files are written atomically, ``config.pbtxt`` last (a
server polling the repository picks a model up only once its config is
there, and by then the other files are complete).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_bytes_atomic
from ..errors import OutputExistsError, OutputWriteError, UsageError, short_error
from ..options import MEMORY_MODES, positive_int_problem
from .config import (
    BACKENDS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_SERVING_MEMORY,
    MODEL_FILENAME,
    PARAM_MEMORY,
    PARAM_MERGE,
    PARAM_THREADS,
    TritonTensor,
    read_signature,
    render_config,
    rows_are_independent,
)
from .python_env import render_model_py, resolve_python_env

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
PYTHON_FILENAME = "model.py"
VERSION = "1"

# Triton model names are folder names and URL path segments. fullmatch: with
# match() and `$`, "abc\n" would pass (`$` also matches before a final newline).
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonRepositoryReport:
    """What :func:`write_model_repository` wrote.

    Attributes:
        name: the Triton model name (the model's folder).
        repository: the repository folder.
        backend: ``"onnxruntime"`` or ``"python"``.
        config_path, model_path: ``config.pbtxt`` and ``1/model.onnx``.
        files: every file written, in writing order.
        max_batch_size, instances, kind: batching and ``instance_group``.
        inputs, outputs: the tensors as the config declares them.
        config: the ``config.pbtxt`` text.
        execution_env: the Python backend's ``EXECUTION_ENV_PATH`` (None: the
            server's own Python, or the ONNX Runtime backend).
        memory, threads: the Python backend's ``tiedonnx.runtime.load`` options.
    """

    name: str
    repository: str
    backend: str
    config_path: str
    model_path: str
    files: tuple[str, ...]
    max_batch_size: int
    instances: int
    kind: str
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    config: str
    execution_env: str | None = None
    memory: str | None = None
    threads: int | None = None
    python_version: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__},
                "files": list(self.files),
                "inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs]}


def write_model_repository(model_path: str | os.PathLike, repo_dir: str | os.PathLike, *, name: str | None = None,
                           backend: str = "onnxruntime", max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                           instances: int = 1, gpu: bool = False, python_env: str | os.PathLike | None = None,
                           memory: str | None = None, threads: int | None = None,
                           force: bool = False) -> TritonRepositoryReport:
    """Write ``REPO_DIR/NAME/config.pbtxt`` and ``REPO_DIR/NAME/1/model.onnx`` (+ ``model.py``).

    Args:
        model_path: the tied ``.onnx`` file; copied unchanged.
        repo_dir: the model repository folder (created if its parent exists).
        name: the Triton model name; defaults to the model file's stem.
        backend: ``"onnxruntime"`` (Triton's ONNX Runtime backend runs the
            file) or ``"python"`` (Triton's Python backend runs ``model.py``,
            which serves the file with :func:`tiedonnx.runtime.load`).
        max_batch_size: the largest batch the dynamic batcher forms. Every
            input and output must then have a dynamic first (batch) dimension,
            which Triton leaves out of ``dims``. ``0`` turns batching off:
            ``dims`` are the full shapes and no dynamic batcher is configured.
        instances: model instances (``instance_group.count``) per device.
        gpu: put the instances on GPUs (``KIND_GPU``) instead of CPUs.
        python_env: Python backend only: where the backend's stub finds numpy,
            onnxruntime and tiedonnx (``EXECUTION_ENV_PATH``). None: this
            environment; ``"server"``: the server's own Python; or a folder
            with ``bin/activate`` / a conda-pack ``.tar.gz``
            (see :mod:`tiedonnx.runtime.triton.python_env`).
        memory: Python backend only: ``"lean"`` (default) or ``"fast"``.
        threads: Python backend only: onnxruntime intra-op threads per
            instance (None: onnxruntime's choice).
        force: overwrite existing model files.

    Returns:
        A :class:`TritonRepositoryReport`.

    Raises:
        UsageError: a bad option or target path, or a model whose tensors Triton
            cannot serve as asked.
        ModelFileError: the model file is missing, corrupt or fails the onnx checker.
        UnsafeModelError: the model points at data outside its folder.
        OutputExistsError: model files exist and ``force`` is False.

    Example:
        >>> report = write_model_repository("ae.onnx", "models", backend="python")  # doctest: +SKIP
        >>> report.files  # doctest: +SKIP
        ('models/ae/1/model.onnx', 'models/ae/1/model.py', 'models/ae/config.pbtxt')
    """
    _check_options(backend=backend, max_batch_size=max_batch_size, instances=instances,
                   python_env=python_env, memory=memory, threads=threads)
    if not os.fspath(repo_dir).strip():  # Path("") is ".": the repository would be the current folder
        raise UsageError("The repository folder is empty (''). Pass a folder path, e.g. models/.")
    model_path = Path(model_path)
    name = model_path.stem if name is None else name
    _check_name(name)
    kind, model_dir = "KIND_GPU" if gpu else "KIND_CPU", Path(repo_dir) / name
    rendered = _render_files(model_path, model_dir, name=name, backend=backend, max_batch_size=max_batch_size,
                             instances=instances, kind=kind, python_env=python_env, memory=memory, threads=threads)
    _publish(Path(repo_dir), model_dir, rendered.files, force=force)
    return _report(rendered, name=name, repo_dir=repo_dir, backend=backend, model_dir=model_dir, kind=kind,
                   instances=instances, max_batch_size=max_batch_size, threads=threads)


@dataclass
class _Rendered:
    """The files :func:`write_model_repository` writes, in writing order, and what they were made from."""

    files: dict[Path, bytes]
    config: str
    inputs: list[TritonTensor]
    outputs: list[TritonTensor]
    env: object | None
    memory: str | None


def _render_files(model_path: Path, model_dir: Path, *, name: str, backend: str, max_batch_size: int,
                  instances: int, kind: str, python_env, memory: str | None, threads: int | None) -> _Rendered:
    """Read and check the model, then render every file in memory (nothing is written here)."""
    proto = _read_checked(model_path)
    inputs, outputs = read_signature(proto, model_path, max_batch_size=max_batch_size,
                                     backend=backend)
    data = model_path.read_bytes()  # copied as it is, byte for byte
    files = {model_dir / VERSION / MODEL_FILENAME: data}
    env = None
    parameters: dict[str, str] = {}
    if backend == "python":
        env = resolve_python_env(python_env)
        memory = memory or DEFAULT_SERVING_MEMORY
        parameters = _python_parameters(env.execution_env_path, memory, threads,
                                        merge=rows_are_independent(proto))
        files[model_dir / VERSION / PYTHON_FILENAME] = render_model_py(
            env.python_version).encode("utf-8")
    config = render_config(
        name=name, backend=backend, inputs=inputs, outputs=outputs,
        max_batch_size=max_batch_size, instances=instances, kind=kind, parameters=parameters,
        default_model_filename=MODEL_FILENAME if backend == "onnxruntime" else None)
    # Last: Triton loads a model once config.pbtxt is there.
    files[model_dir / CONFIG_FILENAME] = config.encode("utf-8")
    return _Rendered(files, config, inputs, outputs, env, memory)


def _publish(repo_dir: Path, model_dir: Path, files: dict[Path, bytes], *, force: bool) -> None:
    """Check every target, create the version folder, then write each file atomically, in order."""
    _check_targets(repo_dir, model_dir, list(files), force=force)
    try:
        (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full repository folder: a user's problem, one line
        raise OutputWriteError(f"Could not create {str(model_dir / VERSION)!r}: {short_error(exc)}. "
                               "Choose a writable repository folder.") from None
    for path, content in files.items():
        write_bytes_atomic(path, content, force=force)


def _report(rendered: _Rendered, *, name: str, repo_dir, backend: str, model_dir: Path, kind: str,
            instances: int, max_batch_size: int, threads: int | None) -> TritonRepositoryReport:
    """Log the written model and describe it."""
    files, env = rendered.files, rendered.env
    logger.info("wrote Triton model %r (%s backend) to %s (%s x%d, max_batch_size=%d)",
                name, backend, model_dir, kind, instances, max_batch_size)
    return TritonRepositoryReport(
        name=name, repository=str(repo_dir), backend=backend,
        config_path=str(model_dir / CONFIG_FILENAME),
        model_path=str(model_dir / VERSION / MODEL_FILENAME),
        files=tuple(str(p) for p in files), max_batch_size=max_batch_size,
        instances=instances, kind=kind, inputs=tuple(rendered.inputs), outputs=tuple(rendered.outputs),
        config=rendered.config, execution_env=env.execution_env_path if env else None,
        memory=rendered.memory, threads=threads, python_version=env.python_version if env else None)


def _check_options(*, backend, max_batch_size, instances, python_env, memory, threads) -> None:
    """Every problem with the options, raised once."""
    problems = []
    if backend not in BACKENDS:
        problems.append(f"backend must be one of {list(BACKENDS)}. Received: backend={backend!r}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        problems.append(f"max_batch_size must be an integer >= 0 (0 turns batching off). "
                        f"Received: max_batch_size={max_batch_size!r}")
    problems.append(positive_int_problem("instances", instances))
    problems.append(positive_int_problem("threads", threads, allow_none=True))
    if memory is not None and memory not in MEMORY_MODES:
        problems.append(f"memory must be one of {list(MEMORY_MODES)}. Received: memory={memory!r}")
    if backend == "onnxruntime":
        given = {k: v for k, v in (("python_env", python_env), ("memory", memory),
                                   ("threads", threads)) if v is not None}
        if given:
            problems.append(
                f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to the Python "
                f"backend only. Received: {', '.join(f'{k}={v!r}' for k, v in given.items())} "
                "with backend='onnxruntime'. Pass backend='python' (CLI: --backend python) "
                "or leave them out")
    problems = [p for p in problems if p]
    if problems:
        raise UsageError("; ".join(problems) + ".")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            "Triton model name must start with a letter, digit or underscore and contain only "
            f"letters, digits, '_', '.' and '-'. Received: name={name!r}. "
            "Pass another name (CLI: --name)."
        )


def _read_checked(path: Path):
    """The model, validated like every model tiedonnx reads (checker, safety, size)."""
    from ..model_file import read_model  # lazy: imports onnx

    model_file = read_model(path)
    if model_file.has_external_data:
        raise UsageError(
            f"Model {str(path)!r} stores weights in external data files; a Triton repository "
            "copies one model.onnx. Save the model with its weights inside the file "
            "(tied models are small)."
        )
    return model_file.proto


def _python_parameters(execution_env: str | None, memory: str, threads: int | None, *,
                       merge: bool) -> dict[str, str]:
    parameters = {PARAM_MEMORY: memory}
    if not merge:  # e.g. dynamic int8: a row's result would depend on its batchmates
        parameters[PARAM_MERGE] = "false"
    if threads is not None:
        parameters[PARAM_THREADS] = str(threads)
    if execution_env is not None:
        parameters["EXECUTION_ENV_PATH"] = execution_env
    return parameters


def _check_targets(repo_dir: Path, model_dir: Path, targets: list[Path], *, force: bool) -> None:
    """Check every folder and file the write needs, before anything is written.

    Raises:
        UsageError: a folder on the way is a file, a target file is a folder,
            or the repository's parent folder is missing.
        OutputExistsError: target files exist and ``force`` is False.
    """
    parent = repo_dir.parent if str(repo_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"Folder for the repository does not exist: {str(parent)!r}. "
                         "Create it first.")
    for folder, what in ((repo_dir, "Repository path"), (model_dir, "Model folder"),
                         (model_dir / VERSION, "Version folder")):
        if os.path.lexists(folder) and not folder.is_dir():
            raise UsageError(f"{what} {str(folder)!r} exists and is not a folder. Remove or "
                             "rename it, or choose another repository (or --name).")
    for folder, what in ((model_dir, "Model folder"), (model_dir / VERSION, "Version folder")):
        if folder.is_symlink():  # writing through it would put files outside the repository
            raise UsageError(f"{what} {str(folder)!r} is a symbolic link (to "
                             f"{os.readlink(folder)!r}): tiedonnx writes only inside the repository. "
                             "Replace the link with a real folder, or choose another --name.")
    folders = [str(t) for t in targets if t.is_dir()]
    if folders:
        raise UsageError(f"Triton model file paths are folders: {', '.join(folders)}. Remove "
                         "them (--force overwrites files only), or choose another --name.")
    existing = [str(t) for t in targets if os.path.lexists(t)]
    if existing and not force:
        raise OutputExistsError(
            f"Triton model files already exist: {', '.join(existing)}. "
            "Pass force=True (CLI: --force) to overwrite them, or choose another --name."
        )
