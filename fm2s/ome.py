"""Write (and read back) OME-Zarr images plane by plane, atomically.

The writer builds a 5D ``(t, c, z, y, x)`` image, NGFF 0.4 (Zarr v2, the default)
or 0.5 (Zarr v3), from one plane at a time, so that a stack never has to fit in
memory: each plane is written at full resolution and, 2x2-block averaged, into
every pyramid level (level ``k`` has ``y // 2**k`` by ``x // 2**k`` pixels, as in
ome-zarr-py; z is never downsampled). Chunks hold one plane, tiled above `tile`
pixels. Axes, units, pixel sizes and the ``omero`` channel block come from the
input's :class:`~fm2s.stacks.StackMetadata`; fm2s provenance sits in the group
attributes under ``"fm2s"``, next to ``"ome"`` (see :mod:`fm2s._provenance`).

A store is built under a hidden sibling (:func:`fm2s.outputs.temporary_path`) and renamed
to its final name only when complete; ``overwrite=True`` renames the old store
aside, renames the new one in, then deletes the old one. A crash or exception
never leaves a store under the final name; the hidden sibling a hard kill leaves behind
is removed by the next writer of the same store.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import zarr
from ome_zarr.axes import KNOWN_SPATIAL_UNITS, KNOWN_TEMPORAL_UNITS
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import add_metadata, write_multiscales_metadata

from fm2s._ngff import PROVENANCE_KEY, open_ngff_group
from fm2s._provenance import write_provenance
from fm2s._readers import normalize_unit
from fm2s.outputs import (
    OutputExistsError,
    check_writable,
    publish,
    remove_stale_temporaries,
    temporary_path,
)
from fm2s.stacks import PlaneKey, StackError, StackMetadata

__all__ = [
    "OmeZarrWriter",
    "OutputExistsError",
    "check_output_path",
    "describe_output",
    "level_shapes",
    "open_ome_zarr",
    "store_axes",
    "write_ome_zarr",
]

logger = logging.getLogger(__name__)

_DEFAULT_COLORS = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00")


def check_output_path(
    output: str | Path, *, input_path: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Refuse an output that exists (unless `overwrite`) or that lies inside the input.

    Also refuses ``overwrite=True`` when the input lies inside the output, which
    replacing the output would delete, and an output that cannot be written
    (:func:`fm2s.outputs.check_writable`). Returns the output as a ``Path``.
    """
    output = Path(output)
    out = output.resolve()
    if input_path is not None:
        inp = Path(input_path).resolve()
        if out == inp or inp in out.parents:
            msg = f"{output}: output lies inside the input {input_path}; write it elsewhere"
            raise StackError(msg)
        if out in inp.parents:
            msg = f"{output}: output contains the input {input_path}; write it elsewhere"
            raise StackError(msg)
    if (output.exists() or output.is_symlink()) and not overwrite:
        msg = f"{output}: output exists; pass overwrite=True to replace it"
        raise OutputExistsError(msg)
    return check_writable(output)


