"""TIFF, PNG and TIFF-folder readers behind :func:`fm2s.stacks.open_stack`.

Each source has ``metadata`` (a :class:`~fm2s.stacks.StackMetadata`),
``read(t, c, z) -> (y, x) ndarray`` and ``close()``. Opening a source reads
headers only. The stack readers touch tifffile only here.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr

from fm2s._stack_types import (
    PNG_SUFFIXES,
    TIFF_SUFFIXES,
    AxisMap,
    StackError,
    StackMetadata,
    frame_number,
)

logger = logging.getLogger(__name__)

# Spellings found in files -> NGFF (UDUNITS-2) unit names.
_SPACE_UNITS = {
    "micrometer": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "\\u00b5m": "micrometer",
    "nanometer": "nanometer", "nm": "nanometer", "millimeter": "millimeter", "mm": "millimeter",
    "centimeter": "centimeter", "cm": "centimeter", "meter": "meter", "m": "meter",
    "angstrom": "angstrom", "å": "angstrom",
}  # fmt: skip
_TIME_UNITS = {
    "second": "second", "s": "second", "sec": "second", "seconds": "second",
    "millisecond": "millisecond", "ms": "millisecond", "msec": "millisecond",
    "microsecond": "microsecond", "µs": "microsecond", "us": "microsecond",
    "minute": "minute", "min": "minute", "hour": "hour", "h": "hour", "hr": "hour",
}  # fmt: skip
_RESUNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}  # TIFF ResolutionUnit -> micrometers per unit


def normalize_unit(unit: object, *, time: bool = False) -> str | None:
    """Return the NGFF name of a space (or time) unit, the input if unknown, or None."""
    if unit is None or str(unit).strip() in ("", "pixel", "pixels", "px"):
        return None
    text = str(unit).strip()
    table = _TIME_UNITS if time else _SPACE_UNITS
    return table.get(text.lower(), table.get(text, text))


def _hex_color(rgb) -> str:
    return "".join(f"{int(v) & 255:02X}" for v in rgb[:3])


def _positive(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


class _WarningCollector(logging.Handler):
    """Collect tifffile's warnings while a file opens; some of them mean corruption."""

    CORRUPT = ("invalid page offset", "invalid value offset", "corrupt", "truncated")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def check(self, path: Path) -> None:
        bad = [m for m in self.messages if any(w in m.lower() for w in self.CORRUPT)]
        if bad:
            msg = f"{path}: corrupt or truncated TIFF ({bad[0]})"
            raise StackError(msg)
        for message in self.messages:
            logger.warning("%s: tifffile: %s", path, message)


