"""Reading and writing single images (PNG, TIFF) for the command line, atomically.

Stacks in other formats (OME-TIFF series, ImageJ hyperstacks, OME-Zarr) live in
:mod:`fm2s.stacks`; this module handles the simple files that ``fm2s denoise`` and ``fm2s eval``
take one at a time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

__all__ = ["ImageFileError", "read_image", "write_image", "IMAGE_SUFFIXES"]

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


def write_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write ``image`` to a PNG or TIFF file atomically (written aside, then renamed).

    PNG holds 8- or 16-bit gray or RGB(A) planes; TIFF holds any dtype and stacks.
    """
    path = Path(path)
    suffix = _suffix(path)
    if path.exists() and not overwrite:
        msg = f"{path}: output exists (use --overwrite to replace it)"
        raise ImageFileError(msg)
    if suffix == ".png" and (image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3)):
        msg = f"{path}: PNG holds 8/16-bit planes only, got {image.dtype} {image.shape}; use .tif"
        raise ImageFileError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        if suffix == ".png":
            iio.imwrite(temp, image, extension=".png")
        else:
            rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
            tifffile.imwrite(temp, image, photometric="rgb" if rgb else "minisblack")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
