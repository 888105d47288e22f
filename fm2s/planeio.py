"""Reading and writing single images (PNG, TIFF) for the command line, atomically.

Stacks in other formats (OME-TIFF series, ImageJ hyperstacks, OME-Zarr) live in
:mod:`fm2s.stacks`; this module handles the simple files that ``fm2s denoise`` and ``fm2s eval``
take one at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import tifffile

from fm2s.outputs import atomic_output

__all__ = ["IMAGE_SUFFIXES", "ImageFileError", "ImageWriter", "read_image", "write_image"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


class ImageFileError(ValueError):
    """An image file that cannot be read or written; the message names the file."""


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        expected = ", ".join(IMAGE_SUFFIXES)
        msg = f"{path}: unsupported file type {path.suffix!r}; expected one of {expected}"
        raise ImageFileError(msg)
    return suffix


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG or TIFF file as stored (no rescaling, no conversion to 8 bits).

    Returns
    -------
    ndarray
        (Y, X) for a gray plane, (Y, X, S) for RGB(A) samples, (N, ..., Y, X) for a TIFF stack.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ImageFileError
        Unsupported extension, or a corrupt or truncated file.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        msg = f"{path}: no such file"
        raise FileNotFoundError(msg)
    try:
        image = np.asarray(iio.imread(path) if suffix == ".png" else tifffile.imread(path))
    except Exception as error:  # every reader has its own exception types
        msg = f"{path}: cannot read image ({type(error).__name__}: {error})"
        raise ImageFileError(msg) from error
    if image.ndim < 2 or image.size == 0:  # tifffile returns an empty array for some damage
        msg = f"{path}: cannot read image (no pixel data: corrupt or truncated file)"
        raise ImageFileError(msg)
    return image


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    overwrite: bool = False,
    metadata: Any = None,
) -> Path:
    """Write ``image`` to a PNG or TIFF file atomically (written aside, then renamed).

    PNG holds 8- or 16-bit gray or RGB(A) planes; TIFF holds any dtype and stacks.

    Parameters
    ----------
    metadata : StackMetadata, optional
        The input's metadata (:attr:`fm2s.stacks.Stack.metadata`), for a TIFF output: an
        ImageJ hyperstack is written back as one, an OME-TIFF as an OME-TIFF, each with the
        input's axes, pixel sizes, units, time step (and OME channel names); a plain TIFF
        keeps its pixel size in its resolution tags.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".png" and (image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3)):
        msg = f"{path}: PNG holds 8/16-bit planes only, got {image.dtype} {image.shape}; use .tif"
        raise ImageFileError(msg)
    with atomic_output(path, overwrite=overwrite) as tmp:
        if suffix == ".png":
            iio.imwrite(tmp, image, extension=".png")
        else:
            rgb = image.ndim == 3 and image.shape[-1] in (3, 4) and metadata is None
            options = tiff_options(metadata) if metadata is not None else {}
            options.setdefault("photometric", "rgb" if rgb else "minisblack")
            tifffile.imwrite(tmp, image, **options)
    return path


_IMAGEJ_UNITS = {"micrometer": "micron", "nanometer": "nm", "millimeter": "mm",
                 "centimeter": "cm", "meter": "m", "angstrom": "angstrom"}  # fmt: skip
_IMAGEJ_TIME_UNITS = {"second": "sec", "millisecond": "msec", "microsecond": "usec",
                      "minute": "min", "hour": "hour"}  # fmt: skip
_MICROMETERS = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4,
                "meter": 1e6, "angstrom": 1e-4}  # fmt: skip