class TiffSource:
    """One series of a TIFF file (OME-TIFF, ImageJ hyperstack or plain TIFF)."""

    def __init__(self, path: Path, *, series: int, pages_as: str) -> None:
        handler = _WarningCollector()
        tifffile_logger = logging.getLogger("tifffile")
        # tifffile's own log lines become part of fm2s's error (or its warnings), once
        level, propagate = tifffile_logger.level, tifffile_logger.propagate
        tifffile_logger.addHandler(handler)
        tifffile_logger.setLevel(logging.WARNING)
        tifffile_logger.propagate = False
        try:
            self._tif, self._appended = _tiff_file(path)
            try:
                self._open(path, series, pages_as)
                handler.check(path)
            except BaseException:
                self.close()
                raise
        finally:
            tifffile_logger.removeHandler(handler)
            tifffile_logger.setLevel(level)
            tifffile_logger.propagate = propagate

    def _open(self, path: Path, series: int, pages_as: str) -> None:
        tif = self._tif
        try:
            n_series = len(tif.series)
        except Exception as exc:
            msg = f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {exc})"
            raise StackError(msg) from exc
        if n_series == 0:
            msg = f"{path}: TIFF file holds no image series"
            raise StackError(msg)
        if series >= n_series and self._appended:
            msg = (
                f"{path}: series {series} out of range; the file's {self._appended} series "
                "(appended one at a time, each of the same shape and dtype) are read as one "
                "stack, series 0"
            )
            raise StackError(msg)
        if series >= n_series:
            msg = f"{path}: series {series} out of range; the file has {n_series} series"
            raise StackError(msg)
        s = tif.series[series]
        if tif.is_ome:
            _check_ome_pages(path, tif, s, series)
        elif n_series > 1:
            logger.warning(
                "%s: the file holds %d series of different shapes; reading series %d only "
                "(--series or the workflow's reading.series selects another)",
                path, n_series, series,
            )  # fmt: skip
        self.axes = AxisMap(s.axes, s.shape, pages_as=pages_as, path=str(path))
        images = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
        planes = int(np.prod([n for a, n in zip(s.axes, s.shape, strict=True) if a not in "YXS"]))
        if images and planes != images and not tif.is_ome:
            msg = (
                f"{path}: corrupt or truncated ImageJ TIFF: {images} images listed, {planes} found"
            )
            raise StackError(msg)
        try:
            self._store = s.aszarr(level=0)
            self._array = zarr.open_array(self._store, mode="r")
        except Exception as exc:
            msg = f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {exc})"
            raise StackError(msg) from exc
        if tif.is_ome:
            fmt, extra = "ome-tiff", _ome_metadata(tif, series, s)
        elif tif.is_imagej:
            fmt, extra = "imagej-tiff", _imagej_metadata(tif, s)
        else:
            fmt, extra = "tiff", _plain_metadata(s)
        if "S" in s.axes and s.shape[s.axes.index("S")] == 3 and not extra.get("channel_colors"):
            extra["channel_names"] = ["red", "green", "blue"]
            extra["channel_colors"] = ["FF0000", "00FF00", "0000FF"]
        self.metadata = _metadata(
            path, fmt, s.axes, s.shape, self.axes, s.dtype, series, n_series, extra
        )

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        return self.axes.to_yx(np.asarray(self._array[self.axes.select(t, c, z)]))

    def close(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()
        if getattr(self, "_tif", None) is not None:
            self._tif.close()


class PngSource:
    """A single PNG image (grey, or RGB(A) samples as channels)."""

    def __init__(self, path: Path, *, series: int, pages_as: str) -> None:
        self._path = path
        try:
            props = iio.improps(path)
        except Exception as exc:
            msg = f"{path}: not a readable PNG file ({type(exc).__name__}: {exc})"
            raise StackError(msg) from exc
        if series != 0:
            msg = f"{path}: series {series} out of range; a PNG holds one image (series 0)"
            raise StackError(msg)
        axes = "YXS" if len(props.shape) == 3 else "YX"
        self.axes = AxisMap(axes, props.shape, pages_as=pages_as, path=str(path))
        extra = {}
        if props.shape[-1:] == (3,) and axes == "YXS":
            extra = {"channel_names": ["red", "green", "blue"],
                     "channel_colors": ["FF0000", "00FF00", "0000FF"]}  # fmt: skip
        self.metadata = _metadata(
            path, "png", axes, props.shape, self.axes, props.dtype, 0, 1, extra
        )

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        image = iio.imread(self._path)
        return self.axes.to_yx(image[self.axes.select(t, c, z)])

    def close(self) -> None:
        pass


class ArraySource:
    """An array in memory (numpy, dask, or anything ``np.asarray`` takes per plane), e.g. a
    napari layer; `axes` names its axes with NGFF letters (``"tczyx"`` or a subset)."""

    def __init__(self, array, axes: str, *, name: str, extra: dict | None = None) -> None:
        if len(axes) != array.ndim:
            msg = f"{name}: axes {axes!r} do not match an array of {array.ndim} dimensions"
            raise StackError(msg)
        if sorted(set(axes.lower())) != sorted(axes.lower()) or set(axes.lower()) - set("tczyx"):
            msg = f"{name}: axes {axes!r} must be distinct letters of 'tczyx'"
            raise StackError(msg)
        self._array = array
        self.axes = AxisMap(axes.upper(), array.shape, pages_as="z", path=name)
        self.metadata = _metadata(
            name, "array", axes.lower(), array.shape, self.axes, array.dtype, 0, 1, extra or {}
        )

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        return self.axes.to_yx(np.asarray(self._array[self.axes.select(t, c, z)]))

    def close(self) -> None:
        pass


class FolderSource:
    """A folder of TIFF (or PNG) files, one time point each, ordered by frame number."""

    def __init__(self, path: Path, *, series: int, pages_as: str) -> None:
        suffixes = TIFF_SUFFIXES + PNG_SUFFIXES
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
        ]
        if not files:
            msg = f"{path}: folder holds no TIFF or PNG files and is not a Zarr store"
            raise StackError(msg)
        numbered = {}
        for f in files:
            number = frame_number(f.name)
            if number is None:
                msg = f"{path}: cannot order the files: {f.name!r} has no number in its name"
                raise StackError(msg)
            if number in numbered:
                other = numbered[number].name
                msg = f"{path}: files {other!r} and {f.name!r} have the same frame number {number}"
                raise StackError(msg)
            numbered[number] = f
        self.files = [numbered[n] for n in sorted(numbered)]
        self._series, self._pages_as = series, pages_as
        first = _open_file(self.files[0], series=series, pages_as=pages_as)
        try:
            inner = first.metadata
        finally:
            first.close()
        if inner.shape[0] != 1:
            msg = f"{self.files[0]}: a file of a time series holds {inner.shape[0]} time points"
            raise StackError(msg)
        for f in self.files[1:]:  # headers only
            if _header(f, series) != first.header:
                (shape, dtype), (shape0, dtype0) = _header(f, series), first.header
                msg = (
                    f"{f}: shape {shape} and dtype {dtype} differ from {shape0} and {dtype0} "
                    f"of {self.files[0].name} in the same folder"
                )
                raise StackError(msg)
        self.metadata = replace(
            inner,
            path=str(path),
            format="tiff-series",
            axes_found="T" + inner.axes_found,
            shape_found=(len(self.files), *inner.shape_found),
            shape=(len(self.files),) + inner.shape[1:],
        )
        self.axes = AxisMap(self.metadata.axes_found, self.metadata.shape_found,
                            pages_as=pages_as, path=str(path))

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        source = _open_file(self.files[t], series=self._series, pages_as=self._pages_as)
        try:
            return source.read(0, c, z)
        finally:
            source.close()

    def close(self) -> None:
        pass


