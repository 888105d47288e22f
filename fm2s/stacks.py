"""Open microscopy stacks lazily as 5D ``(t, c, z, y, x)`` dask arrays.

Formats: :data:`INPUT_FORMATS` (one row per format: name, suffixes, what is read), each read
by its reader in :data:`READERS` (the :class:`StackSource` interface); ``docs/stack-io.md``
describes them. ``metadata.format`` says more precisely what was found: ``"ome-tiff"``,
``"imagej-tiff"``, ``"tiff"``, ``"png"``, ``"ome-zarr"``, ``"tiff-series"``, ``"czi"``,
``"nd2"``, ``"lif"``, ``"oib"``, ``"oif"``.

The vendor formats need the ``vendor`` extra (:mod:`fm2s._vendor`).

A TIFF written page by page (one series per ``tifffile.imwrite(..., append=True)``) whose
series all have the same shape and dtype is read as one stack of its pages; an OME-TIFF whose
OME-XML lists planes the file lacks, or leaves pages of the file out, is refused.

Samples (``S``, e.g. RGB) become channels; generic page axes (``I``, ``Q``) become
``pages_as`` (``"z"`` by default); other axes of size 1 are dropped and any other
axis of size > 1 is an error. Each plane is one dask chunk and reading it touches
only that plane's bytes: TIFF planes come from tifffile's ``aszarr`` store (one
chunk per page, strip or tile), OME-Zarr planes from the zarr array.

Every problem with an input raises :class:`StackError` (a ``ValueError``) whose
message starts with the offending path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import dask.array as da
import numpy as np
from dask.base import tokenize

from fm2s import _ngff, _readers, _vendor
from fm2s._stack_types import (
    INPUT_FORMATS,
    AxisMap,
    PlaneKey,
    StackError,
    StackMetadata,
    StackNotFoundError,
    frame_number,
    input_format,
)

__all__ = [
    "INPUT_FORMATS",
    "READERS",
    "AxisMap",
    "PlaneKey",
    "Stack",
    "StackError",
    "StackMetadata",
    "StackNotFoundError",
    "StackSource",
    "frame_number",
    "list_planes",
    "open_stack",
    "read_plane",
    "stack_from_array",
]

logger = logging.getLogger(__name__)

@dataclass
class Stack:
    """A lazily opened stack: ``data`` is a 5D dask array, one chunk per plane.

    Use as a context manager (or call :meth:`close`) to release the file.
    """

    data: da.Array
    metadata: StackMetadata
    _source: StackSource = field(repr=False)

    @property
    def axes(self) -> AxisMap:
        """How the input's own axes map onto ``(t, c, z, y, x)``: ``axes.select(t, c, z)``
        indexes one plane in an array of the input's shape (``metadata.shape_found``)."""
        return self._source.axes

    def plane_keys(self) -> list[PlaneKey]:
        """All plane keys in ``(t, c, z)`` order."""
        t, c, z = self.metadata.shape[:3]
        return [PlaneKey(i, j, k) for i in range(t) for j in range(c) for k in range(z)]

    def read_plane(self, key: tuple[int, int, int]) -> np.ndarray:
        """Read one ``(y, x)`` plane; only that plane's bytes are read."""
        key = PlaneKey(*key)
        for name, index, size in zip("tcz", key, self.metadata.shape, strict=False):
            if not 0 <= index < size:
                msg = (
                    f"{self.metadata.path}: plane {key.label} out of range; "
                    f"{name} must be in [0, {size - 1}]"
                )
                raise IndexError(msg)
        return _read_checked(self._source, key, self.metadata.path)

    def close(self) -> None:
        """Close the underlying file(s)."""
        self._source.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stack(
    path: str | Path,
    *,
    series: int = 0,
    pages_as: Literal["z", "t"] = "z",
) -> Stack:
    """Open a microscopy stack lazily as a 5D ``(t, c, z, y, x)`` dask array.

    Parameters
    ----------
    path : str or Path
        OME-TIFF, ImageJ or plain TIFF, PNG, OME-Zarr store (NGFF 0.4 or 0.5), a
        folder of per-time-point TIFF files, or a CZI, ND2, LIF, OIB or OIF file.
    series : int, optional
        Series (OME-TIFF image, TIFF series, OME-Zarr image, CZI scene, ND2 position,
        LIF image) to open.
    pages_as : {"z", "t"}, optional
        Axis that generic TIFF pages (tifffile axes ``I``/``Q``) become.

    Returns
    -------
    stack : Stack
        ``stack.data`` has one chunk per plane; nothing is read until computed.

    Raises
    ------
    StackNotFoundError
        If `path` does not exist (also a ``FileNotFoundError``).
    StackError
        If the format is unsupported, the file is corrupt, the axes cannot be
        mapped to ``t, c, z, y, x`` or `series` is out of range.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "zstack.tif"
    >>> zstack = np.zeros((5, 32, 32), np.uint16)
    >>> tifffile.imwrite(path, zstack, imagej=True, metadata={"axes": "ZYX"})
    >>> with open_stack(path) as stack:
    ...     stack.data.shape, stack.metadata.axes_found
    ((1, 1, 5, 32, 32), 'ZYX')
    """
    path = Path(path)
    if pages_as not in ("z", "t"):
        msg = f"pages_as must be 'z' or 't', got {pages_as!r}"
        raise ValueError(msg)
    if not isinstance(series, int) or isinstance(series, bool) or series < 0:
        msg = f"{path}: series must be a non-negative int, got {series!r}"
        raise StackError(msg)
    source = _open_source(path, series=series, pages_as=pages_as)
    try:
        token = tokenize(str(path.resolve()), path.stat().st_mtime_ns, series, pages_as)
    except BaseException:
        source.close()
        raise
    return _stack_of(source, token)


