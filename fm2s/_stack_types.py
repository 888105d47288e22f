"""The vocabulary of stacks, shared by :mod:`fm2s.stacks` and its readers.

Errors, plane keys, metadata and the axis mapping live here so that the readers
(:mod:`fm2s._readers`, :mod:`fm2s._ngff`) and :mod:`fm2s.stacks`, which dispatches to them,
import it and not each other.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

AXES = "tczyx"
TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")


@dataclass(frozen=True)
class InputFormat:
    """One kind of input that :func:`fm2s.stacks.open_stack` reads.

    Adding a format: a row in :data:`INPUT_FORMATS` and a reader (the
    :class:`fm2s.stacks.StackSource` interface) in :data:`fm2s.stacks.READERS`.
    """

    name: str  # the reader's key in fm2s.stacks.READERS
    suffixes: tuple[str, ...]  # name endings (lower case) that select it; () for a folder
    description: str


#: Every input format, in the order a path is matched against them.
INPUT_FORMATS = (
    InputFormat("ome-zarr", (".ome.zarr", ".zarr"),
                "OME-Zarr store, NGFF 0.4 or 0.5, level 0 (also a Zarr group of another name)"),
    InputFormat("tiff", (".ome.tiff", ".ome.tif", ".tiff", ".tif"),
                "OME-TIFF (one series at a time), ImageJ hyperstack, or plain TIFF"),
    InputFormat("png", PNG_SUFFIXES, "one plane (RGB becomes channels)"),
    InputFormat("folder", (), "a folder of TIFF or PNG files, one time point each"),
    InputFormat("czi", (".czi",), "Zeiss CZI, one scene at a time (vendor extra)"),
    InputFormat("nd2", (".nd2",), "Nikon ND2, one position at a time (vendor extra)"),
    InputFormat("lif", (".lif",), "Leica LIF, one image at a time (vendor extra)"),
    InputFormat("oib", (".oib",), "Olympus FluoView OIB (vendor extra)"),
    InputFormat("oif", (".oif",), "Olympus FluoView OIF (vendor extra)"),
)
#: Name endings of inputs, longest first (what :func:`fm2s.inputs.stack_name` strips).
STACK_SUFFIXES = tuple(sorted({s for f in INPUT_FORMATS for s in f.suffixes}, key=len,
                              reverse=True))


def input_format(path: Path) -> InputFormat | None:
    """The format of an existing input path (None: not one fm2s reads)."""
    name = path.name.lower()
    by_name = {f.name: f for f in INPUT_FORMATS}
    if path.is_dir():
        if name.endswith(".zarr") or any((path / m).exists() for m in ZARR_MARKERS):
            return by_name["ome-zarr"]
        return by_name["folder"]
    return next((f for f in INPUT_FORMATS if f.suffixes and name.endswith(f.suffixes)
                 and f.name != "ome-zarr"), None)


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
    Channel colours are ``"RRGGBB"`` hex strings and channel windows ``[start, end]``
    display ranges in pixel values, as the microscope's software showed them; either list
    holds ``None`` for a channel the file says nothing about, and is ``None`` as a whole
    when it says nothing about any.
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
    channel_windows: list[list[float] | None] | None = None
    series: int = 0
    n_series: int = 1

    def describe(self) -> list[str]:
        """What the reader found, as lines of text (for ``fm2s info``)."""
        t, c, z, y, x = self.shape
        lines = [
            f"format:    {self.format}, series {self.series} of {self.n_series}",
            f"found:     axes {self.axes_found} shape {list(self.shape_found)} {self.dtype}",
            f"planes:    {t * c * z} of {y} x {x} (t {t}, c {c}, z {z})",
        ]
        names = list(self.channel_names or [None] * c)
        colours = list(self.channel_colors or [None] * c)
        windows = list(self.channel_windows or [None] * c)
        if any(names) or any(colours) or any(windows):
            for i, (name, colour, window) in enumerate(zip(names, colours, windows, strict=False)):
                shown = [str(name) if name else f"channel {i}"]
                shown += [f"colour #{colour}"] if colour else []
                shown += [f"display {window[0]:g}-{window[1]:g}"] if window else []
                label = "channels:" if i == 0 else ""
                lines.append(f"{label:<11}{', '.join(shown)}")
        else:
            lines.append("channels:  unknown")
        sizes = [f"{a} {self.pixel_sizes[a]:.6g} {self.units.get(a) or ''}".rstrip()
                 for a in "zyx" if self.pixel_sizes.get(a)]  # fmt: skip
        lines.append(f"pixels:    {', '.join(sizes) if sizes else 'sizes unknown'}")
        if self.time_step and t > 1:
            lines.append(f"time step: {self.time_step:.6g} {self.time_unit or ''}".rstrip())
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of all fields."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["shape_found"] = list(self.shape_found)
        return out


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
        if len(shape) < 2:
            msg = (f"{path}: a {len(shape)}-D image (axes {''.join(axes)!r}, shape "
                   f"{tuple(shape)}); fm2s denoises 2-D planes (y, x)")
            raise StackError(msg)
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
