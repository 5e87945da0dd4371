"""Atomic file writes: a failed or interrupted write never leaves a partial file.

Every file tiedonnx writes goes to a temporary file in the target folder, is
flushed and fsynced, and is then published (and the folder fsynced after it,
so the new name itself survives a power loss, where the OS can sync a folder):

* with ``force``: :func:`os.replace` over whatever is there;
* without ``force``: :func:`os.link` of the finished temporary file, which
  fails if *anything* exists at the target (a file, a dangling link), so of
  several writers racing for the same new path exactly one wins and the others
  get :class:`OutputExistsError`. The temporary name is then unlinked.

A write that fails with an ``OSError`` (read-only folder, full disk, file-size
limit) raises :class:`OutputWriteError`, a one-line :class:`TiedOnnxError` with
exit code 2, and leaves the target as it was.

Temporary names are ``.<target name>.tiedonnx-<pid>-<random>.tmp<suffix>``. A
process killed mid-write (SIGKILL, power loss) cannot remove its own; the next
write to the same target removes those older than :data:`LEFTOVER_AGE_S` whose
process is gone (:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, OutputWriteError, TiedOnnxError, UsageError, short_error  # noqa: F401  (OutputWriteError re-exported)

logger = logging.getLogger(__name__)

#: A leftover temporary file is removed only once it is this old (seconds) and
#: its writer's pid is not a live process: a slow writer on another machine
#: sharing the folder (whose pid we cannot see) keeps touching its file.
LEFTOVER_AGE_S = 300.0

_TAG = "tiedonnx"
# Keep temporary names under the usual 255-byte limit whatever the target's name.
_NAME_KEEP = 100
# link(2) errors that mean "this filesystem has no hard links", not "refused".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
# Windows cannot open a folder with os.open, so there is nothing to fsync.
_CAN_SYNC_FOLDERS = os.name != "nt"


def check_output_path(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Validate an output path before any work is done.

    Any directory entry at ``path`` counts as existing, a dangling symbolic
    link included (``Path.exists()`` is False for one).

    Raises:
        OutputExistsError: something exists at ``path`` and ``force`` is False.
        UsageError: the path is a directory or its folder does not exist.
        OutputWriteError: the folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"Output path is a directory, expected a file path. Received: {str(path)!r}. "
            "Pass a file name inside that folder instead."
        )
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"Output folder does not exist. Received: {str(parent)!r}. Create it first."
        )
    if os.path.lexists(path) and not force:
        what = "a dangling symbolic link" if not path.exists() else "a file"
        raise OutputExistsError(
            f"Output path already exists ({what}): {str(path)!r}. "
            "Pass force=True (CLI: --force) to overwrite it, or choose another path."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputWriteError(
            f"Output folder {str(parent)!r} is not writable (read-only file system or no "
            "permission). Choose a folder you can write to."
        )
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success publish it there.

    The caller writes the complete file to the yielded path. If the block
    raises (or the process dies), the target is left exactly as it was.

    Raises:
        OutputExistsError: ``path`` exists (or appeared meanwhile) without ``force``.
        OutputWriteError: an ``OSError`` while creating, writing, syncing or
            publishing the file (including one raised by the block).

    Example:
        >>> with atomic_path("out.npy", force=True) as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    path = check_output_path(path, force=force)
    remove_leftovers(path)
    tmp = _make_temp(path)
    renamed = False
    try:
        try:
            yield tmp
            _sync(tmp)
            renamed = _publish(tmp, path, force=force)
            sync_folder(path.parent)
        except TiedOnnxError:
            raise
        except OSError as exc:
            raise _write_error(path, exc) from None
        logger.debug("wrote %s", path)
    finally:
        if not renamed:  # failed, or published by link: the temporary name is still ours
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Raises:
        OutputExistsError, OutputWriteError: see :func:`atomic_path`.
    """
    with atomic_path(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_leftovers(path: str | os.PathLike, *, older_than: float = LEFTOVER_AGE_S) -> list[Path]:
    """Remove temporary files of ``path`` left by killed writers; return what was removed.

    Only regular files named like this module's temporary files for this very
    target, modified more than ``older_than`` seconds ago, whose pid is not a
    live process, are removed. Errors are ignored: this is housekeeping.
    """
    path = Path(path)
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"(\d+)-[a-z0-9_]+"
                         + re.escape(_temp_suffix(path)) + r"\Z")
    removed = []
    for entry in _stale_entries(path.parent, pattern, older_than=older_than, folders=False):
        with contextlib.suppress(OSError):
            os.unlink(entry)
            removed.append(entry)
    return removed


