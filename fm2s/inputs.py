"""Inputs: their output names, whether they changed while read, and which inputs of an
acquisition folder are complete.

What fm2s can read is :data:`fm2s._stack_types.INPUT_FORMATS` (the readers are in
:mod:`fm2s.stacks`); this module only looks at names and file times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from fm2s._stack_types import STACK_SUFFIXES, StackError

__all__ = ["STACK_SUFFIXES", "check_unchanged", "input_stamp", "scan_folder", "stack_name"]


def stack_name(path: str | os.PathLike) -> str:
    """Output name of an input: its file or folder name without a stack suffix.

    Examples
    --------
    >>> stack_name("/data/day1/embryo_03.ome.tif"), stack_name("cells.zarr")
    ('embryo_03', 'cells')
    """
    name = Path(path).name
    for suffix in STACK_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _files(path: Path) -> list[Path]:
    return [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]


def _latest_change(path: Path) -> tuple[int, int, int]:
    """Latest mtime (ns), total size and number of files of a file, folder or store."""
    stats = [f.stat() for f in _files(path)] or [path.stat()]
    return max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats), len(stats)


def input_stamp(path: str | os.PathLike) -> str:
    """A string that changes whenever an input's content may have changed.

    Latest modification time (ns), total size and number of files, over every file of a
    folder or Zarr store (Snakemake itself only sees a folder's own mtime); ``"missing"``
    when `path` does not exist.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    mtime, size, count = _latest_change(path)
    return f"{mtime}-{size}-{count}"


def check_unchanged(path: str | os.PathLike, stamp: str) -> None:
    """Refuse to publish results of an input that changed while it was read.

    Raises
    ------
    StackError
        `path`'s :func:`input_stamp` is no longer `stamp` (written to, replaced or removed).
    """
    if input_stamp(path) != stamp:
        msg = (f"{path}: changed while being read (written to, replaced or removed); nothing "
               "was written: run again once it is complete")
        raise StackError(msg)


def scan_folder(
    folder: str | os.PathLike,
    patterns: Sequence[str],
    *,
    quiet_seconds: float = 120.0,
    settle_seconds: float = 1.0,
    now: float | None = None,
) -> tuple[dict[str, Path], dict[Path, str]]:
    """Find the inputs of an acquisition folder that are complete.

    Parameters
    ----------
    folder : path
        The acquisition folder.
    patterns : sequence of str
        Glob patterns relative to `folder` (``"*.tif"``, ``"**/*.ome.zarr"``). Hidden names
        (starting with ``.``) and matches inside another match are ignored.
    quiet_seconds : float
        An input modified less than this long ago (any file of it, for a folder or store) is
        left for the next run.
    settle_seconds : float
        Stat the remaining inputs again after this many seconds; one that changed (still
        growing) is left for the next run. 0 skips this check.
    now : float, optional
        The current time (``time.time()``); for tests.

    Returns
    -------
    ready : dict of str to Path
        Output name (the path relative to `folder` without its stack suffix, e.g.
        ``"day1/embryo_03"``) to input path, sorted by name.
    waiting : dict of Path to str
        Inputs left for the next run, with the reason.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"{folder}: acquisition folder does not exist or is not a folder"
        raise FileNotFoundError(msg)
    found: set[Path] = set()
    for pattern in patterns:
        for path in folder.glob(pattern):
            rel = path.relative_to(folder)
            if not any(part.startswith(".") for part in rel.parts):
                found.add(path)
    matches = sorted(p for p in found if not any(q in p.parents for q in found))
    now = time.time() if now is None else now
    waiting: dict[Path, str] = {}
    first: dict[Path, tuple[int, int, int]] = {}
    for path in matches:
        first[path] = _latest_change(path)
        age = now - first[path][0] / 1e9
        if age < quiet_seconds:
            waiting[path] = f"modified {age:.0f} s ago (quiet period {quiet_seconds:g} s)"
    candidates = [p for p in matches if p not in waiting]
    if settle_seconds > 0 and candidates:
        time.sleep(settle_seconds)
        for path in candidates:
            if not path.exists() or _latest_change(path) != first[path]:
                waiting[path] = f"still being written (changed within {settle_seconds:g} s)"
    ready = {}
    for path in matches:
        if path not in waiting:
            rel = path.relative_to(folder)
            ready[(rel.parent / stack_name(rel)).as_posix()] = path
    return dict(sorted(ready.items())), waiting
