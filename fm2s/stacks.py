"""Open microscopy stacks lazily as 5D ``(t, c, z, y, x)`` dask arrays.

Formats (chosen from the path; see ``docs/stack-io.md``):

========================  ===============================  ====================
path                      read as                          ``metadata.format``
========================  ===============================  ====================
``*.ome.tif[f]``          OME-TIFF, one series at a time   ``"ome-tiff"``
``*.tif[f]`` (ImageJ)     ImageJ hyperstack (T, Z, C, S)   ``"imagej-tiff"``
``*.tif[f]`` (other)      plain TIFF, pages as z or t      ``"tiff"``
``*.png``                 single plane (RGB -> c)          ``"png"``
``*.zarr`` or Zarr group  OME-Zarr NGFF 0.4 / 0.5, level 0 ``"ome-zarr"``
folder of TIFF/PNG files  one time point per file          ``"tiff-series"``
========================  ===============================  ====================

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
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
from dask.base import tokenize

__all__ = [
    "PlaneKey",
    "Stack",
    "StackError",
    "StackMetadata",
    "StackNotFoundError",
    "list_planes",
    "open_stack",
    "read_plane",
]

logger = logging.getLogger(__name__)

AXES = "tczyx"
TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")


class StackError(ValueError):
    """An input stack cannot be opened or read; the message names the file."""


class StackNotFoundError(StackError, FileNotFoundError):
    """An input stack does not exist (also a ``FileNotFoundError``)."""


class PlaneKey(NamedTuple):
    """Position of one 2D plane in a ``(t, c, z, y, x)`` stack."""

    t: int
    c: int
    z: int

    @property
    def label(self) -> str:
        """The key as ``"t,c,z"``, e.g. ``"0,1,12"`` (used in provenance and seeds)."""
        return f"{self.t},{self.c},{self.z}"

    @classmethod
    def from_label(cls, label: str) -> PlaneKey:
        """Parse ``"t,c,z"`` back into a key."""
        try:
            t, c, z = (int(part) for part in label.split(","))
        except ValueError:
            msg = f"plane label {label!r} is not of the form 't,c,z'"
            raise ValueError(msg) from None
        return cls(t, c, z)


@dataclass(frozen=True)
class StackMetadata:
    """What is known about an input stack without reading its pixels.

    ``shape`` is always 5D ``(t, c, z, y, x)``; ``axes_found`` is the axes string
    of the file as found (tifffile letters such as ``"ZCYX"``, or NGFF axis
    names) and ``shape_found`` the matching shape. Pixel sizes and units are
    keyed ``"z"``, ``"y"``, ``"x"`` (``None`` when unknown); units use NGFF names
    (``"micrometer"``) when recognised.
    Channel colours are ``"RRGGBB"`` hex strings.
    """

    path: str
    format: str
    axes_found: str
    shape: tuple[int, int, int, int, int]
    dtype: str
    shape_found: tuple[int, ...] = ()
    pixel_sizes: dict[str, float | None] = field(default_factory=dict)
    units: dict[str, str | None] = field(default_factory=dict)
    time_step: float | None = None
    time_unit: str | None = None
    channel_names: list[str] | None = None
    channel_colors: list[str | None] | None = None
    series: int = 0
    n_series: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of all fields."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["shape_found"] = list(self.shape_found)
        return out


@dataclass
class Stack:
    """A lazily opened stack: ``data`` is a 5D dask array, one chunk per plane.

    Use as a context manager (or call :meth:`close`) to release the file.
    """

    data: da.Array
    metadata: StackMetadata
    _source: Any = field(repr=False)

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
        OME-TIFF, ImageJ or plain TIFF, PNG, OME-Zarr store (NGFF 0.4 or 0.5), or a
        folder of per-time-point TIFF files.
    series : int, optional
        Series (OME-TIFF image, TIFF series, or OME-Zarr image) to open.
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
    meta = source.metadata
    try:
        token = tokenize(str(path.resolve()), path.stat().st_mtime_ns, series, pages_as)
        data = da.from_array(
            _PlaneArray(source, meta),
            chunks=(1, 1, 1, meta.shape[3], meta.shape[4]),
            name=f"fm2s-read-{token}",
            meta=np.empty((0,) * 5, dtype=meta.dtype),
        )
    except BaseException:
        source.close()
        raise
    logger.debug("opened %s as %s %s %s", path, meta.format, meta.shape, meta.dtype)
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


# -- axes -------------------------------------------------------------------

_AXIS_LETTERS = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


class AxisMap:
    """Map an input's axes (tifffile letters or NGFF names) onto ``t, c, z, y, x``.

    Parameters
    ----------
    axes : str or sequence of str
        ``"TZCYXS"`` style letters, or NGFF axis names such as ``["t", "c", "y", "x"]``.
    shape : tuple of int
        Shape of the input array, one entry per axis.
    pages_as : {"z", "t"}
        Where generic page axes (``I``, ``Q``) go.
    path : str
        Named in error messages.
    """

    def __init__(self, axes, shape, *, pages_as: str, path: str) -> None:
        axes = list(axes)
        letters = {**_AXIS_LETTERS, "I": pages_as, "Q": pages_as}
        where: dict[str, int] = {}
        for pos, (ax, size) in enumerate(zip(axes, shape, strict=True)):
            out = letters.get(str(ax).upper())
            if out is None:
                if size == 1:
                    continue
                msg = (
                    f"{path}: axes {''.join(axes)!r} (shape {tuple(shape)}) cannot be mapped "
                    f"to t/c/z/y/x: axis {ax!r} has size {size}"
                )
                raise StackError(msg)
            if out in where:
                prev = where[out]
                if size == 1:
                    continue
                if shape[prev] != 1:
                    msg = (
                        f"{path}: axes {''.join(axes)!r} (shape {tuple(shape)}) cannot be mapped "
                        f"to t/c/z/y/x: both {axes[prev]!r} and {ax!r} would become {out!r}"
                    )
                    if ax in ("I", "Q"):
                        msg += "; try pages_as='t'" if pages_as == "z" else "; try pages_as='z'"
                    raise StackError(msg)
            where[out] = pos
        if "y" not in where or "x" not in where:
            msg = f"{path}: axes {''.join(axes)!r} have no y and x axes"
            raise StackError(msg)
        self.where = where
        self.ndim = len(axes)
        self.shape5 = tuple(int(shape[where[a]]) if a in where else 1 for a in AXES)

    def select(self, t: int, c: int, z: int) -> tuple:
        """Index into the input array that yields plane ``(t, c, z)``."""
        index: list[Any] = [0] * self.ndim
        for name, value in (("t", t), ("c", c), ("z", z)):
            if name in self.where:
                index[self.where[name]] = value
        index[self.where["y"]] = slice(None)
        index[self.where["x"]] = slice(None)
        return tuple(index)

    def to_yx(self, plane: np.ndarray) -> np.ndarray:
        """Transpose a selected 2D plane to ``(y, x)`` order."""
        return plane.T if self.where["y"] > self.where["x"] else plane


# -- dispatch and the dask adaptor -----------------------------------------


def _open_source(path: Path, *, series: int, pages_as: str):
    from fm2s import _ngff, _readers

    if not path.exists():
        msg = f"{path}: no such file or folder"
        raise StackNotFoundError(msg)
    name = path.name.lower()
    if path.is_dir():
        if name.endswith(".zarr") or any((path / m).exists() for m in ZARR_MARKERS):
            return _ngff.NgffSource(path, series=series, pages_as=pages_as)
        return _readers.FolderSource(path, series=series, pages_as=pages_as)
    if name.endswith(TIFF_SUFFIXES):
        return _readers.TiffSource(path, series=series, pages_as=pages_as)
    if name.endswith(PNG_SUFFIXES):
        return _readers.PngSource(path, series=series, pages_as=pages_as)
    msg = (
        f"{path}: unsupported file type {path.suffix!r}; expected a TIFF (.tif, .tiff, "
        ".ome.tif), a PNG, an OME-Zarr store (.zarr) or a folder of TIFF files"
    )
    raise StackError(msg)


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


_NUMBER_AFTER_T = re.compile(r"(?<![A-Za-z])[Tt](\d+)")
_NUMBER = re.compile(r"\d+")


def frame_number(name: str) -> int | None:
    """Return the time-point number in a file name.

    The number after a ``T`` that starts a word (``...--T00012--Z000--C.tif``
    gives 12), else the last number in the name, else ``None``.

    Examples
    --------
    >>> frame_number("EMBO_2012_Group3--W0002--P001--T00012--Z000--C.tif")
    12
    >>> frame_number("frame_0007.tif")
    7
    """
    stem = Path(name).stem
    found = _NUMBER_AFTER_T.findall(stem)
    if found:
        return int(found[-1])
    found = _NUMBER.findall(stem)
    return int(found[-1]) if found else None
