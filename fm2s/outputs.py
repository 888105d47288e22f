"""Writing outputs so that they appear whole or not at all.

Every file and store fm2s writes is built under a hidden sibling named
``.<name>.tmp-<host>-<pid>-<random>`` and renamed into place when complete
(:func:`atomic_output`). A run killed with SIGKILL cannot remove its temporary, so the next
run for the same output removes those of its own host whose process is gone
(:func:`remove_stale_temporaries`); temporaries of live processes, or of other hosts sharing
the file system, are left alone. Outputs are created with the permissions the umask gives,
as any other file of the user's. Replacing an existing output swaps it out in one step
(:func:`publish`), so that concurrent writers of one path never leave an old output aside.

:func:`check_writable` refuses, before any work is done, an output whose folder cannot be
created or written: a denoising run must not end after hours in a permission error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import glob
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

__all__ = [
    "OutputError",
    "OutputExistsError",
    "PlaneWriter",
    "atomic_output",
    "check_writable",
    "publish",
    "remove_stale_temporaries",
    "temporary_path",
]

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"
# .<name>.tmp-<host>-<pid>-<hex8>; fm2s 0.4 and earlier wrote .<name>.tmp-<pid>-<hex8>, which a
# rerun judges as its own host's.
_TEMPORARY = re.compile(r"\.tmp-(?:(?P<host>[A-Za-z0-9]+)-)?(?P<pid>\d+)-[0-9a-f]{8}$")


class OutputError(ValueError):
    """An output that cannot be written; the message names the path and the problem."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class PlaneWriter(Protocol):
    """The interface every output format implements: the planes of a stack, written one by
    one under a temporary name, then published whole.

    Implementations: :class:`fm2s.ome.OmeZarrWriter` (OME-Zarr store),
    :class:`fm2s.planeio.ImageWriter` (TIFF or PNG of the input's shape),
    :class:`fm2s.jobs.ChunkWriter` (a workflow chunk file). Used as a context manager:
    leaving it without :meth:`commit` removes everything written.
    """

    #: Whether :meth:`commit` stores a provenance record (an image file keeps none).
    keeps_provenance: ClassVar[bool]

    def __enter__(self) -> PlaneWriter: ...

    def __exit__(self, *exc: object) -> None: ...

    def write_plane(self, key: tuple[int, int, int], plane: Any) -> None:
        """Write the ``(y, x)`` plane of stack position ``(t, c, z)``."""

    def commit(self, record: Mapping[str, Any] | None = None) -> Path:
        """Check that every plane was written, store `record`, publish; returns the path."""


def temporary_path(path: str | os.PathLike) -> Path:
    """The hidden sibling under which `path` is built (unique to this process)."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


# Digits of the largest process id Linux can give (pid_max is at most 2**22): a temporary's
# name is checked for the longest pid, since the process that writes it may be another one.
_PID_DIGITS = 7


def _temporary_name_bytes(name: str) -> int:
    """Length in bytes of the longest temporary name :func:`temporary_path` gives `name`."""
    extra = f"..tmp-{_HOST}-{'9' * _PID_DIGITS}-{'f' * 8}"
    return len(os.fsencode(name)) + len(extra)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Refuse a `path` that cannot be created: its nearest existing parent must be a
    writable folder (missing folders below it are created at write time), and its name and
    those of the missing folders must fit the file system's limit, the name of the temporary
    it is written under included (:func:`temporary_path`: 23 bytes and the host name longer).

    Raises
    ------
    OutputError
        A parent is a file, the folder is not writable, or a name is too long; the message
        names the path.
    """
    path = Path(path)
    parent = path.absolute().parent
    missing = []
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise OutputError(f"{path}: cannot write the {what}: {parent} is a broken link")
        missing.append(parent.name)
        parent = parent.parent
    limit = _name_max(parent) if parent.is_dir() else 255
    for name in missing:
        if len(os.fsencode(name)) > limit:
            raise OutputError(f"{path}: cannot write the {what}: folder name {name!r} is "
                              f"{len(os.fsencode(name))} bytes, longer than the file system's "
                              f"limit of {limit}")
    needed = _temporary_name_bytes(path.name)
    if needed > limit:
        most = limit - (needed - len(os.fsencode(path.name)))
        raise OutputError(f"{path}: cannot write the {what}: its name is "
                          f"{len(os.fsencode(path.name))} bytes; at most {most} fit, since it is "
                          f"written under a temporary name {needed - len(os.fsencode(path.name))} "
                          f"bytes longer and the file system allows {limit}")
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write the {what}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: folder {parent} is not writable")
    if path.is_dir() and not path.name.lower().endswith(".zarr"):
        raise OutputError(f"{path}: cannot write the {what}: it is a folder")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by killed runs on this host; return them."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(f".{glob.escape(path.name)}.*"))
    except OSError:
        return removed
    for sibling in siblings:
        match = _TEMPORARY.search(sibling.name)
        if match is None or sibling.name[: match.start()] != f".{path.name}":
            continue
        if match["host"] not in (None, _HOST) or _alive(int(match["pid"])):
            continue
        _remove(sibling)
        removed.append(sibling)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
