"""Readers of the microscopes' own files behind :func:`fm2s.stacks.open_stack`.

=========  ==========================  ==========================================
suffix     microscope                  read with
=========  ==========================  ==========================================
``.czi``   Zeiss (ZEN)                 ``pylibCZIrw`` pixels, ``bioio-czi`` metadata
``.nd2``   Nikon (NIS-Elements)        ``bioio-nd2`` (``nd2``)
``.lif``   Leica (LAS X)               ``bioio-lif`` (``liffile`` for the time step)
``.oib``   Olympus FluoView            ``oiffile``
``.oif``   Olympus FluoView            ``oiffile`` (the ``.oif`` file beside its
                                       ``.oif.files`` folder)
=========  ==========================  ==========================================

A scene (CZI scene, ND2 position, LIF image) is a series: ``series=N`` picks it. Mosaic
scenes are read stitched, as the vendors' software shows them. Every plane is read on its
own, so memory does not grow with the stack (an ND2 frame holds all its channels, so one
frame is read per plane there).

CZI pixels come from ``pylibCZIrw`` because ``bioio-czi`` 3.0.1 refuses, before reading a
pixel, files whose scaling it cannot parse (``DAPI_GFP.czi`` of the czitools samples: "Expected
1 distance scale for dimension 'Y'"); its metadata parsers are still used, field by field,
so that a field it cannot parse is only missing.

Channel colours (``"RRGGBB"``) come from each format's own display settings: the CZI's
``DisplaySetting`` (with its black and white points as the display window), the ND2's channel
colours, the LIF's lookup-table names and the Olympus lookup tables (their brightest entry).
A colour or window the file does not hold is ``None``; the writer then uses its defaults.

These libraries come with fm2s's ``vendor``
extra (``pip install 'fm2s[vendor]'``); without them these formats give a
:class:`StackError` that says so.
"""

from __future__ import annotations

import importlib
import logging
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from fm2s._readers import _metadata, _positive, normalize_unit
from fm2s._stack_types import AxisMap, StackError

logger = logging.getLogger(__name__)

VENDOR_FORMATS = {".czi": "czi", ".nd2": "nd2", ".lif": "lif", ".oib": "oib", ".oif": "oif"}
_NAMES = {"czi": "Zeiss CZI", "nd2": "Nikon ND2", "lif": "Leica LIF", "oib": "Olympus OIB",
          "oif": "Olympus OIF"}  # fmt: skip
_EXTRA = "install fm2s's vendor extra: pip install 'fm2s[vendor]'"


def vendor_format(path: Path) -> str | None:
    """The format name (``"czi"``, ``"nd2"``, ...) of a vendor file, or None."""
    return VENDOR_FORMATS.get(path.suffix.lower())


def open_vendor(path: Path, *, series: int, pages_as: str):
    """Open a vendor file as a source (``metadata``, ``read(t, c, z)``, ``close()``)."""
    fmt = vendor_format(path)
    if fmt in ("oib", "oif"):
        return OlympusSource(path, series=series, fmt=fmt)
    if fmt == "czi":
        return CziSource(path, series=series)
    return BioioSource(path, series=series, fmt=fmt)