def stack_from_array(
    array,
    axes: str,
    *,
    name: str = "array",
    pixel_sizes: dict[str, float | None] | None = None,
    channel_names: list[str] | None = None,
) -> Stack:
    """Wrap an array in memory (numpy or dask, e.g. a napari layer's data) as a stack.

    The engine then treats it exactly as a file: same groups, seeds and results as the same
    pixels read by :func:`open_stack`.

    Parameters
    ----------
    array : array_like
        2-D to 5-D; indexed plane by plane, so a dask array is read lazily.
    axes : str
        One NGFF letter per axis of `array`, a subset of ``"tczyx"`` in any order, e.g.
        ``"zyx"`` or ``"tcyx"``; must contain ``y`` and ``x``.
    name : str, optional
        Stands for the path in messages and provenance.
    pixel_sizes : dict, optional
        Physical sizes (micrometers) keyed ``"z"``, ``"y"``, ``"x"``.
    channel_names : list of str, optional
        One name per channel.

    Raises
    ------
    StackError
        If `axes` do not fit `array`.
    """
    extra = {"channel_names": channel_names}
    if pixel_sizes:
        extra["pixel_sizes"] = dict(pixel_sizes)
        extra["units"] = {a: "micrometer" for a, v in pixel_sizes.items() if v}
    source = _readers.ArraySource(array, axes, name=name, extra=extra)
    return _stack_of(source, tokenize(name, id(array), axes))


def _stack_of(source, token: str) -> Stack:
    meta = source.metadata
    try:
        data = da.from_array(
            _PlaneArray(source, meta),
            chunks=(1, 1, 1, meta.shape[3], meta.shape[4]),
            name=f"fm2s-read-{token}",
            meta=np.empty((0,) * 5, dtype=meta.dtype),
        )
    except BaseException:
        source.close()
        raise
    logger.debug("opened %s as %s %s %s", meta.path, meta.format, meta.shape, meta.dtype)
    return Stack(data=data, metadata=meta, _source=source)


def list_planes(
    path: str | Path, *, series: int = 0, pages_as: Literal["z", "t"] = "z"
) -> list[PlaneKey]:
    """List the plane keys of a stack from its headers only (no pixel reads).

    Parameters are those of :func:`open_stack`.
    """
    with open_stack(path, series=series, pages_as=pages_as) as stack:
        return stack.plane_keys()


