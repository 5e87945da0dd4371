"""Which Python environment Triton's Python backend runs ``model.py`` in.

Triton's Python backend runs each model instance in a stub process: an
embedded CPython that knows only its own site-packages. ``model.py`` needs
numpy, onnxruntime and tiedonnx, so the repository says where they are,
explicitly, with the Python backend's own mechanism: the config parameter
``EXECUTION_ENV_PATH``. For it the backend runs
``source $EXECUTION_ENV_PATH/bin/activate`` before starting the stub; the
stub's interpreter then finds that environment's ``python3`` first on
``PATH`` and, like any interpreter started from a virtual environment, takes
its site-packages (``.pth`` files and editable installs included).

``python_env`` choices:

* ``None`` (default): the environment running tiedonnx now (``sys.prefix``);
  it must have ``bin/activate`` (a venv or conda environment).
* ``"server"``: no ``EXECUTION_ENV_PATH``; tiedonnx must be installed in the
  server's own Python (e.g. ``pip install tiedonnx`` in the Triton image).
* a folder with ``bin/activate``, or a conda-pack ``.tar.gz`` archive; a path
  starting with ``$$TRITON_MODEL_DIRECTORY`` is Triton's own notation for the
  model folder on the server and is written as given.

The stub's Python minor version must be the environment's (compiled
extensions such as numpy's are built for one). ``model.py`` checks that first
and says so, instead of failing on a confusing import error.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

SERVER_ENV = "server"
_MODEL_DIR_VAR = "$$TRITON_MODEL_DIRECTORY"
_SHELL_SAFE = re.compile(r"[A-Za-z0-9/._+\-:@%=,]*")


@dataclass(frozen=True)
class PythonEnv:
    """Where the stub finds its packages: ``EXECUTION_ENV_PATH`` (None: the server's
    own Python) and the environment's Python version ``"X.Y"`` (None: unknown)."""

    execution_env_path: str | None
    python_version: str | None


def resolve_python_env(python_env: str | os.PathLike | None) -> PythonEnv:
    """Turn the ``python_env`` option into what the repository records.

    Raises:
        UsageError: the environment cannot be used by Triton's Python backend.
    """
    if python_env is None:
        prefix = Path(sys.prefix)
        if not (prefix / "bin" / "activate").is_file():
            raise UsageError(
                f"tiedonnx runs in {str(prefix)!r}, which has no bin/activate script, so "
                "Triton's Python backend cannot use it as EXECUTION_ENV_PATH. Create a virtual "
                "environment with the server's Python version and install tiedonnx there, then "
                "pass python_env=<that folder> (CLI: --python-env DIR), or pass "
                "python_env='server' (CLI: --python-env server) if tiedonnx is installed in the "
                "server's own Python."
            )
        _check_shell_safe(str(prefix), str(prefix))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return PythonEnv(str(prefix), version)
    text = os.fspath(python_env)
    if text == SERVER_ENV:
        return PythonEnv(None, None)
    if text.startswith(_MODEL_DIR_VAR):
        _check_shell_safe(text[len(_MODEL_DIR_VAR):], text)
        return PythonEnv(text, None)
    path = Path(text).absolute()
    _check_shell_safe(str(path), text)
    if path.is_dir() and (path / "bin" / "activate").is_file():
        return PythonEnv(str(path), _pyvenv_version(path))
    if path.is_file() and path.name.endswith(".tar.gz"):
        return PythonEnv(str(path), None)
    raise UsageError(
        f"python_env must be a folder with bin/activate (a venv or conda environment), a "
        f"conda-pack .tar.gz, a path under {_MODEL_DIR_VAR}, or {SERVER_ENV!r}. "
        f"Received: python_env={text!r}, which is "
        f"{'a folder without bin/activate' if path.is_dir() else 'not such a file'}. "
        "Create the environment first (python -m venv DIR && DIR/bin/pip install tiedonnx)."
    )


def _check_shell_safe(path: str, received: str) -> None:
    """Refuse paths the Python backend cannot use: it starts the stub with
    ``bash -c "source $EXECUTION_ENV_PATH/bin/activate && ..."``, the path
    pasted in unquoted, so a space breaks it and ``;``, ``$`` or a quote would
    run as shell code in the server."""
    if not _SHELL_SAFE.fullmatch(path):
        bad = sorted({c for c in path if not _SHELL_SAFE.fullmatch(c)})
        raise UsageError(
            f"python_env path {received!r} contains {bad}: Triton's Python backend pastes "
            "EXECUTION_ENV_PATH unquoted into a bash command, so only letters, digits and "
            "'/._+-:@%=,' work. Move or link the environment to such a path."
        )


def _pyvenv_version(path: Path) -> str | None:
    """``X.Y`` from a venv's ``pyvenv.cfg`` (``version`` or ``version_info``), else None."""
    try:
        lines = (path / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            parts = value.strip().split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return f"{parts[0]}.{parts[1]}"
    return None


# The model.py written into the repository: only the standard library until
# tiedonnx is imported, so a wrong environment fails with this message.
_MODEL_PY = '''\
"""Triton Python backend model written by `tiedonnx triton --backend python`.

Serves model.onnx (next to this file) through tiedonnx.runtime.load: tiedonnx's
input checks, execution providers and memory mode. Packages come from the
environment named by EXECUTION_ENV_PATH in ../config.pbtxt (none: the server's
own Python). See tiedonnx's docs/deploy-triton.md.
"""

import sys

# Python version of the environment this repository was written for (None: unknown).
WRITTEN_FOR = {version!r}

_running = "%d.%d" % sys.version_info[:2]
if WRITTEN_FOR is not None and _running != WRITTEN_FOR:
    raise ImportError(
        "tiedonnx: this repository's environment is Python " + WRITTEN_FOR + " but Triton's "
        "Python backend stub runs Python " + _running + " (" + sys.prefix + "). Use a stub "
        "built for " + WRITTEN_FOR + " (triton_python_backend_stub), or rewrite the repository "
        "with --python-env naming an environment of Python " + _running + "."
    )
try:
    from tiedonnx.runtime.triton.serving import TritonPythonModel  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "tiedonnx: cannot import tiedonnx in Triton's Python backend stub (Python "
        + _running + ", sys.prefix=" + sys.prefix + "): " + str(exc) + ". Set "
        "EXECUTION_ENV_PATH in config.pbtxt to an environment that has tiedonnx "
        "(tiedonnx triton --python-env DIR), or install tiedonnx in the server's Python."
    ) from exc
'''


def render_model_py(python_version: str | None) -> str:
    """The ``model.py`` text for a repository whose environment is ``python_version``."""
    return _MODEL_PY.format(version=python_version)