def _require(module: str, path: Path, fmt: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{path}: reading {_NAMES[fmt]} files needs {module.split('.')[0]}; {_EXTRA}"
        raise StackError(msg) from exc


def _unreadable(path: Path, fmt: str, exc: BaseException) -> StackError:
    return StackError(f"{path}: not a readable {_NAMES[fmt]} file ({type(exc).__name__}: {exc})")


def _check_series(path: Path, series: int, scenes) -> None:
    if series >= len(scenes):
        listed = ", ".join(f"{i}: {name}" for i, name in enumerate(scenes))
        msg = (f"{path}: series {series} out of range; the file has {len(scenes)} "
               f"series ({listed})")
        raise StackError(msg)


def _guarded(path: Path, what: str, get):
    """A metadata field, or None (with a warning) when the reader cannot parse it."""
    try:
        return get()
    except Exception as exc:  # a missing field must not stop the pixels from being read
        logger.warning("%s: %s unknown (%s: %s)", path, what, type(exc).__name__, exc)
        return None


def _bioio_extra(path: Path, image, shape5) -> dict:
    """Channel names, pixel sizes (micrometers) and time step of a bioio image."""
    n_channels = shape5[1]
    extra: dict = {"units": {}, "pixel_sizes": {}}
    names = _guarded(path, "channel names", lambda: image.channel_names)
    if names and len(names) == n_channels:
        extra["channel_names"] = [str(n) for n in names]
    sizes = _guarded(path, "pixel sizes", lambda: image.physical_pixel_sizes)
    if sizes is not None:
        # bioio-nd2 reports a z step of 1 um for a single plane: no z step was measured
        for axis in "zyx" if shape5[2] > 1 else "yx":
            # LIF z steps can be negative (stage moving down); planes stay in file order
            value = getattr(sizes, axis.upper())
            value = _positive(abs(value)) if value is not None else None
            extra["pixel_sizes"][axis] = value
            extra["units"][axis] = "micrometer" if value else None
    interval = _guarded(path, "time interval", lambda: image.time_interval)
    if interval is not None and _positive(interval.total_seconds()):
        extra["time_step"], extra["time_unit"] = interval.total_seconds(), "second"
    return extra


class BioioSource:
    """One scene of a Nikon ND2 or Leica LIF file, through bioio's plugin."""

    def __init__(self, path: Path, *, series: int, fmt: str) -> None:
        bioio = _require("bioio", path, fmt)
        plugin = _require(f"bioio_{fmt}", path, fmt)
        self._lock = threading.Lock()  # the plugins share one file handle
        options = {"chunk_dims": ["Y", "X"]} if fmt == "lif" else {}
        try:
            plugin.Reader(path, **options)  # its own error, not BioImage's list of attempts
            self._image = bioio.BioImage(path, reader=plugin.Reader, **options)
            scenes = list(self._image.scenes)
        except Exception as exc:
            raise _unreadable(path, fmt, exc) from exc
        try:
            _check_series(path, series, scenes)
            try:
                self._image.set_scene(series)
                order = self._image.dims.order
                self._data = self._image.get_image_dask_data(order)  # mosaics stitched
            except Exception as exc:
                raise _unreadable(path, fmt, exc) from exc
            self.axes = AxisMap(order, self._data.shape, pages_as="z", path=str(path))
            extra = _bioio_extra(path, self._image, self.axes.shape5)
            if fmt == "nd2" and "time_step" not in extra:
                extra.update(_nd2_time_step(path, series))
            if fmt == "lif" and "time_step" not in extra:
                extra.update(_lif_time_step(path, scenes[series]))
            self.metadata = _metadata(path, fmt, order, self._data.shape, self.axes,
                                      self._data.dtype, series, len(scenes), extra)
            colours = (_nd2_colours if fmt == "nd2" else _lif_colours)(path, scenes[series])
            self.metadata = _with_display(path, self.metadata, colours)
        except BaseException:
            self.close()
            raise

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        with self._lock:
            plane = self._data[self.axes.select(t, c, z)].compute(scheduler="synchronous")
        return self.axes.to_yx(np.asarray(plane))

    def close(self) -> None:
        # bioio's readers open the file for each read and hold no handle to close
        self._image = self._data = None


def _nd2_time_step(path: Path, series: int) -> dict:
    """The mean frame interval of an ND2 time loop (bioio-nd2 2.6 does not report it)."""
    import nd2

    def period() -> float | None:
        with nd2.ND2File(path) as f:
            for loop in f.experiment:
                if loop.type in ("TimeLoop", "NETimeLoop"):
                    params = loop.parameters
                    periods = getattr(params, "periods", None) or [params]
                    first = periods[0]
                    ms = first.periodMs or (first.periodDiff.avg if first.periodDiff else 0)
                    return _positive(ms / 1000)
        return None

    seconds = _guarded(path, "time interval", period)
    return {"time_step": seconds, "time_unit": "second"} if seconds else {}


def _lif_time_step(path: Path, scene: str) -> dict:
    """The mean time step of a LIF image from liffile's T coordinates (bioio-lif 2.0.1 does
    not report it)."""
    import liffile

    def step() -> float | None:
        with liffile.LifFile(path) as f:
            for image in f.images:
                if image.name == scene and "T" in image.coords and len(image.coords["T"]) > 1:
                    return _positive(float(np.mean(np.diff(image.coords["T"]))))
        return None

    seconds = _guarded(path, "time interval", step)
    return {"time_step": seconds, "time_unit": "second"} if seconds else {}


class CziSource:
    """One scene of a Zeiss CZI file: pylibCZIrw reads the planes (mosaics stitched)."""

    def __init__(self, path: Path, *, series: int) -> None:
        pyczi = _require("pylibCZIrw.czi", path, "czi")
        bioio_czi = _require("bioio_czi", path, "czi")
        self._lock = threading.Lock()
        try:
            self._doc = pyczi.CziReader(str(path))
        except Exception as exc:
            raise _unreadable(path, "czi", exc) from exc
        try:
            self._open(path, series, bioio_czi)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, series: int, bioio_czi) -> None:
        doc = self._doc
        try:
            box = doc.total_bounding_box
            scenes = doc.scenes_bounding_rectangle
            pixel_types = set(doc.pixel_types.values())
        except Exception as exc:
            raise _unreadable(path, "czi", exc) from exc
        names = [f"scene {i}" for i in sorted(scenes)] or ["image"]
        _check_series(path, series, names)
        if scenes:
            self._scene = sorted(scenes)[series]
            rect = scenes[self._scene]
        else:
            self._scene = None
            rect = doc.total_bounding_rectangle
        gray = {"Gray8": "uint8", "Gray16": "uint16", "Gray32Float": "float32"}
        if len(pixel_types) != 1 or next(iter(pixel_types)) not in gray:
            msg = (f"{path}: CZI pixel type {', '.join(sorted(pixel_types))} is not supported; "
                   "fm2s reads grey images (Gray8, Gray16, Gray32Float)")
            raise StackError(msg)
        dtype = np.dtype(gray[next(iter(pixel_types))])
        sizes = {a: box[a][1] - box[a][0] if a in box else 1 for a in "TCZ"}
        shape_found = (sizes["T"], sizes["C"], sizes["Z"], rect.h, rect.w)
        self._starts = {a: box[a][0] if a in box else 0 for a in "TCZ"}
        self.axes = AxisMap("TCZYX", shape_found, pages_as="z", path=str(path))
        extra = self._metadata_fields(path, series, bioio_czi)
        self.metadata = _metadata(path, "czi", "TCZYX", shape_found, self.axes, dtype,
                                  series, len(names), extra)
        display = _guarded(path, "channel colours",
                           lambda: _czi_display(doc.raw_metadata, self._starts["C"],
                                                shape_found[1], dtype))  # fmt: skip
        self.metadata = _with_display(path, self.metadata, display)

    def _metadata_fields(self, path: Path, series: int, bioio_czi) -> dict:
        try:
            image = bioio_czi.Reader(path)
            image.set_scene(series)
        except Exception as exc:
            logger.warning("%s: metadata unknown (%s: %s)", path, type(exc).__name__, exc)
            return {}
        return _bioio_extra(path, image, self.axes.shape5)

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        plane = {"T": t + self._starts["T"], "C": c + self._starts["C"],
                 "Z": z + self._starts["Z"]}  # fmt: skip
        with self._lock:
            if self._scene is None:
                image = self._doc.read(plane=plane)
            else:
                image = self._doc.read(plane=plane, scene=self._scene)
        return np.ascontiguousarray(image[..., 0], dtype=self.metadata.dtype)

    def close(self) -> None:
        doc = getattr(self, "_doc", None)
        if doc is not None:
            doc.close()
            self._doc = None