def _tiff_file(path: Path) -> tuple[tifffile.TiffFile, int]:
    """Open a TIFF file read-only; series appended one at a time are one series.

    Returns the file and the number of appended series it joined (0: none).

    ``tifffile.imwrite(..., append=True)``, as acquisition software uses it to add frames,
    writes a "shaped" series per call: read as such, series 0 would be one frame of the
    stack. When every series has the same shape and dtype, the file is reopened as a
    generic page stack (axes ``I...``, which become ``pages_as``), the stack it is.
    """
    try:
        tif = tifffile.TiffFile(path)  # opened read-only ("rb")
        n_series = len(tif.series) if tif.is_shaped else 0
        if n_series < 2 or tif.is_ome or tif.is_imagej:
            return tif, 0
        if len({(tuple(s.shape), str(s.dtype)) for s in tif.series}) > 1:
            return tif, 0
        tif.close()
        return tifffile.TiffFile(path, is_shaped=False), n_series
    except Exception as exc:
        msg = f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc})"
        raise StackError(msg) from exc


def _check_ome_pages(path: Path, tif, s, series: int) -> None:
    """Refuse an OME-TIFF whose OME-XML disagrees with its pages.

    tifffile fills planes the XML lists but the file lacks with zeros (a truncated
    acquisition), and leaves out pages the XML does not list: either way planes would be
    denoised that are not in the file, or planes of the file would not be.
    """
    missing = sum(1 for page in s.pages if page is None)
    if missing:
        msg = (
            f"{path}: corrupt or truncated OME-TIFF: its OME-XML lists {len(s.pages)} planes "
            f"for series {series}, {missing} of them are missing from the file(s)"
        )
        raise StackError(msg)
    listed = {
        page.index
        for other in tif.series
        for page in other.pages
        if page is not None and page.parent is tif
    }
    unlisted = len(tif.pages) - len(listed)
    if unlisted > 0:
        msg = (
            f"{path}: corrupt OME-TIFF: the file has {len(tif.pages)} pages, its OME-XML "
            f"lists {len(listed)} of them; {unlisted} would not be denoised"
        )
        raise StackError(msg)


def _open_file(path: Path, *, series: int, pages_as: str):
    cls = PngSource if path.name.lower().endswith(PNG_SUFFIXES) else TiffSource
    source = cls(path, series=series, pages_as=pages_as)
    source.header = _header(path, series, source)
    return source