# Bounds the retries of publish(), where each retry means another writer published meanwhile.
_PUBLISH_TRIES = 1000


@functools.cache
def _libc_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it (glibc < 2.28)
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """rename(2) with `flags`, RENAME_NOREPLACE or RENAME_EXCHANGE: both are atomic, so no
    other writer can slip in between. False where the system or file system lacks them (the
    caller then falls back to plain renames); an OSError (FileExistsError, FileNotFoundError,
    ...) names `dst` otherwise."""
    func = _libc_renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _taken(error: OSError) -> bool:
    """Whether a rename failed because something is at its destination (ENOTEMPTY: a folder
    another writer published there)."""
    return error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR)


def publish(tmp: Path, path: Path, *, overwrite: bool = False) -> None:
    """Rename the complete `tmp` to `path`.

    Without `overwrite`, an output that appeared meanwhile (another run writing the same
    path) is never replaced: OutputExistsError, and `tmp` is left to the caller.

    With `overwrite`, the old output is swapped out in one step (renameat2's
    RENAME_EXCHANGE) and then removed, so that another writer of the same path can never
    create it in between: concurrent writers each publish whole, the last one stays, and no
    old output is left aside. Where the file system cannot swap, the old output is renamed
    aside and removed, and the rename retried if another writer got in first.
    """
    if not overwrite:
        try:
            if tmp.is_dir():
                if not _renameat2(tmp, path, _RENAME_NOREPLACE):
                    if path.exists() or path.is_symlink():  # would replace an empty folder
                        raise FileExistsError(errno.EEXIST, "exists", str(path))
                    os.rename(tmp, path)
            else:
                os.link(tmp, path)  # fails if path exists, unlike rename
                tmp.unlink()
        except OSError as error:
            if not _taken(error):
                raise
            msg = f"{path}: output appeared while writing (another run?); not replaced"
            raise OutputExistsError(msg) from None
        return
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)  # atomic for files, whatever was there
        return
    for _ in range(_PUBLISH_TRIES):
        try:
            if _renameat2(tmp, path, _RENAME_NOREPLACE):
                return
        except OSError as error:
            if not _taken(error):
                raise
            try:
                if _renameat2(tmp, path, _RENAME_EXCHANGE):
                    _remove(tmp)  # now the old output
                    return
            except FileNotFoundError:  # removed by another writer meanwhile: try again
                continue
        if _publish_by_renames(tmp, path):
            return
    msg = f"{path}: could not be replaced: other writers kept replacing it"
    raise OutputError(msg)


def _publish_by_renames(tmp: Path, path: Path) -> bool:
    """One try of publish's fallback: rename the old output aside (removed at once), then
    `tmp` into place; False when another writer created `path` in between."""
    if path.exists() or path.is_symlink():
        aside = temporary_path(path)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            pass
        else:
            _remove(aside)
    try:
        os.rename(tmp, path)
    except OSError as error:
        if _taken(error):
            return False
        raise
    return True


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Give a temporary path to write; rename it to `path` if the block succeeds, else
    remove it (also on KeyboardInterrupt and the SIGTERM the command line turns into one).

    Stale temporaries of `path` are removed first. The block may create a file or a folder.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        publish(tmp, path, overwrite=overwrite)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