class OlympusSource:
    """An Olympus FluoView OIB file (or OIF file with its ``.oif.files`` folder)."""

    _AXES = {"C": "C", "Z": "Z", "T": "T"}

    def __init__(self, path: Path, *, series: int, fmt: str) -> None:
        oiffile = _require("oiffile", path, fmt)
        # An OIB is one compound file whose streams share a file handle: dask's threads must
        # not seek it at once (they read another stream's bytes: "not a TIFF file").
        self._lock = threading.Lock()
        try:
            self._oif = oiffile.OifFile(path)
            sequences = self._oif.series
            main = self._oif.mainfile
        except Exception as exc:
            raise _unreadable(path, fmt, exc) from exc
        try:
            if not sequences:
                raise StackError(f"{path}: {_NAMES[fmt]} file holds no images")
            _check_series(path, series, [f"series {i}" for i in range(len(sequences))])
            self._sequence = sequences[series]
            try:
                first = self._oif.asarray(self._sequence[0])
            except Exception as exc:
                raise _unreadable(path, fmt, exc) from exc
            seq_axes, seq_shape = self._sequence.axes, tuple(self._sequence.shape)
            if first.ndim != 2:
                msg = f"{path}: plane files of {first.ndim} dimensions; expected 2-D planes"
                raise StackError(msg)
            self._files = {index: name for index, name in
                           zip(self._sequence.indices, self._sequence, strict=True)}  # fmt: skip
            axes = seq_axes + "YX"
            self.axes = AxisMap(axes, seq_shape + first.shape, pages_as="z", path=str(path))
            self._seq_axes = seq_axes
            self.metadata = _metadata(path, fmt, axes, seq_shape + first.shape, self.axes,
                                      first.dtype, series, len(sequences),
                                      _olympus_extra(main, self.axes.shape5[1]))
            colours = _guarded(path, "channel colours",
                               lambda: _olympus_colours(self._oif, self.axes.shape5[1]))
            self.metadata = _with_display(path, self.metadata, colours)
        except BaseException:
            self.close()
            raise

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        position = {"T": t, "C": c, "Z": z}
        index = tuple(position.get(a, 0) for a in self._seq_axes)
        with self._lock:
            return self._oif.asarray(self._files[index])

    def close(self) -> None:
        oif = getattr(self, "_oif", None)
        if oif is not None:
            oif.close()
            self._oif = None


