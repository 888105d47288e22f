"""QC pages: one self-contained HTML file per denoising run or evaluation.

:func:`write_run_report` shows, for each denoised stack (an fm2s OME-Zarr store and the input
it was made from): raw and denoised side by side (a middle plane, a zoomed crop around the
brightest region, a maximum projection), an intensity profile through that region, the noise
level per plane before and after (:func:`noise_sigma`), the denoising seconds per plane
(the store's provenance, ``plane_seconds``) and the settings and provenance as tables.
:func:`write_eval_report` shows a PSNR/SSIM table per image and per group, and noisy /
denoised / ground-truth crops (``fm2s eval --html``).

Pictures are made with matplotlib's Agg canvas and embedded as base64 PNGs (``data:`` URIs);
the page has no scripts, no external links and no other files, so it can be mailed, archived
or opened from a Snakemake report. Stacks are read lazily, a plane at a time: the maximum
projection is accumulated plane by plane and the noise estimate runs on at most
`noise_planes` evenly spaced planes, so memory stays a few planes whatever the stack size.

Both functions know nothing of Snakemake; ``workflow/scripts/qc_report.py`` calls
:func:`write_run_report` for the workflow's ``qc_report`` rule.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage

from fm2s import __version__
from fm2s._provenance import (
    NOISE_MODEL_COLUMNS,
    noise_model_rows,
    provenance,
    read_variance_note,
)
from fm2s.ome import open_ome_zarr
from fm2s.outputs import atomic_output
from fm2s.stacks import open_stack

__all__ = [
    "NOISE_ESTIMATOR",
    "noise_sigma",
    "pick_region",
    "plot_before_after",
    "write_eval_report",
    "write_run_report",
]

logger = logging.getLogger(__name__)

#: How :func:`noise_sigma` works, as printed on every page.
NOISE_ESTIMATOR = (
    "skimage.restoration.estimate_sigma: the robust wavelet estimator of Donoho and Johnstone "
    "(1994), median(|d|) / 0.6745 of the finest diagonal db2 wavelet coefficients d, computed "
    "on each plane in the data's own intensity units. It assumes noise of constant variance; "
    "for Poisson-Gaussian noise it gives a typical standard deviation over the plane."
)
#: Planes shown per stack at most (channels beyond this are left out, and the page says so).
MAX_CHANNELS = 6
RAW, DENOISED, TRUTH = "#d62728", "#1f77b4", "#2ca02c"  # line colours, matplotlib's defaults
PANEL = 2.3  # inches per image panel; at DPI, about 200 pixels
DPI = 90


# -- measurements ------------------------------------------------------------------------------


def noise_sigma(plane: np.ndarray) -> float:
    """Standard deviation of the noise of a plane, in its intensity units.

    Parameters
    ----------
    plane : ndarray (Y, X)
        Any real dtype; integers are *not* rescaled to [0, 1].

    Returns
    -------
    float
        ``skimage.restoration.estimate_sigma`` of the plane as float64 (see
        :data:`NOISE_ESTIMATOR`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(noise_sigma(100 + 5 * rng.standard_normal((128, 128))))
    5
    """
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(np.asarray(plane, dtype=np.float64), channel_axis=None))


def pick_region(plane: np.ndarray, size: int) -> tuple[slice, slice]:
    """A `size` x `size` window (clipped to the plane) around the plane's brightest region.

    The brightest region is the maximum of the plane smoothed with a Gaussian of sigma
    ``size / 8``, so a single hot pixel does not decide it.

    Returns
    -------
    (slice, slice)
        Rows and columns of the window.

    Examples
    --------
    >>> plane = np.zeros((64, 64)); plane[40:44, 10:14] = 1
    >>> pick_region(plane, 16)
    (slice(33, 49, None), slice(3, 19, None))
    """
    height, width = plane.shape
    smooth = ndimage.gaussian_filter(np.asarray(plane, dtype=np.float32), max(size / 8, 1.0))
    cy, cx = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    h, w = min(size, height), min(size, width)
    y0 = int(np.clip(cy - h // 2, 0, height - h))
    x0 = int(np.clip(cx - w // 2, 0, width - w))
    return slice(y0, y0 + h), slice(x0, x0 + w)


def _limits(plane: np.ndarray) -> tuple[float, float]:
    """Display range: the 0.5 and 99.8 percentiles (outliers would wash out the rest)."""
    low, high = np.percentile(plane, (0.5, 99.8))
    return float(low), float(max(high, low + 1e-9))


def _sample(count: int, at_most: int) -> list[int]:
    """At most `at_most` evenly spaced indices of ``range(count)``, first and last included."""
    if count <= at_most:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, at_most)})


# -- HTML --------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td code, li code, p code { font-size: 12px; }
img { max-width: 100%; height: auto; display: block; margin: 0.3em 0; }
figure { margin: 0.8em 0; } figcaption, .note { color: #555; font-size: 13px; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 12px; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png_bytes(fig: Figure, dpi: int) -> bytes:
    """Render a figure with Agg as a 256-colour PNG.

    Noisy images barely compress; the grey colormap has 256 levels anyway, so a median-cut
    palette of 256 colours keeps them as they are and halves the file (an octree palette
    would band the smooth denoised images).
    """
    from PIL import Image

    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot would pick
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _figure_html(fig: Figure, alt: str, caption: str = "") -> str:
    """A figure as an ``<img>`` with its PNG embedded as a base64 ``data:`` URI."""
    data = base64.b64encode(_png_bytes(fig, DPI)).decode("ascii")
    text = f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'
    if caption:
        text += f"<figcaption>{caption}</figcaption>"
    return f"<figure>{text}</figure>"


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{_esc(value)}</td>"
    if isinstance(value, int | np.integer):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float | np.floating):
        text = f"{value:.3f}" if abs(value) < 1.5 else f"{value:.2f}"
        return f'<td class="num">{text}</td>'
    return f"<td>{_esc(value)}</td>"


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``("a.b", value)`` rows; lists shown as JSON."""
    rows: list[tuple[str, Any]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, list | tuple | Mapping):
            rows.append((name, json.dumps(value)))
        else:
            rows.append((name, value))
    return rows


def _page(title: str, intro: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: a contents list linking to each ``(id, heading, body)`` section."""

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#{i}">{_esc(h)}</a></li>' for i, h, _ in sections)
    body = "".join(f'<section id="{i}"><h2>{_esc(h)}</h2>{b}</section>' for i, h, b in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head>\n<body><h1>{_esc(title)}</h1>{intro}"
        f"<nav><ul>{toc}</ul></nav>{body}"
        f'<p class="note">Made by fm2s {_esc(__version__)} on {now}.</p></body></html>\n'
    )


def _write_atomically(path: Path, text: str) -> Path:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# -- figures -----------------------------------------------------------------------------------


def _show(ax, image, limits, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _images_figure(raw, denoised, raw_projection, denoised_projection, *, zoom: int,
                   projection_label: str | None) -> Figure:
    """Raw (top) and denoised (bottom): plane, crop with the profile line, projection; and the
    profile along that line (right)."""
    rows, cols = pick_region(denoised, zoom)
    smooth = ndimage.gaussian_filter(denoised[rows, cols].astype(np.float32), 1.0)
    line = rows.start + int(np.unravel_index(int(np.argmax(smooth)), smooth.shape)[0])
    limits = _limits(denoised)
    images = 3 if projection_label else 2
    fig = Figure(figsize=(PANEL * (images + 1.4), PANEL * 2), layout="constrained")
    grid = fig.add_gridspec(2, images + 1, width_ratios=[1] * images + [1.4])
    for r, (label, plane, projection) in enumerate(
        (("raw", raw, raw_projection), ("denoised", denoised, denoised_projection))
    ):
        ax = fig.add_subplot(grid[r, 0])
        _show(ax, plane, limits, f"{label}: middle plane")
        ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start,
                               rows.stop - rows.start, fill=False, color="#ffbf00", lw=1))
        ax = fig.add_subplot(grid[r, 1])
        _show(ax, plane[rows, cols], limits, f"{label}: zoom")
        ax.axhline(line - rows.start, color=RAW if r == 0 else DENOISED, lw=0.8, alpha=0.8)
        if projection_label:
            _show(fig.add_subplot(grid[r, 2]), projection, _limits(denoised_projection),
                  f"{label}: {projection_label}")
    ax = fig.add_subplot(grid[:, images])
    x = np.arange(cols.start, cols.stop)
    ax.plot(x, raw[line, cols], color=RAW, lw=0.9, label="raw")
    ax.plot(x, denoised[line, cols], color=DENOISED, lw=1.4, label="denoised")
    ax.set_title(f"profile along row y = {line}", fontsize=9)
    ax.set_xlabel("x (pixels)", fontsize=8)
    ax.set_ylabel("intensity", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    return fig


def _series_figure(x, series: Mapping[str, tuple[Sequence[float], str]], *, ylabel: str,
                   title: str, xlabel: str, log: bool = False, bars: bool = False) -> Figure:
    fig = Figure(figsize=(7.5, 2.6), layout="constrained")
    ax = fig.add_subplot()
    for label, (values, color) in series.items():
        if bars:
            ax.bar(x, values, color=color, width=0.8, label=label)
        else:  # markers only while they stay apart
            ax.plot(x, values, "o-" if len(x) <= 200 else "-", ms=3, lw=1, color=color,
                    label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


def plot_before_after(raw: np.ndarray, denoised: np.ndarray, path: str | os.PathLike, *,
                      zoom: int = 64, title: str = "", dpi: int = 100) -> Path:
    """Write a PNG of a raw and a denoised plane side by side, with a zoomed crop of each.

    The crop is :func:`pick_region` of the denoised plane; both planes share the display
    range of the denoised one. Used for the README picture (``tools/demo_picture.py``).
    """
    rows, cols = pick_region(denoised, zoom)
    limits = _limits(denoised)
    fig = Figure(figsize=(8, 2.3), layout="constrained")
    axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1])
    for ax, image, label in zip(
        axes, (raw, raw[rows, cols], denoised, denoised[rows, cols]),
        ("raw", "raw (zoom)", "denoised (fm2s)", "denoised (zoom)"), strict=True,
    ):
        _show(ax, image, limits, label)
    for ax in (axes[0], axes[2]):
        ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), cols.stop - cols.start,
                               rows.stop - rows.start, fill=False, color="#ffbf00", lw=1))
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(fig, dpi))
    return path


# -- run report ------------------------------------------------------------------------------


def _projection(read, keys: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Maximum over the planes `keys`, read one at a time by ``read(key)``."""
    out = None
    for key in keys:
        plane = read(key)
        out = plane.copy() if out is None else np.maximum(out, plane, out=out)
    return out


def _stack_section(name: str, source: Path, store: Path, *, series: int, pages_as: str,
                   noise_planes: int, zoom: int,
                   job_benchmarks: Sequence[Path]) -> tuple[str, dict[str, Any]]:

    record = provenance(store)
    levels, _ = open_ome_zarr(store)
    result = levels[0]
    parts = []
    with open_stack(source, series=series, pages_as=pages_as) as stack:
        meta = stack.metadata
        if tuple(meta.shape) != tuple(result.shape):
            msg = (f"{store}: shape {tuple(result.shape)} differs from its input {source} "
                   f"{tuple(meta.shape)}; was the input replaced?")
            raise ValueError(msg)

        def raw(key):
            return stack.read_plane(key)

        def denoised(key):
            return np.asarray(result[tuple(key)].compute())

        n_t, n_c, n_z = meta.shape[:3]
        t, z = n_t // 2, n_z // 2
        names = list(meta.channel_names or [])
        names += [f"channel {c}" for c in range(len(names), n_c)]
        # The projection runs over z at the middle time point; a 2D time series is projected
        # over t instead, and a single plane has none.
        if n_z > 1:
            label, where = f"max over z ({n_z} planes)", f" at t = {t}"
        elif n_t > 1:
            label, where = f"max over t ({n_t} time points)", ""
        else:
            label, where = None, ""
        parts.append(f"<h3>Images</h3><p>Middle plane t = {t}, z = {z} of each channel, raw "
                     f"(top) and denoised (bottom), on the denoised plane's display range "
                     f"(0.5-99.8 percentiles); the zoom is the {zoom} x {zoom} window around "
                     "the brightest region (yellow box) and the profile runs along the "
                     "marked row through it"
                     + (f"; the projection is the {label}{where}." if label else ".")
                     + "</p>")
        for c in range(min(n_c, MAX_CHANNELS)):
            along = [(t, c, k) for k in range(n_z)] if n_z > 1 else [(k, c, 0) for k in range(n_t)]
            fig = _images_figure(
                raw((t, c, z)), denoised((t, c, z)),
                _projection(raw, along) if label else None,
                _projection(denoised, along) if label else None,
                zoom=zoom, projection_label=label,
            )  # fmt: skip
            parts.append(_figure_html(fig, f"{name} channel {c}: raw and denoised",
                                      f"Channel {c} ({_esc(names[c])})."))
        if n_c > MAX_CHANNELS:
            parts.append(f'<p class="note">Channels {MAX_CHANNELS}-{n_c - 1} not shown.</p>')

        keys = stack.plane_keys()
        picked = [keys[i] for i in _sample(len(keys), noise_planes)]
        before = [noise_sigma(raw(k)) for k in picked]
        after = [noise_sigma(denoised(k)) for k in picked]
    position = {k: i for i, k in enumerate(keys)}
    index = [position[k] for k in picked]
    ratio = np.median(before) / max(np.median(after), 1e-12)
    fig = _series_figure(index, {"raw": (before, RAW), "denoised": (after, DENOISED)},
                         ylabel="noise sigma (intensity units)", log=True,
                         title="estimated noise per plane", xlabel="plane index (t, c, z order)")
    parts.append(
        "<h3>Noise level</h3>"
        + _figure_html(fig, f"{name}: noise per plane",
                       f"{len(picked)} of {len(keys)} planes"
                       + (" (evenly spaced)" if len(picked) < len(keys) else "")
                       + f"; median sigma {np.median(before):.4g} raw, {np.median(after):.4g} "
                       f"denoised ({ratio:.1f} x lower).")
        + f'<p class="note">Estimator: {_esc(NOISE_ESTIMATOR)}</p>'
    )

    seconds = record.get("plane_seconds") or {}
    times = [seconds.get(k.label) for k in keys]
    parts.append("<h3>Denoise time</h3>")
    if all(v is not None for v in times) and times:
        fig = _series_figure(list(range(len(keys))), {"seconds": (times, DENOISED)},
                             ylabel="seconds", title="denoising seconds per plane",
                             xlabel="plane index (t, c, z order)", bars=len(times) <= 200)
        parts.append(_figure_html(
            fig, f"{name}: seconds per plane",
            f"{len(times)} planes on {_esc(record.get('device'))}: {sum(times):.1f} s in all, "
            f"median {np.median(times):.2f} s, max {max(times):.2f} s per plane (training and "
            "inference of each plane, from the store's provenance, plane_seconds).",
        ))
    else:
        parts.append('<p class="note">The store\'s provenance has no time for some planes.</p>')
    if job_benchmarks:
        parts.append(_benchmark_table(job_benchmarks))

    parts.append(_networks_table(record))
    settings = record.get("settings") or {}
    # Per-plane records stay in the store (fm2s info, provenance()); the page summarises them.
    shown = {k: v for k, v in record.items()
             if k not in ("settings", "plane_seconds", "libraries", "workflow", "networks")}
    if "estimate" in shown:
        shown["estimate"] = {k: v for k, v in shown["estimate"].items()
                             if k not in ("planes", "channels")}
    shown["input"] = {k: v for k, v in (shown.get("input") or {}).items() if k != "metadata"}
    libraries = ", ".join(f"{k} {v}" for k, v in (record.get("libraries") or {}).items() if v)
    flow = dict(record.get("workflow") or {})
    config = flow.pop("config", None)
    channels = (record.get("estimate") or {}).get("channels") or {}
    notes = [read_variance_note(segment) for entry in channels.values()
             for segment in entry.get("segments") or []]
    notes = sorted({n for n in notes if n})
    if channels:
        parts.append("<h3>Noise model</h3><p>One model per channel, fitted to the pooled "
                     "evidence of its planes; a new row starts where the noise changed.</p>"
                     + _table(noise_model_rows(channels), NOISE_MODEL_COLUMNS))
    parts.append(
        "<h3>Settings and provenance</h3>"
        + "".join(f'<p class="note">{_esc(n)}.</p>' for n in notes)
        + _table(sorted(settings.items()), ["setting", "value"])
        + _table([*_flatten(shown), ("libraries", libraries), *_flatten(flow, "workflow.")],
                 ["provenance", "value"])
        + (f"<details><summary>workflow config</summary><pre>"
           f"{_esc(json.dumps(config, indent=2))}</pre></details>" if config else "")
    )
    summary = {"name": name, "shape": "x".join(map(str, meta.shape)), "dtype": meta.dtype,
               "planes": len(keys), "sigma_raw": float(np.median(before)),
               "sigma_denoised": float(np.median(after)),
               "seconds": float(sum(v or 0 for v in times))}
    head = (f"<p>Input <code>{_esc(source)}</code> ({_esc(meta.format)}, t, c, z, y, x = "
            f"{_esc(summary['shape'])}, {_esc(meta.dtype)}); output <code>{_esc(store)}</code>."
            "</p>")
    return head + "".join(parts), summary


def network_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    """One row per network of a store's provenance: id, kind, planes, first and last plane,
    blend weights of its planes (``auto``), digest."""
    planes = (record.get("estimate") or {}).get("planes") or {}
    rows = []
    for name, entry in (record.get("networks") or {}).items():
        labels = entry.get("planes") or []
        blends = [planes[p]["blend"] for p in labels
                  if p in planes and planes[p].get("blend") is not None]
        kind = "shared" if len(labels) > 1 or name.startswith("group-") else "own"
        rows.append([name, kind, len(labels), labels[0] if labels else "",
                     labels[-1] if labels else "",
                     f"{min(blends):.2f}-{max(blends):.2f}" if blends else "",
                     (entry.get("digest") or "")[:12]])
    return rows


def _networks_table(record: Mapping[str, Any]) -> str:
    rows = network_rows(record)
    if not rows:
        return ""
    own = [r for r in rows if r[1] == "own"]
    note = (f"<p>{len(rows)} network(s) denoised {sum(r[2] for r in rows)} planes; "
            f"{len(own)} plane(s) had a network of their own (their noise differed from their "
            "channel's, or per-plane training). Per-plane records: <code>fm2s info</code> and "
            "the store's provenance.</p>")
    shown = rows if len(rows) <= 60 else [*own[:30], *[r for r in rows if r[1] == "shared"][:30]]
    return ("<h3>Networks</h3>" + note
            + _table(shown, ["network", "kind", "planes", "first t,c,z", "last t,c,z",
                             "blend weights", "digest"]))


def _benchmark_table(paths: Sequence[Path]) -> str:
    """Snakemake ``benchmark:`` files of the denoise jobs: wall seconds and peak RSS."""
    import csv

    rows = []
    for path in sorted(paths):
        with open(path, newline="") as fh:
            for entry in csv.DictReader(fh, delimiter="\t"):
                rows.append((Path(path).stem, float(entry["s"]), entry.get("max_rss", "NA")))
    return ("<p>Training and denoise jobs (Snakemake benchmark files: wall seconds of the whole "
            "job, with "
            "start-up, reading and writing; peak resident memory in MB):</p>"
            + _table(rows, ["job", "seconds", "max RSS (MB)"]))


def write_run_report(
    output: str | os.PathLike,
    stores: Mapping[str, str | os.PathLike],
    *,
    sources: Mapping[str, str | os.PathLike] | None = None,
    series: int = 0,
    pages_as: str = "z",
    noise_planes: int = 48,
    zoom: int = 64,
    job_benchmarks: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    title: str = "fm2s QC report",
) -> Path:
    """Write the QC page of a run: one section per denoised stack.

    Parameters
    ----------
    output : path
        The HTML file to write (atomically: under a temporary name, then renamed).
    stores : mapping of str to path
        Name -> fm2s OME-Zarr store (with provenance), in page order.
    sources : mapping of str to path, optional
        Name -> the raw input of that store; by default the input path in its provenance.
    series, pages_as
        How the inputs are read (:func:`fm2s.stacks.open_stack`).
    noise_planes : int
        Planes whose noise is estimated, at most (evenly spaced over ``(t, c, z)``).
    zoom : int
        Side of the zoomed crop, in pixels.
    job_benchmarks : mapping of str to list of path, optional
        Name -> Snakemake benchmark files of its denoise jobs, tabulated when given.
    title : str
        Page title.

    Returns
    -------
    Path
        `output`.

    Raises
    ------
    StackError
        An input or store that cannot be read (the message names it).
    ValueError
        A store whose shape differs from its input's.
    """

    if noise_planes < 1 or zoom < 4:
        msg = f"noise_planes must be >= 1 and zoom >= 4, got {noise_planes!r} and {zoom!r}"
        raise ValueError(msg)
    sections, summaries = [], []
    for number, (name, store) in enumerate(stores.items()):
        store = Path(store)
        source = Path(sources[name] if sources else provenance(store)["input"]["path"])
        if not source.exists():
            # A nightly run's input moved or deleted after its store was made: the store
            # stands, and the page says why it shows no pictures of it.
            logger.warning("QC of %s: its input %s no longer exists; no pictures", name, source)
            sections.append((f"stack-{number}", name, (
                f'<p class="note">The input <code>{_esc(source)}</code> no longer exists (moved '
                f"or deleted after it was denoised), so there is nothing to compare the store "
                f"<code>{_esc(store)}</code> with; <code>fm2s info</code> describes the store."
                "</p>")))
            continue
        logger.info("QC of %s: %s -> %s", name, source, store)
        body, summary = _stack_section(
            name, source, store, series=series, pages_as=pages_as, noise_planes=noise_planes,
            zoom=zoom, job_benchmarks=[Path(p) for p in (job_benchmarks or {}).get(name, [])],
        )  # fmt: skip
        sections.append((f"stack-{number}", name, body))
        summaries.append(summary)
    overview = _table(
        [[s["name"], s["shape"], s["dtype"], s["planes"], s["sigma_raw"], s["sigma_denoised"],
          s["seconds"]] for s in summaries],
        ["stack", "shape (t, c, z, y, x)", "dtype", "planes", "median noise sigma, raw",
         "median noise sigma, denoised", "denoising seconds"],
    )  # fmt: skip
    intro = (f"<p>{len(summaries)} stack(s) denoised with FM2S (arXiv:2412.10031). Noise "
             f"sigma: {_esc(NOISE_ESTIMATOR.split(':')[0])}, median over the sampled planes, "
             f"in intensity units.</p>{overview}")
    return _write_atomically(Path(output), _page(title, intro, sections))


# -- eval report -----------------------------------------------------------------------------

EVAL_COLUMNS = ("psnr_noisy", "psnr", "ssim_noisy", "ssim", "seconds")
ROWS_PER_FIGURE = 8


def _crops_figure(crops: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                  scores: Mapping[str, Mapping[str, Any]]) -> Figure:
    fig = Figure(figsize=(3 * 1.9, len(crops) * 1.95), layout="constrained")
    axes = fig.subplots(len(crops), 3, squeeze=False)
    for row, (name, noisy, denoised, truth) in zip(axes, crops, strict=True):
        limits = _limits(truth)
        score = scores.get(name, {})
        labels = (f"noisy {score.get('psnr_noisy', float('nan')):.2f} dB",
                  f"denoised {score.get('psnr', float('nan')):.2f} dB", "ground truth")
        for ax, image, label in zip(row, (noisy, denoised, truth), labels, strict=True):
            _show(ax, image, limits, label)
        row[0].set_ylabel(name, fontsize=7)
    return fig


def write_eval_report(
    output: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    crops: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    *,
    title: str = "fm2s evaluation",
    description: str = "",
) -> Path:
    """Write the page of an evaluation against ground truth (``fm2s eval --html``).

    Parameters
    ----------
    output : path
        The HTML file to write (atomically).
    rows : sequence of mapping
        One per image: ``image``, ``group``, ``preset``, ``recipe`` and the metrics
        ``psnr_noisy``, ``psnr``, ``ssim_noisy``, ``ssim``, ``seconds``.
    summary : sequence of mapping
        One per group (and ``"all"``): ``group``, ``images`` and the mean of each metric.
    crops : sequence of (name, noisy, denoised, truth)
        The same crop of each image (e.g. ``pick_region(truth, 128)``), shown in a grid, a
        figure per group of at most 8 images.
    title, description : str
        Page title, and a paragraph (HTML-escaped) saying what was evaluated.
    """
    scores = {r["image"]: r for r in rows}
    image_table = _table([[r["image"], r["group"], r["preset"], r["recipe"],
                           *(r[m] for m in EVAL_COLUMNS)] for r in rows],
                         ["image", "group", "preset", "recipe", *EVAL_COLUMNS])
    group_table = _table([[s["group"], s["images"], *(s[m] for m in EVAL_COLUMNS)]
                          for s in summary], ["group", "images", *EVAL_COLUMNS])
    groups: dict[str, list] = {}
    for crop in crops:
        groups.setdefault(scores.get(crop[0], {}).get("group", "images"), []).append(crop)
    figures = []
    for group, members in groups.items():
        for start in range(0, len(members), ROWS_PER_FIGURE):
            part = members[start:start + ROWS_PER_FIGURE]
            figures.append(_figure_html(
                _crops_figure(part, scores), f"{group}: noisy, denoised, ground truth",
                f"{_esc(group)}: images {start + 1}-{start + len(part)} of {len(members)}.",
            ))
    metrics = ("PSNR in dB and SSIM (skimage.metrics, data range: the ground truth's dtype "
               "maximum, 255 for 8-bit) of the noisy and the denoised image against the ground "
               "truth; seconds: denoising time per image.")
    sections = [
        ("groups", "Per group", f"<p>{metrics}</p>{group_table}"),
        ("images", "Per image", image_table),
        ("crops", "Crops", "<p>The same window of each image around the ground truth's "
                           "brightest region, on the ground truth's display range.</p>"
                           + "".join(figures)),
    ]
    intro = f"<p>{_esc(description)}</p>" if description else ""
    return _write_atomically(Path(output), _page(title, intro, sections))