def tiff_options(meta: Any) -> dict[str, Any]:
    """``tifffile.imwrite`` options that keep what the input TIFF carried (see
    :func:`write_image`)."""
    sizes, units = meta.pixel_sizes or {}, meta.units or {}
    samples = "S" in meta.axes_found
    options: dict[str, Any] = {"photometric": "rgb" if samples else "minisblack"}
    if meta.format == "imagej-tiff":
        unit = units.get("x")
        info: dict[str, Any] = {"axes": meta.axes_found}
        if unit:
            info["unit"] = _IMAGEJ_UNITS.get(unit, unit)
        if sizes.get("z"):
            info["spacing"] = sizes["z"]
        if meta.time_step:
            info["finterval"] = meta.time_step
            info["tunit"] = _IMAGEJ_TIME_UNITS.get(meta.time_unit, meta.time_unit or "sec")
        options.update(imagej=True, metadata=info)
        if sizes.get("x") and sizes.get("y"):
            options["resolution"] = (1 / sizes["x"], 1 / sizes["y"])
    elif meta.format == "ome-tiff":
        info = {"axes": meta.axes_found}
        for axis in "xyz":
            if sizes.get(axis):
                info[f"PhysicalSize{axis.upper()}"] = sizes[axis]
                if units.get(axis):
                    info[f"PhysicalSize{axis.upper()}Unit"] = _OME_UNITS.get(units[axis],
                                                                             units[axis])
        if meta.time_step:
            info["TimeIncrement"] = meta.time_step
            info["TimeIncrementUnit"] = _OME_TIME_UNITS.get(meta.time_unit, "s")
        if meta.channel_names:
            info["Channel"] = {"Name": list(meta.channel_names)}
        options.update(ome=True, metadata=info)
    else:
        um = {a: (sizes.get(a) or 0) * _MICROMETERS.get(units.get(a) or "", 0) for a in "xy"}
        if um["x"] and um["y"]:  # per centimetre, TIFF's own unit
            options.update(resolution=(1e4 / um["x"], 1e4 / um["y"]), resolutionunit="CENTIMETER")
    return options


_OME_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm",
              "meter": "m", "angstrom": "Å"}  # fmt: skip
_OME_TIME_UNITS = {"second": "s", "millisecond": "ms", "microsecond": "µs", "minute": "min",
                   "hour": "h"}  # fmt: skip


class ImageWriter:
    """A stack's planes into one PNG or TIFF of the input's own array shape and axes
    (:class:`fm2s.outputs.PlaneWriter`; planes are held in memory, the file is written at
    :meth:`commit`, atomically, by :func:`write_image`).

    Parameters
    ----------
    path : path
        ``.png``, ``.tif`` or ``.tiff``.
    metadata : StackMetadata
        The input's; a TIFF input's kind, axes and pixel sizes are written back.
    axes : AxisMap
        The input's axes (:attr:`fm2s.stacks.Stack.axes`): where plane ``(t, c, z)`` goes.
    overwrite : bool
        Replace an existing file.
    """

    keeps_provenance = False

    def __init__(self, path: str | os.PathLike, metadata: Any, axes: Any, *,
                 overwrite: bool = False) -> None:
        self.path, self.metadata, self.axes = Path(path), metadata, axes
        self.overwrite = overwrite
        self._image = np.empty(metadata.shape_found, dtype=metadata.dtype)
        self._written: set[tuple[int, int, int]] = set()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # nothing is on disk before commit

    def write_plane(self, key: tuple[int, int, int], plane: np.ndarray) -> None:
        self._image[self.axes.select(*key)] = self.axes.to_yx(plane)  # to_yx is its own inverse
        self._written.add(tuple(key))

    def commit(self, record: Any = None) -> Path:
        """Write the image (`record` is not kept: use an OME-Zarr output for provenance)."""
        planes = int(np.prod(self.metadata.shape[:3]))
        if len(self._written) != planes:
            msg = f"{self.path}: {planes - len(self._written)} of {planes} planes were not written"
            raise RuntimeError(msg)
        tiff_input = self.metadata.format in ("tiff", "imagej-tiff", "ome-tiff")
        return write_image(self.path, self._image, overwrite=self.overwrite,
                           metadata=self.metadata if tiff_input else None)
