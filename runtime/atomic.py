"""Atomic file writes: a failed or interrupted write never leaves a partial file.

Every file tiedonnx writes goes to a temporary file in the target folder, is
flushed and fsynced, and then replaces the target with :func:`os.replace`
(atomic on POSIX and Windows within one filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, UsageError

logger = logging.getLogger(__name__)


def check_output_path(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Validate an output path before any work is done.

    Raises:
        OutputExistsError: the file exists and ``force`` is False.
        UsageError: the path is a directory or its folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"Output path is a directory, expected a file path. Received: {str(path)!r}. "
            "Pass a file name inside that folder instead."
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(
            f"Output folder does not exist. Received: {str(parent)!r}. Create it first."
        )
    if path.exists() and not force:
        raise OutputExistsError(
            f"Output file already exists: {str(path)!r}. "
            "Pass force=True (CLI: --force) to overwrite it, or choose another path."
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place.

    The caller writes the complete file to the yielded path. If the block
    raises (or the process dies), the target is left exactly as it was.

    Example:
        >>> with atomic_path("out.npy", force=True) as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    path = check_output_path(path, force=force)
    # The temporary name ends with the target's suffix: writers such as np.save
    # and Keras append or demand one, and would otherwise write elsewhere.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent if str(path.parent) else "."
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        # Re-check just before replacing: another writer may have created it.
        if path.exists() and not force:
            raise OutputExistsError(
                f"Output file appeared while writing: {str(path)!r}. "
                "Pass force=True (CLI: --force) to overwrite it."
            )
        # mkstemp makes the file 0600; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        logger.debug("wrote %s", path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)