def _header(path: Path, series: int, source=None) -> tuple[tuple[int, ...], str]:
    """Shape (as found) and dtype of one file, from its header."""
    if path.name.lower().endswith(PNG_SUFFIXES):
        props = iio.improps(path)
        return tuple(props.shape), str(props.dtype)
    if source is not None:
        s = source._tif.series[series]
        return tuple(s.shape), str(s.dtype)
    tif, _ = _tiff_file(path)
    with tif:
        try:
            s = tif.series[series]
            return tuple(s.shape), str(s.dtype)
        except Exception as exc:
            msg = f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc})"
            raise StackError(msg) from exc


def _metadata(path, fmt, axes_found, shape_found, axes: AxisMap, dtype, series, n_series, extra):
    n_channels = axes.shape5[1]
    for key in ("channel_names", "channel_colors"):
        values = extra.get(key)
        if values is not None and len(values) != n_channels:
            logger.debug("%s: ignoring %d %s for %d channels", path, len(values), key, n_channels)
            extra[key] = None
    return StackMetadata(
        path=str(path),
        format=fmt,
        axes_found=str(axes_found),
        shape=axes.shape5,
        shape_found=tuple(int(n) for n in shape_found),
        dtype=str(np.dtype(dtype)),
        pixel_sizes={a: extra.get("pixel_sizes", {}).get(a) for a in "zyx"},
        units={a: extra.get("units", {}).get(a) for a in "zyx"},
        time_step=extra.get("time_step") if axes.shape5[0] > 1 else None,
        time_unit=extra.get("time_unit") if axes.shape5[0] > 1 else None,
        channel_names=extra.get("channel_names"),
        channel_colors=extra.get("channel_colors"),
        series=series,
        n_series=n_series,
    )


def _resolution(page, tag: str) -> float | None:
    """Pixels per unit from an X/YResolution rational tag."""
    item = page.tags.get(tag)
    if item is None:
        return None
    num, den = item.value
    return num / den if num and den else None


def _imagej_metadata(tif, s) -> dict:
    ij = tif.imagej_metadata or {}
    unit = normalize_unit(ij.get("unit"))
    sizes = {}
    if unit is not None:
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            ppu = _resolution(s.keyframe, tag)
            sizes[axis] = 1.0 / ppu if ppu else None
        sizes["z"] = _positive(ij.get("spacing"))
    extra = {"pixel_sizes": sizes, "units": dict.fromkeys("zyx", unit)}
    extra["time_step"] = _positive(ij.get("finterval"))
    extra["time_unit"] = normalize_unit(ij.get("tunit", "s"), time=True)
    luts = ij.get("LUTs")
    if luts:
        extra["channel_colors"] = [_hex_color(np.asarray(lut)[:, -1]) for lut in luts]
    return extra


def _plain_metadata(s) -> dict:
    page = s.keyframe
    factor = _RESUNIT_UM.get(int(page.tags.valueof("ResolutionUnit", 1)))
    if factor is None:
        return {}
    sizes = {}
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        ppu = _resolution(page, tag)
        sizes[axis] = factor / ppu if ppu else None
    return {"pixel_sizes": sizes, "units": {"y": "micrometer", "x": "micrometer"}}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_metadata(tif, series: int, s) -> dict:
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as exc:
        logger.warning("%s: cannot parse OME-XML: %s", tif.filename, exc)
        return {}
    images = [el for el in root if _local(el.tag) == "Image"]
    named = [el for el in images if el.get("Name") == s.name]
    image = named[0] if len(named) == 1 else images[series] if series < len(images) else None
    pixels = None if image is None else next((e for e in image if _local(e.tag) == "Pixels"), None)
    if pixels is None:
        return {}
    extra: dict = {"pixel_sizes": {}, "units": {}}
    for axis in "zyx":
        size = _positive(pixels.get(f"PhysicalSize{axis.upper()}"))
        extra["pixel_sizes"][axis] = size
        extra["units"][axis] = (
            normalize_unit(pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")) if size else None
        )
    extra["time_step"] = _positive(pixels.get("TimeIncrement"))
    extra["time_unit"] = normalize_unit(pixels.get("TimeIncrementUnit", "s"), time=True)
    channels = [e for e in pixels if _local(e.tag) == "Channel"]
    if channels and all(e.get("Name") for e in channels):
        extra["channel_names"] = [e.get("Name") for e in channels]
    if channels and any(e.get("Color") for e in channels):
        colors = []
        for e in channels:
            value = e.get("Color")
            colors.append(None if value is None else f"{(int(value) & 0xFFFFFFFF) >> 8:06X}")
        extra["channel_colors"] = colors
    return extra
