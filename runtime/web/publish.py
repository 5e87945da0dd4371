"""Publish a site folder all at once: every check first, then one build, then one publish.

A site is several files that only work together (``index.html`` loads
``site.json``, which names the models). :func:`publish` therefore:

1. checks every target before writing a byte (:func:`check_targets`): the
   folder, what exists at each file path (a dangling symbolic link counts),
   folders inside the site (never a symbolic link, never a file);
2. builds the complete site in a temporary sibling folder
   ``.<OUT>.tiedonnx-<pid>-<random>.tmp`` next to ``OUT`` (same file system);
   any failure there removes it and leaves ``OUT`` as it was;
3. publishes: a new ``OUT`` is the temporary folder renamed (one atomic
   step: the site appears complete or not at all). Into an existing ``OUT``
   each built file is renamed over its target (``--force``) or linked to a new
   name (without it, so a file that appeared meanwhile is never overwritten),
   ``index.html`` last; other files in ``OUT`` are left alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import remove_leftover_folders, staging_prefix
from ..errors import OutputExistsError, OutputWriteError, UsageError, short_error

__all__ = ["check_targets", "publish"]


def check_targets(out_dir: Path, files: list[str], *, force: bool) -> None:
    """Refuse before anything is written: every problem with ``out_dir`` and ``files`` (relative paths).

    Raises:
        UsageError: ``out_dir`` is a file or its parent is missing; a file target
            is a folder; a folder inside the site is a symbolic link or a file.
        OutputExistsError: targets exist (any entry, a dangling link too) without ``force``.
        OutputWriteError: the folder cannot be written.
    """
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise UsageError(f"Site folder is a file (or a dangling link): {str(out_dir)!r}. Pass a folder path.")
    parent = out_dir.parent
    if not parent.is_dir():
        raise UsageError(f"The site folder's parent does not exist. Received: {str(out_dir)!r}. "
                         "Create the parent folder first.")
    folders = sorted({Path(f).parent for f in files} - {Path(".")})
    for folder in folders:
        path = out_dir / folder
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            raise UsageError(f"{str(path)!r} must be a real folder of the site; it is a "
                             f"{'symbolic link' if path.is_symlink() else 'file'}. Remove it and retry "
                             "(tiedonnx never writes through a link inside the site).")
    targets = [out_dir / f for f in files]
    folders_in_the_way = [str(t) for t in targets if t.is_dir() and not t.is_symlink()]
    if folders_in_the_way:
        raise UsageError(f"{len(folders_in_the_way)} site file path(s) are folders, e.g. "
                         f"{folders_in_the_way[0]!r}; --force replaces files, never folders. Remove them.")
    existing = [str(t) for t in targets if os.path.lexists(t)]
    if existing and not force:
        raise OutputExistsError(f"{len(existing)} site file(s) already exist, e.g. "
                                f"{existing[0]!r}. Pass force=True (CLI: --force) to overwrite "
                                "them, or choose another folder.")
    writable = out_dir if out_dir.is_dir() else parent
    if not os.access(writable, os.W_OK | os.X_OK) or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputWriteError(f"Cannot write the site: {str(writable)!r} or its parent is not writable. "
                               "Choose a folder you can write to.")


def publish(out_dir: Path, contents: dict[str, bytes | Path], *, force: bool) -> list[str]:
    """Build ``contents`` (relative path -> bytes, or a file to copy) and publish it as ``out_dir``.

    Call :func:`check_targets` first. Returns the written paths, in publish order.

    Raises:
        OutputWriteError: an ``OSError`` while building (nothing published) or publishing.
        OutputExistsError: a target appeared meanwhile (without ``force``).
    """
    parent = out_dir.parent
    order = sorted(contents, key=lambda name: (name == "index.html", name))  # index.html last
    remove_leftover_folders(out_dir)  # staging folders of killed writers
    try:
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out_dir), suffix=".tmp", dir=parent))
    except OSError as exc:
        raise _write_error(out_dir, exc) from None
    try:
        _build(staging, contents)
        return _move_in(staging, out_dir, order, force=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(staging: Path, contents: dict[str, bytes | Path]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; a published site is a plain folder
        for name, data in contents.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data if isinstance(data, bytes) else Path(data).read_bytes())
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        raise _write_error(staging / name, exc) from None


def _move_in(staging: Path, out_dir: Path, order: list[str], *, force: bool) -> list[str]:
    if not os.path.lexists(out_dir):
        try:
            os.rename(staging, out_dir)  # one step: the whole site appears at once
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputExistsError(f"The site folder appeared while writing: {str(out_dir)!r}. "
                                        "Retry, or choose another folder.") from None
            raise _write_error(out_dir, exc) from None
        return [str(out_dir / name) for name in order]
    written = []
    try:
        for name in order:
            source, target = staging / name, out_dir / name
            target.parent.mkdir(exist_ok=True)
            if force:
                os.replace(source, target)
            else:
                os.link(source, target)  # fails if anything appeared there meanwhile
            written.append(str(target))
    except FileExistsError:
        raise OutputExistsError(f"Site file appeared while writing: {str(out_dir / name)!r}. Pass "
                                "force=True (CLI: --force) to overwrite it.") from None
    except OSError as exc:
        raise _write_error(out_dir / name, exc, published=bool(written)) from None
    return written


def _write_error(path: Path, exc: OSError, *, published: bool = False) -> OutputWriteError:
    what = ("publishing stopped there (files before it in the site are new)" if published
            else "nothing was published")
    error = OutputWriteError(f"Could not write the site at {str(path)!r}: {short_error(exc)}; {what}. "
                             "Free disk space or choose a writable folder.")
    error.errno = exc.errno
    return error
