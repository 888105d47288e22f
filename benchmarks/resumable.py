"""Resumable benchmark results: a CSV with one row per (level, image, method), appended as
each row is measured, so that an interrupted run resumes where it stopped."""

import contextlib
import csv
from pathlib import Path


def done_rows(path: Path) -> set[tuple[str, str, str]]:
    """(level, image, method) of the rows already in the CSV at `path` (none if it is absent)."""
    if not path.exists():
        return set()
    with path.open() as handle:
        return {(r["level"], r["image"], r["method"]) for r in csv.DictReader(handle)}


@contextlib.contextmanager
def appending(path: Path, fields: list[str]):
    """``(csv.DictWriter, file)`` appending rows to `path`, with a header if the file is new.

    Benchmarks flush the file after every row, so that an interrupted run resumes (see
    :func:`done_rows`) where it stopped.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new_file:
            writer.writeheader()
        yield writer, handle