def level_shapes(shape: tuple[int, ...], levels: int) -> list[tuple[int, ...]]:
    """Shapes of the pyramid levels: y and x halved (floor, at least 1) per level.

    Examples
    --------
    >>> level_shapes((1, 1, 3, 100, 75), 3)
    [(1, 1, 3, 100, 75), (1, 1, 3, 50, 37), (1, 1, 3, 25, 18)]
    """
    out = [tuple(shape)]
    for _ in range(1, levels):
        *rest, y, x = out[-1]
        out.append((*rest, max(1, y // 2), max(1, x // 2)))
    return out


def store_axes(shape: tuple[int, ...], metadata: StackMetadata | None = None) -> str:
    """The axes of the store written for a ``(t, c, z, y, x)`` stack: all five, less ``t``
    and ``z`` where the stack has one plane along them and the input gives no time step or
    z spacing (a 2-D image gets ``cyx``: no scale is made up for an axis it does not have).
    Without `metadata`, all five."""
    if metadata is None:
        return "tczyx"
    sizes = metadata.pixel_sizes or {}
    dropped = {"t"} if shape[0] == 1 and not metadata.time_step else set()
    dropped |= {"z"} if shape[2] == 1 and not sizes.get("z") else set()
    return "".join(a for a in "tczyx" if a not in dropped)


def describe_output(shape, dtype, *, ngff_version: str, levels: int,
                    axes: str = "tczyx") -> dict[str, Any]:
    """The ``output`` block of a provenance record: the stored axes and shape (of the
    ``(t, c, z, y, x)`` `shape`), dtype, NGFF version, pyramid."""
    stored = tuple(n for a, n in zip("tczyx", shape, strict=True) if a in axes)
    return {
        "axes": axes, "shape": list(stored), "dtype": str(dtype), "ngff_version": ngff_version,
        "levels": levels, "level_shapes": [list(s) for s in level_shapes(stored, levels)],
    }  # fmt: skip


def max_levels(shape: tuple[int, ...]) -> int:
    """The most pyramid levels a plane of `shape` (``(..., y, x)``) has: halving stops at
    a side of one pixel.

    Examples
    --------
    >>> max_levels((1, 1, 1, 64, 100))
    7
    """
    return int(min(shape[-2:])).bit_length()


def _downsample(plane: np.ndarray) -> np.ndarray:
    """2x2 block mean of a plane (odd edges cropped), rounded back to its dtype."""
    fy, fx = (2 if n > 1 else 1 for n in plane.shape)
    ny, nx = plane.shape[0] // fy, plane.shape[1] // fx
    small = plane.dtype.itemsize <= 2 or plane.dtype == np.float32
    work = plane[: ny * fy, : nx * fx].astype(np.float32 if small else np.float64)
    mean = work.reshape(ny, fy, nx, fx).mean(axis=(1, 3))
    if plane.dtype == bool:
        return mean >= 0.5
    if np.issubdtype(plane.dtype, np.integer):
        info = np.iinfo(plane.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(plane.dtype)
    return mean.astype(plane.dtype)


class OmeZarrWriter:
    """Build an OME-Zarr image plane by plane under a temporary name.

    Parameters
    ----------
    path : str or Path
        Final store path, e.g. ``"out.ome.zarr"``.
    shape : tuple of 5 ints
        ``(t, c, z, y, x)`` shape of the full-resolution image.
    dtype : dtype
        Data type of every level (planes must have it).
    metadata : StackMetadata, optional
        Input metadata: pixel sizes, units, time step, channel names and colours.
        If it names a path, the output may not lie inside it.
    levels : int, optional
        Number of pyramid levels, including full resolution.
    ngff_version : {"0.4", "0.5"}, optional
        NGFF 0.4 (Zarr v2) or 0.5 (Zarr v3).
    overwrite : bool, optional
        Replace an existing store (only once the new one is complete).
    tile : int, optional
        Largest chunk side in y and x; planes up to this size are one chunk.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "image.ome.zarr"
    >>> with OmeZarrWriter(out, shape=(1, 1, 2, 32, 32), dtype="uint16") as writer:
    ...     for key in writer.plane_keys():
    ...         writer.write_plane(key, np.zeros((32, 32), np.uint16))
    ...     _ = writer.commit()
    >>> open_ome_zarr(out)[0][1].shape
    (1, 1, 2, 16, 16)
    """

    keeps_provenance = True

    def __init__(
        self,
        path: str | Path,
        *,
        shape: tuple[int, ...],
        dtype: Any,
        metadata: StackMetadata | None = None,
        levels: int = 3,
        ngff_version: Literal["0.4", "0.5"] = "0.4",
        overwrite: bool = False,
        tile: int = 2048,
    ) -> None:
        if ngff_version not in ("0.4", "0.5"):
            msg = f"ngff_version must be '0.4' or '0.5', got {ngff_version!r}"
            raise ValueError(msg)
        if not isinstance(levels, int) or levels < 1:
            msg = f"levels must be an int >= 1, got {levels!r}"
            raise ValueError(msg)
        if len(shape) != 5 or min(shape) < 1:
            msg = f"shape must be 5D (t, c, z, y, x) with sizes >= 1, got {tuple(shape)}"
            raise ValueError(msg)
        if not isinstance(tile, int) or tile < 16:
            msg = f"tile must be an int >= 16, got {tile!r}"
            raise ValueError(msg)
        self.path = check_output_path(
            path, input_path=metadata.path if metadata else None, overwrite=overwrite
        )
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.metadata = metadata
        self.axes = store_axes(self.shape, metadata)
        self._stored = [i for i, a in enumerate("tczyx") if a in self.axes]
        most = max_levels(self.shape)
        if levels > most:
            logger.warning("%s: %d pyramid levels asked, %d written: a %d x %d plane halves to "
                           "a single pixel in %d steps", path, levels, most, *self.shape[3:],
                           most - 1)  # fmt: skip
            levels = most
        self.levels, self.ngff_version = levels, ngff_version
        self.overwrite, self.tile = overwrite, tile
        self.tmp_path: Path | None = None
        self._arrays: list[zarr.Array] = []
        self._written: set[PlaneKey] = set()
        self._ranges: dict[int, list[float]] = {}
        self._committed = False

    def plane_keys(self) -> list[PlaneKey]:
        """All plane keys in ``(t, c, z)`` order."""
        return [PlaneKey(*k) for k in itertools.product(*(range(n) for n in self.shape[:3]))]

    def __enter__(self) -> OmeZarrWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()

    def open(self) -> None:
        """Create the temporary store with its arrays and NGFF metadata."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self.tmp_path = temporary_path(self.path)
        try:
            self._create()
        except BaseException:
            self.abort()
            raise
        logger.debug("building %s in %s", self.path, self.tmp_path)

    def _create(self) -> None:
        fmt = FormatV04() if self.ngff_version == "0.4" else FormatV05()
        group = zarr.open_group(str(self.tmp_path), mode="w-", zarr_format=fmt.zarr_format)
        self._group = group
        datasets = []
        stored = tuple(self.shape[i] for i in self._stored)
        for k, shape in enumerate(level_shapes(stored, self.levels)):
            chunks = (1,) * (len(shape) - 2) + tuple(min(n, self.tile) for n in shape[-2:])
            options: dict[str, Any] = {"dimension_names": list(self.axes)}
            if fmt.zarr_format == 2:
                options = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
            self._arrays.append(
                group.create_array(
                    str(k),
                    shape=shape,
                    chunks=chunks,
                    dtype=self.dtype,
                    fill_value=0,
                    config={"write_empty_chunks": True},
                    **options,
                )
            )
            scale = [*self._scale()[:3], *(s * 2**k for s in self._scale()[3:])]
            scale = [scale[i] for i in self._stored]
            datasets.append(
                {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            )
        name = Path(self.metadata.path).name if self.metadata else self.path.name
        write_multiscales_metadata(group, datasets, fmt=fmt, axes=self._axes(), name=name)

    def _scale(self) -> list[float]:
        meta = self.metadata
        sizes = meta.pixel_sizes if meta else {}
        t = meta.time_step if meta and meta.time_step else 1.0
        return [float(t), 1.0, *(float(sizes.get(a) or 1.0) for a in "zyx")]

    def _axes(self) -> list[dict[str, str]]:
        meta = self.metadata
        axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
        axes += [{"name": a, "type": "space"} for a in "zyx"]
        axes = [ax for ax in axes if ax["name"] in self.axes]
        if meta is None:
            return axes
        if meta.time_step and normalize_unit(meta.time_unit, time=True) in KNOWN_TEMPORAL_UNITS:
            axes[0]["unit"] = normalize_unit(meta.time_unit, time=True)
        for ax in axes:
            if ax["type"] != "space":
                continue
            unit = normalize_unit((meta.units or {}).get(ax["name"]))
            if (meta.pixel_sizes or {}).get(ax["name"]) and unit in KNOWN_SPATIAL_UNITS:
                ax["unit"] = unit
        return axes

    def write_plane(self, key: tuple[int, int, int], plane: np.ndarray) -> None:
        """Write one ``(y, x)`` plane at every pyramid level."""
        if not self._arrays:
            msg = "the writer is not open; use it as a context manager"
            raise RuntimeError(msg)
        key = PlaneKey(*key)
        plane = np.asarray(plane)
        if plane.shape != self.shape[3:] or plane.dtype != self.dtype:
            msg = (
                f"{self.path}: plane {key.label} is {plane.shape} {plane.dtype}, "
                f"expected {self.shape[3:]} {self.dtype}"
            )
            raise ValueError(msg)
        index = tuple(key[i] for i in self._stored if i < 3)
        for k, array in enumerate(self._arrays):
            if k:
                plane = _downsample(plane)
            array[index] = plane
            if k == 0:
                self._update_range(key.c, plane)
        self._written.add(key)

    def _update_range(self, c: int, plane: np.ndarray) -> None:
        """Track each channel's finite value range, for the omero display window."""
        values = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        if values.size:
            lo, hi = float(values.min()), float(values.max())
            old = self._ranges.get(c, [lo, hi])
            self._ranges[c] = [min(old[0], lo), max(old[1], hi)]

    def _omero(self) -> dict:
        """The ``omero`` block: the input's channel colours and display windows where it
        has them; else the default colours and, as window, the range of the written values."""
        meta, n = self.metadata, self.shape[1]
        names = (meta.channel_names if meta else None) or [f"Channel {i}" for i in range(n)]
        colors = (meta.channel_colors if meta else None) or (
            ["FFFFFF"] if n == 1 else list(itertools.islice(itertools.cycle(_DEFAULT_COLORS), n))
        )
        windows = (meta.channel_windows if meta else None) or [None] * n
        channels = []
        for i in range(n):
            start, end = self._ranges.get(i, [0.0, 1.0])
            lo, hi = start, end
            if windows[i] is not None:
                start, end = (float(v) for v in windows[i])
                lo, hi = min(lo, start), max(hi, end)
            if self.dtype.kind in "ui":
                lo, hi = float(np.iinfo(self.dtype).min), float(np.iinfo(self.dtype).max)
            channels.append({
                "label": str(names[i]), "color": colors[i] or "FFFFFF", "active": True,
                "coefficient": 1.0, "family": "linear", "inverted": False,
                "window": {"min": lo, "max": hi, "start": start, "end": end},
            })  # fmt: skip
        rdefs = {"defaultT": 0, "defaultZ": self.shape[2] // 2}
        # one channel is shown grey unless the input gave it a colour (a GFP channel stays green)
        coloured = n > 1 or str(colors[0] or "FFFFFF").upper() != "FFFFFF"
        rdefs["model"] = "color" if coloured else "greyscale"
        omero = {"name": self.path.name, "channels": channels, "rdefs": rdefs}
        if self.ngff_version == "0.4":
            omero["version"] = "0.4"
        return omero

    def commit(self, provenance: Mapping[str, Any] | None = None) -> Path:
        """Check every plane was written, add metadata, and rename into place."""
        missing = len(self.plane_keys()) - len(self._written)
        if missing:
            msg = f"{self.path}: {missing} of {len(self.plane_keys())} planes were not written"
            raise RuntimeError(msg)
        fmt = FormatV04() if self.ngff_version == "0.4" else FormatV05()
        add_metadata(self._group, {"omero": self._omero()}, fmt=fmt)
        if provenance is not None:
            write_provenance(self._group, provenance)
        publish(self.tmp_path, self.path, overwrite=self.overwrite)
        self._committed = True
        logger.info("wrote %s (NGFF %s, %d levels)", self.path, self.ngff_version, self.levels)
        return self.path

    def abort(self) -> None:
        """Delete the temporary store; the final path is left untouched."""
        if self.tmp_path is None:
            return
        # zarr writes from its own I/O thread: after an interrupt (Ctrl-C, SIGTERM) in the
        # middle of a write, that thread may still create files after a first removal.
        absent = 0
        for _ in range(100):
            if self.tmp_path.exists():
                shutil.rmtree(self.tmp_path, ignore_errors=True)
                absent = 0
            else:
                absent += 1
                if absent == 3:
                    break
            time.sleep(0.05)
        logger.debug("removed incomplete %s", self.tmp_path)



def write_ome_zarr(
    path: str | Path,
    data: da.Array | np.ndarray,
    metadata: StackMetadata | None = None,
    *,
    levels: int = 3,
    ngff_version: Literal["0.4", "0.5"] = "0.4",
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    tile: int = 2048,
) -> Path:
    """Write a lazy 5D ``(t, c, z, y, x)`` array to OME-Zarr, one plane at a time.

    Parameters
    ----------
    path : str or Path
        Output store; built under a temporary sibling name and renamed when complete.
    data : dask.array.Array or ndarray, shape (T, C, Z, Y, X)
        Computed one plane at a time (e.g. ``da.stack`` of delayed per-plane
        results), so only a plane and its pyramid are in memory at once.
    metadata : StackMetadata, optional
        Input metadata (pixel sizes, units, channel names and colours).
    levels, ngff_version, overwrite, tile
        See :class:`OmeZarrWriter`.
    provenance : mapping, optional
        JSON-able dict stored in the group attributes under ``"fm2s"``.

    Returns
    -------
    path : Path
        The final store path.
    """
    if data.ndim != 5:
        msg = f"data must be 5D (t, c, z, y, x), got shape {data.shape}"
        raise ValueError(msg)
    writer = OmeZarrWriter(
        path, shape=data.shape, dtype=data.dtype, metadata=metadata, levels=levels,
        ngff_version=ngff_version, overwrite=overwrite, tile=tile,
    )  # fmt: skip
    with writer:
        for key in writer.plane_keys():
            plane = data[key]
            writer.write_plane(key, plane.compute() if isinstance(plane, da.Array) else plane)
        return writer.commit(provenance)


def open_ome_zarr(path: str | Path, *, series: int = 0) -> tuple[list[da.Array], dict]:
    """Open every level of an OME-Zarr image as dask arrays, with its attributes.

    Returns ``(levels, attrs)``: the arrays in multiscales order, each ``(t, c, z, y, x)``
    (axes the store lacks have size 1), and a dict with
    ``"multiscales"`` (the image's entry), ``"omero"``, ``"version"`` and the
    fm2s provenance under ``"fm2s"`` (``None`` where absent).
    """
    group, ms, version, attrs, _ = open_ngff_group(Path(path), series)
    names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", "tczyx")]
    # Stores of fewer axes (store_axes) are handed out as (t, c, z, y, x) all the same.
    pad = tuple(slice(None) if a in names else None for a in "tczyx")
    levels = [da.from_zarr(group[d["path"]]) for d in ms["datasets"]]
    if len(names) < 5 and set(names) <= set("tczyx") and len(levels[0].shape) == len(names):
        levels = [level[pad] for level in levels]
    extra = {"omero": attrs.get("omero"), PROVENANCE_KEY: group.attrs.get(PROVENANCE_KEY)}
    return levels, {"multiscales": ms, "version": version, **extra}