def staging_prefix(target: Path) -> str:
    """The name prefix of a folder staged beside ``target`` (``tempfile.mkdtemp(prefix=..., suffix=".tmp")``)."""
    return f".{target.name[:64]}.{_TAG}-{os.getpid()}-"


def remove_leftover_folders(target: str | os.PathLike, *, older_than: float = LEFTOVER_AGE_S) -> list[Path]:
    """Remove staging folders of ``target`` left by killed writers; return what was removed.

    A site or generation folder is built in ``.<name>.tiedonnx-<pid>-<random>.tmp``
    beside it and published in one rename; a writer killed before that cannot
    remove it. Only folders (not links) named so for this very target, older than
    ``older_than`` seconds, whose pid is not a live process, are removed, with what
    is inside them. A folder holding a previous version being replaced
    (``.<name>.old-*``) is never touched. Errors are ignored: this is housekeeping.
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name[:64]}.{_TAG}-") + r"(\d+)-[a-z0-9_]+\.tmp\Z")
    removed = []
    for entry in _stale_entries(target.parent, pattern, older_than=older_than, folders=True):
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


def _stale_entries(folder: Path, pattern: re.Pattern, *, older_than: float, folders: bool) -> list[Path]:
    """Entries of ``folder`` whose name matches ``pattern`` (group 1: the writer's pid), of the wanted
    kind (regular files, or folders), not modified for ``older_than`` seconds, whose pid is gone."""
    found, now = [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        kind = stat.S_ISDIR(info.st_mode) if folders else stat.S_ISREG(info.st_mode)
        if not kind or now - info.st_mtime < older_than or _pid_alive(int(match.group(1))):
            continue
        logger.info("removing %s, left by process %s that is gone", entry.path, match.group(1))
        found.append(Path(entry.path))
    return found


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:_NAME_KEEP]}.{_TAG}-"


def _temp_suffix(path: Path) -> str:
    # Ends with the target's suffix: writers such as np.save and Keras append or
    # demand one, and would otherwise write elsewhere.
    return f".tmp{path.suffix[:_NAME_KEEP]}"


def _make_temp(path: Path) -> Path:
    try:
        fd, name = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}-",
                                    suffix=_temp_suffix(path), dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    return Path(name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # EPERM: alive, someone else's
        return True
    return True


def _sync(tmp: Path) -> None:
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    # mkstemp makes the file 0600; give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def sync_folder(folder: str | os.PathLike) -> bool:
    """fsync ``folder`` so that a rename or link into it survives a power loss.

    Returns False where the OS cannot (Windows opens no folder as a file; some
    filesystems refuse fsync on one): the file is published either way, and
    only this extra guarantee is missing, so nothing is raised.
    """
    if not _CAN_SYNC_FOLDERS:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        logger.debug("cannot open folder %s to sync it: %s", folder, exc)
        return False
    try:
        os.fsync(fd)
    except OSError as exc:  # EINVAL on filesystems without folder sync
        logger.debug("cannot sync folder %s: %s", folder, exc)
        return False
    finally:
        os.close(fd)
    return True


def _publish(tmp: Path, path: Path, *, force: bool) -> bool:
    """Put ``tmp`` at ``path``; return True if ``tmp`` was renamed (its name is gone)."""
    if force:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _publish_without_links(tmp, path)
        return True
    return False


def _publish_without_links(tmp: Path, path: Path) -> None:
    """Exclusive publish on filesystems without hard links (FAT, some network mounts).

    ``O_EXCL`` creation still lets exactly one writer win; the winner then
    renames its file over the empty placeholder (visible for that instant).
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        raise _appeared(path) from None
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # the placeholder is ours: leave nothing behind
            os.unlink(path)
        raise


def _appeared(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"Output path appeared while writing: {str(path)!r} (another process wrote it first). "
        "Pass force=True (CLI: --force) to overwrite it, or choose another path."
    )


def _write_error(path: Path, exc: OSError) -> OutputWriteError:
    error = OutputWriteError(
        f"Could not write {str(path)!r}: {short_error(exc)}. Nothing was changed at that path; "
        "free disk space, raise the file-size limit, or choose a writable folder."
    )
    error.errno = exc.errno
    return error