def _olympus_extra(main: dict, n_channels: int) -> dict:
    """Channel names, pixel sizes and time step from an Olympus main (.oif) file."""
    reference = main.get("Reference Image Parameter", {})
    extra: dict = {"pixel_sizes": {}, "units": {}}
    for axis, key in (("x", "Width"), ("y", "Height")):
        extra["pixel_sizes"][axis] = _positive(reference.get(f"{key}ConvertValue"))
        extra["units"][axis] = normalize_unit(reference.get(f"{key}Unit"))
    for number in range(9):
        params = main.get(f"Axis {number} Parameters Common", {})
        code, step = params.get("AxisCode"), _positive(params.get("Interval"))
        if code == "Z" and step:
            extra["pixel_sizes"]["z"] = step
            extra["units"]["z"] = normalize_unit(params.get("UnitName"))
        if code == "T" and step:
            extra["time_step"] = step
            extra["time_unit"] = normalize_unit(params.get("UnitName"), time=True)
    names = [main.get(f"Channel {i} Parameters", {}).get("CH Name") for i in
             range(1, n_channels + 1)]  # fmt: skip
    if all(names):
        extra["channel_names"] = [str(n) for n in names]
    return extra


# -- channel colours and display windows -----------------------------------------------------

#: Colours of the lookup tables LAS X names (``LUTName``); another name leaves the colour unknown.
_LUT_NAMES = {"red": "FF0000", "green": "00FF00", "blue": "0000FF", "cyan": "00FFFF",
              "magenta": "FF00FF", "yellow": "FFFF00", "gray": "FFFFFF", "grey": "FFFFFF",
              "white": "FFFFFF"}  # fmt: skip


def _with_display(path: Path, meta, display):
    """`meta` with the channel colours and windows of `display`, ``(colours, windows)``.

    A list whose length is not the number of channels, or that holds nothing, is dropped (the
    file's display settings then describe other channels than the ones read).
    """
    if not display:
        return meta
    n = meta.shape[1]
    fields = {}
    for key, values in zip(("channel_colors", "channel_windows"), display, strict=True):
        if values is None or not any(v is not None for v in values):
            continue
        if len(values) != n:
            logger.debug("%s: ignoring %d %s for %d channels", path, len(values), key, n)
            continue
        fields[key] = list(values)
    return replace(meta, **fields) if fields else meta


def _hex(text: str | None) -> str | None:
    """``"RRGGBB"`` from a ``#AARRGGBB`` or ``#RRGGBB`` colour, or None."""
    digits = (text or "").strip().lstrip("#")
    if len(digits) not in (6, 8):
        return None
    try:
        int(digits, 16)
    except ValueError:
        return None
    return digits[-6:].upper()