def read_plane(
    path: str | Path,
    key: tuple[int, int, int],
    *,
    series: int = 0,
    pages_as: Literal["z", "t"] = "z",
) -> np.ndarray:
    """Read one ``(y, x)`` plane of a stack, touching only that plane's bytes.

    Parameters are those of :func:`open_stack`, plus the ``(t, c, z)`` `key`.
    """
    with open_stack(path, series=series, pages_as=pages_as) as stack:
        return stack.read_plane(key)


# -- dispatch and the dask adaptor -----------------------------------------


class StackSource(Protocol):
    """The reader interface: what every reader of :data:`READERS` gives a :class:`Stack`.

    A reader is constructed as ``Reader(path, series=..., pages_as=...)``, reads the file's
    headers (no pixels) and raises :class:`StackError` naming the path on any problem.
    """

    metadata: StackMetadata  # shape (t, c, z, y, x), dtype, axes as found, sizes, channels
    axes: AxisMap  # how the file's own axes map onto (t, c, z, y, x)

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        """One ``(y, x)`` plane, touching only its bytes."""

    def close(self) -> None:
        """Release the file."""


#: Input format name (:data:`fm2s._stack_types.INPUT_FORMATS`) -> its reader.
READERS: dict[str, Callable[..., StackSource]] = {
    "ome-zarr": _ngff.NgffSource,
    "tiff": _readers.TiffSource,
    "png": _readers.PngSource,
    "folder": _readers.FolderSource,
    **{name: _vendor.open_vendor for name in ("czi", "nd2", "lif", "oib", "oif")},
}


def _open_source(path: Path, *, series: int, pages_as: str) -> StackSource:
    if not path.exists():
        msg = f"{path}: no such file or folder"
        raise StackNotFoundError(msg)
    fmt = input_format(path)
    if fmt is None:
        msg = (
            f"{path}: unsupported file type {path.suffix!r}; expected a TIFF (.tif, .tiff, "
            ".ome.tif), a PNG, an OME-Zarr store (.zarr), a folder of TIFF files or a "
            "microscope's own file (.czi, .nd2, .lif, .oib, .oif)"
        )
        raise StackError(msg)
    return READERS[fmt.name](path, series=series, pages_as=pages_as)


def _read_checked(source, key: PlaneKey, path: str) -> np.ndarray:
    try:
        plane = source.read(*key)
    except (StackError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        msg = f"{path}: cannot read plane t,c,z={key.label}: {type(exc).__name__}: {exc}"
        raise StackError(msg) from exc
    shape = source.metadata.shape[3:]
    if plane.shape != shape:
        msg = f"{path}: plane t,c,z={key.label} has shape {plane.shape}, expected {shape}"
        raise StackError(msg)
    return plane


class _PlaneArray:
    """Array-like view of a source for ``da.from_array``: reads whole planes."""

    ndim = 5

    def __init__(self, source, meta: StackMetadata) -> None:
        self._source = source
        self.shape = meta.shape
        self.dtype = np.dtype(meta.dtype)
        self._path = meta.path

    def __getitem__(self, index: tuple) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (5 - len(index))
        picks = [np.arange(n)[i] for i, n in zip(index[:3], self.shape[:3], strict=True)]
        yx = index[3:]
        plane_shape = np.broadcast_to(np.empty((), bool), self.shape[3:])[yx].shape
        out = np.empty(tuple(np.size(p) for p in picks) + plane_shape, dtype=self.dtype)
        for i, t in enumerate(np.atleast_1d(picks[0])):
            for j, c in enumerate(np.atleast_1d(picks[1])):
                for k, z in enumerate(np.atleast_1d(picks[2])):
                    key = PlaneKey(int(t), int(c), int(z))
                    out[i, j, k] = _read_checked(self._source, key, self._path)[yx]
        # integer indices drop their axis, as in numpy
        return out.reshape(tuple(np.size(p) for p in picks if np.ndim(p)) + plane_shape)
