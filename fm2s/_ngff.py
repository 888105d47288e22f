"""Read OME-Zarr (NGFF 0.4 / Zarr v2 and 0.5 / Zarr v3) images for :mod:`fm2s.stacks`.

Validates the ``multiscales`` metadata with ome-zarr-py's own axis and
coordinate-transformation checks and refuses arrays with missing chunks (which
zarr would silently read as fill values).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.axes import Axes
from ome_zarr.format import format_from_version

from fm2s._stack_types import AxisMap, StackError, StackMetadata

PROVENANCE_KEY = "fm2s"


def _ngff_attrs(group: zarr.Group) -> tuple[dict, str | None]:
    attrs = group.attrs.asdict()
    if "ome" in attrs:
        return dict(attrs["ome"]), attrs["ome"].get("version", "0.5")
    ms = attrs.get("multiscales")
    first = ms[0] if isinstance(ms, list) and ms else None
    return attrs, first.get("version") if isinstance(first, dict) else None


def open_ngff_group(path: Path, series: int):
    """Return ``(group, multiscales entry, NGFF version, attributes, number of images)``."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        msg = f"{path}: not a readable Zarr group ({type(exc).__name__}: {exc})"
        raise StackError(msg) from exc
    attrs, version = _ngff_attrs(group)
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
        if str(series) not in group:
            msg = f"{path}: series {series} out of range (no image {series!r} in the store)"
            raise StackError(msg)
        n_images = sum(1 for key in group.group_keys() if key.isdigit())
        return (*open_ngff_group(path / str(series), 0)[:4], n_images)
    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not all(isinstance(m, dict) for m in ms):
        msg = f"{path}: invalid NGFF metadata: no 'multiscales' list in the group attributes"
        raise StackError(msg)
    if series >= len(ms):
        msg = f"{path}: series {series} out of range; the store has {len(ms)} multiscales image(s)"
        raise StackError(msg)
    return group, ms[series], version, attrs, len(ms)


def _window(channel: dict) -> list[float] | None:
    """``[start, end]`` of an omero channel's display window, or None."""
    window = channel.get("window") if isinstance(channel, dict) else None
    try:
        start, end = float(window["start"]), float(window["end"])
    except (KeyError, TypeError, ValueError):
        return None
    return [start, end] if np.isfinite(start) and np.isfinite(end) and start < end else None


class NgffSource:
    """Full-resolution level of one OME-Zarr image (NGFF 0.4 or 0.5)."""

    def __init__(self, path: Path, *, series: int, pages_as: str) -> None:
        group, ms, version, attrs, n_series = open_ngff_group(path, series)
        try:
            datasets = ms["datasets"]
            array = group[datasets[0]["path"]]
            axes = ms.get("axes") or (list("tczyx") if version in ("0.1", "0.2") else None)
            if axes is None:
                raise ValueError("no 'axes'")
            fmt = format_from_version(version or "0.4")
            axes = Axes(axes, fmt=fmt).to_list(fmt)
            transforms = [d.get("coordinateTransformations") or [] for d in datasets]
            if fmt.version not in ("0.1", "0.2", "0.3"):
                fmt.validate_coordinate_transformations(len(axes), len(datasets), transforms)
        except Exception as exc:
            msg = f"{path}: invalid NGFF metadata ({type(exc).__name__}: {exc})"
            raise StackError(msg) from exc
        if not isinstance(array, zarr.Array) or array.ndim != len(axes):
            shape = getattr(array, "shape", None)
            msg = f"{path}: invalid NGFF metadata: {len(axes)} axes for an array of shape {shape}"
            raise StackError(msg)
        if array.nchunks_initialized < array.nchunks:
            msg = (
                f"{path}: array {datasets[0]['path']!r} is missing "
                f"{array.nchunks - array.nchunks_initialized} of {array.nchunks} chunks, "
                "which would read as fill values (a store written with write_empty_chunks=False "
                "must be rewritten with every chunk present)"
            )
            raise StackError(msg)
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        self.axes = AxisMap(names, array.shape, pages_as=pages_as, path=str(path))
        self._array = array
        scale = np.ones(len(names))
        for t in [*transforms[0], *ms.get("coordinateTransformations", [])]:
            if t.get("type") == "scale" and "scale" in t:
                scale = scale * np.asarray(t["scale"], dtype=float)
        units = {a["name"]: a.get("unit") for a in axes if isinstance(a, dict)}
        where = self.axes.where
        channels = (attrs.get("omero") or {}).get("channels") or []
        self.metadata = StackMetadata(
            path=str(path),
            format="ome-zarr",
            axes_found="".join(names) if all(len(n) == 1 for n in names) else ",".join(names),
            shape=self.axes.shape5,
            dtype=str(array.dtype),
            shape_found=tuple(array.shape),
            pixel_sizes={a: float(scale[where[a]]) if a in where else None for a in "zyx"},
            units={a: units.get(names[where[a]]) if a in where else None for a in "zyx"},
            time_step=float(scale[where["t"]]) if "t" in where else None,
            time_unit=units.get(names[where["t"]]) if "t" in where else None,
            channel_names=[str(c.get("label", "")) for c in channels] or None,
            channel_colors=[c.get("color") for c in channels] or None,
            channel_windows=[_window(c) for c in channels] or None,
            series=series,
            n_series=n_series,
        )
        if len(channels) != self.axes.shape5[1]:
            self.metadata = replace(self.metadata, channel_names=None, channel_colors=None,
                                    channel_windows=None)

    def read(self, t: int, c: int, z: int) -> np.ndarray:
        return self.axes.to_yx(np.asarray(self._array[self.axes.select(t, c, z)]))

    def close(self) -> None:
        pass