def _czi_display(xml: str, first_channel: int, n_channels: int, dtype) -> tuple:
    """``(colours, windows)`` of a CZI's channels from its metadata XML.

    Colours and black/white points come from ``DisplaySetting`` (what ZEN shows), matched to
    the image's channels by id or else by position, the colour
    from the acquisition channel where the display setting has none. ZEN's ``Low`` and ``High``
    are fractions of the pixel type's range (0-65535 for Gray16); float images get no window.
    """
    root = ET.fromstring(xml)
    ordered = root.findall("./Metadata/DisplaySetting/Channels/Channel")
    shown = {ch.get("Id"): ch for ch in ordered}
    channels = root.findall("./Metadata/Information/Image/Dimensions/Channels/Channel")
    acquired = {ch.get("Id"): ch for ch in channels}
    # ZEN names display channels "Channel:N" as the image's channels, or by a GUID (the
    # DAPI_GFP.czi sample); then they are in the image's order when there are as many
    by_position = len(ordered) == len(channels)
    top = float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "ui" else None
    colours, windows = [], []
    for c in range(first_channel, first_channel + n_channels):
        ident = f"Channel:{c}"
        display, channel = shown.get(ident), acquired.get(ident)
        if display is None and by_position and c < len(ordered):
            display = ordered[c]
        colour = _hex(display.findtext("Color")) if display is not None else None
        if colour is None and channel is not None:
            colour = _hex(channel.findtext("Color"))
        colours.append(colour)
        window = None
        if display is not None and top is not None and display.findtext("High") is not None:
            low, high = float(display.findtext("Low") or 0.0), float(display.findtext("High"))
            if 0.0 <= low < high <= 1.0:
                window = [low * top, high * top]
        windows.append(window)
    return colours, windows


def _nd2_colours(path: Path, scene) -> tuple | None:
    """``(colours, None)`` of an ND2's channels, as NIS-Elements shows them."""
    import nd2

    def colours() -> list[str | None]:
        with nd2.ND2File(path) as f:
            found = []
            for meta in f.metadata.channels or []:
                rgb = getattr(meta.channel, "color", None)
                found.append(None if rgb is None else f"{rgb.r:02X}{rgb.g:02X}{rgb.b:02X}")
            return found

    found = _guarded(path, "channel colours", colours)
    return (found, None) if found else None


def _lif_colours(path: Path, scene: str) -> tuple | None:
    """``(colours, None)`` of a LIF image's channels from their lookup-table names."""
    import liffile

    def colours() -> list[str | None] | None:
        with liffile.LifFile(path) as f:
            for image in f.images:
                if image.name == scene:
                    return [_LUT_NAMES.get((ch.get("LUTName") or "").strip().lower())
                            for ch in image.xml_element.iter("ChannelDescription")]  # fmt: skip
        return None

    found = _guarded(path, "channel colours", colours)
    return (found, None) if found else None


_LUT_DATA = "[ColorLUTData]\r\n".encode("utf-16-le")


def _olympus_colours(oif, n_channels: int) -> tuple:
    """``(colours, None)`` from the lookup tables of an Olympus file's channels.

    Each channel's settings (``s_C001.pty``, ...) name its table (``s_LUT1.lut``); the table is
    UTF-16 text followed by one little-endian ``0x00RRGGBB`` word per grey level, and its
    brightest (last) entry is the channel's colour.
    """
    import oiffile

    files = list(oif.glob("*"))
    colours: list[str | None] = []
    for c in range(1, n_channels + 1):
        settings = next((f for f in files if f.endswith(f"_C{c:03d}.pty")), None)
        if settings is None:
            colours.append(None)
            continue
        lut = oiffile.SettingsFile(oif.open_file(settings), settings).get("LUT Parameter", {})
        name = lut.get("LUTFileName")
        table = next((f for f in files if name and f.endswith(f"_{name}.lut")), None)
        if table is None:
            colours.append(None)
            continue
        raw = oif.open_file(table).read()
        start = raw.find(_LUT_DATA)
        words = raw[start + len(_LUT_DATA):] if start >= 0 else b""
        if len(words) < 4:
            colours.append(None)
            continue
        last = int(np.frombuffer(words[: len(words) // 4 * 4], "<u4")[-1]) & 0xFFFFFF
        colours.append(f"{last:06X}")
    return colours, None
