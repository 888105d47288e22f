"""One stack job: a stack's planes denoised by the engine and written, plane by plane, into an
output of any format.

Every way of denoising a stack runs through here: ``fm2s denoise`` and :func:`denoise_stack`
(an OME-Zarr store, or a TIFF or PNG of the input's own shape), the napari widget
(:func:`iter_denoise_array`), and the workflow's training and chunk jobs (:mod:`fm2s.jobs`).
They share

- :func:`stack_job`, the preamble: CPU threads, the torch device, the input's change stamp,
  the stack opened lazily; and at the end the check that the input did not change meanwhile;
- :func:`write_planes`, the loop: each result written as soon as it is ready
  (:class:`fm2s.outputs.PlaneWriter`: ``write_plane``, then ``commit``), with progress and
  one log line per plane; each plane is read, hashed and prepared once
  (:func:`fm2s.engine.denoise_stack_planes`);
- :func:`fm2s._provenance.stack_provenance`, the one provenance builder.

Only one group's planes are ever in memory (a few groups' on a GPU), so the peak memory does
not grow with the number of planes. An output appears under its final name only when complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from fm2s._provenance import describe_device, fingerprint_input, stack_provenance, utc_now
from fm2s.devices import resolve_device, set_threads
from fm2s.engine import StackModel, denoise_stack_planes, stack_noise
from fm2s.inputs import check_unchanged, input_stamp
from fm2s.ome import OmeZarrWriter, check_output_path, describe_output, store_axes
from fm2s.outputs import OutputError, PlaneWriter
from fm2s.planeio import IMAGE_SUFFIXES, ImageWriter
from fm2s.prepare import PlaneResult
from fm2s.settings import Settings
from fm2s.stacks import PlaneKey, Stack, open_stack, stack_from_array

__all__ = ["StackJob", "denoise_array", "denoise_stack", "iter_denoise_array", "open_writer",
           "stack_job", "write_planes"]

logger = logging.getLogger(__name__)


@dataclass
class StackJob:
    """An open stack job (:func:`stack_job`)."""

    path: Path  # the input
    stack: Stack
    device: torch.device  # resolved
    started: str  # ISO 8601 UTC
    stamp: str  # the input's change stamp when the job began (fm2s.inputs.input_stamp)

    def check_unchanged(self) -> None:
        """Raise StackError if the input changed since the job began (publish nothing)."""
        check_unchanged(self.path, self.stamp)


@contextmanager
def stack_job(input_path: str | Path, *, series: int = 0, pages_as: Literal["z", "t"] = "z",
              device: str | torch.device = "auto", threads: int | None = None
              ) -> Iterator[StackJob]:
    """The preamble of every stack job: set torch's CPU `threads`, resolve `device`, stamp the
    input (:func:`fm2s.inputs.input_stamp`) and open it lazily; closed on exit.

    A job calls :meth:`StackJob.check_unchanged` before it publishes its output.
    """
    input_path = Path(input_path)
    set_threads(threads)
    torch_device = resolve_device(device)
    started = utc_now()
    stamp = input_stamp(input_path)
    with open_stack(input_path, series=series, pages_as=pages_as) as stack:
        yield StackJob(input_path, stack, torch_device, started, stamp)


def open_writer(output_path: str | Path, stack: Stack, *, levels: int = 3,
                ngff_version: Literal["0.4", "0.5"] = "0.4", tile: int = 2048,
                overwrite: bool = False) -> PlaneWriter:
    """The writer of an output, chosen by its name: ``*.zarr`` an OME-Zarr store with
    provenance (:class:`fm2s.ome.OmeZarrWriter`); ``.tif``, ``.tiff``, ``.png`` one image of
    the input's own shape and axes (:class:`fm2s.planeio.ImageWriter`, no provenance).

    Adding an output format: a writer with ``write_plane`` and ``commit``
    (:class:`fm2s.outputs.PlaneWriter`) and a branch here.
    """
    output_path = Path(output_path)
    meta = stack.metadata
    if output_path.name.lower().endswith(".zarr"):
        return OmeZarrWriter(output_path, shape=meta.shape, dtype=meta.dtype, metadata=meta,
                             levels=levels, ngff_version=ngff_version, overwrite=overwrite,
                             tile=tile)
    if output_path.suffix.lower() in IMAGE_SUFFIXES:
        check_output_path(output_path, input_path=meta.path, overwrite=overwrite)
        return ImageWriter(output_path, meta, stack.axes, overwrite=overwrite)
    msg = (f"{output_path}: unsupported output type {output_path.suffix!r}; expected .ome.zarr, "
           f"{', '.join(IMAGE_SUFFIXES)}")
    raise OutputError(msg)


def write_planes(writer: PlaneWriter, planes: Iterable[tuple[PlaneKey, PlaneResult]], *,
                 total: int, name: str, progress: bool = True) -> dict[PlaneKey, dict[str, Any]]:
    """Write each ``(key, result)`` as it comes, with a progress bar (on stderr) and a log
    line per plane; returns per plane what provenance keeps of it (``seconds``,
    ``input_sha256``, ``info``, ``seed``)."""
    records: dict[PlaneKey, dict[str, Any]] = {}
    with tqdm(total=total, unit="plane", desc=name, disable=None if progress else True) as bar:
        for n, (key, result) in enumerate(planes, 1):
            writer.write_plane(key, result.image)
            records[key] = {"seconds": result.seconds, "input_sha256": result.input_sha256,
                            "info": result.info, "seed": result.seed}
            bar.update(1)
            network = (result.info or {}).get("network")
            logger.info("%s: plane %d/%d (t,c,z = %s) denoised in %.2f s%s", name, n, total,
                        key.label, result.seconds, f" by {network}" if network else "")
    return records


def denoise_stack(
    input_path: str | Path,
    output_path: str | Path,
    *,
    settings: Settings,
    seed: int = 0,
    series: int = 0,
    pages_as: Literal["z", "t"] = "z",
    levels: int = 3,
    ngff_version: Literal["0.4", "0.5"] = "0.4",
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    data_range: float | None = None,
    tile: int = 2048,
    model: StackModel | None = None,
    model_path: str | Path | None = None,
) -> Path:
    """Denoise every plane of a stack with FM2S and write an OME-Zarr store (or an image).

    Parameters
    ----------
    input_path : str or Path
        Any input :func:`fm2s.stacks.open_stack` reads.
    output_path : str or Path
        The output (:func:`open_writer`): an OME-Zarr store, e.g. ``"golgi.ome.zarr"``, with
        provenance; or a ``.tif``/``.tiff``/``.png`` of the input's shape and axes, which for
        a TIFF input keeps its kind (ImageJ, OME-TIFF or plain), pixel sizes and time step
        (:func:`fm2s.planeio.write_image`). The pixels are the same either way.
    settings : Settings
        Effective denoise settings (:func:`fm2s.settings.make_settings`).
    seed : int, optional
        Base seed; see :data:`fm2s._provenance.SEED_DERIVATION` for the per-plane seeds.
    series, pages_as
        Passed to :func:`fm2s.stacks.open_stack`.
    levels, ngff_version, tile
        OME-Zarr output (:class:`fm2s.ome.OmeZarrWriter`): pyramid levels, NGFF ``"0.4"``
        (Zarr v2) or ``"0.5"`` (Zarr v3), largest chunk side.
    device : {"auto", "cpu", "cuda", "cuda:N"}, optional
        Torch device for denoising.
    threads : int, optional
        CPU threads for torch.
    overwrite : bool, optional
        Replace an existing output (only once the new one is complete).
    progress : bool, optional
        Show a tqdm progress bar (on stderr).
    data_range : float, optional
        Intensity mapped to 1.0 by the engine (default: from the dtype).
    model : StackModel, optional
        Apply these networks (:func:`fm2s.engine.apply_model`) instead of training; its
        settings, seed and data range must be these. `model_path` names its file.

    Returns
    -------
    path : Path
        The output, complete (a store with provenance: :func:`fm2s.provenance`).

    Raises
    ------
    StackError
        Bad input (unsupported, corrupt, unmappable axes, series out of range, a plane
        the engine cannot denoise), an output that exists (unless `overwrite`), an output
        inside the input, or an input that changed while it was read. Nothing is left under
        `output_path` on any error.
    """
    output_path = Path(output_path)
    with stack_job(input_path, series=series, pages_as=pages_as, device=device,
                   threads=threads) as job:
        meta = job.stack.metadata
        writer = open_writer(output_path, job.stack, levels=levels, ngff_version=ngff_version,
                             tile=tile, overwrite=overwrite)
        keys = job.stack.plane_keys()
        fingerprint = fingerprint_input(job.path) if writer.keeps_provenance else None
        logger.info(
            "denoising %s (%s, %d planes of %d x %d %s) into %s on %s%s",
            job.path, meta.format, len(keys), *meta.shape[3:], meta.dtype, output_path,
            job.device, f" with {model_path}" if model_path else "",
        )  # fmt: skip
        references = None
        if settings.needs_estimate and model is None:
            references = stack_noise(job.stack, settings, data_range)
        with writer:
            planes = denoise_stack_planes(job.stack, settings, seed=seed, data_range=data_range,
                                          device=job.device, model=model, references=references)
            records = write_planes(writer, planes, total=len(keys), name=job.path.name,
                                   progress=progress)
            record = None
            if writer.keeps_provenance:
                record = stack_provenance(
                    settings=settings, seed=seed, metadata=meta, fingerprint=fingerprint,
                    output=describe_output(meta.shape, meta.dtype, ngff_version=ngff_version,
                                           levels=levels, axes=store_axes(meta.shape, meta)),
                    device=describe_device(job.device), started=job.started, keys=keys,
                    planes=records, data_range=data_range, model=model_path,
                    references=references.record() if references else
                    (model.references if model else None))  # fmt: skip
            job.check_unchanged()
            writer.commit(record)
    return output_path


def iter_denoise_array(
    array,
    axes: str,
    *,
    settings: Settings,
    seed: int = 0,
    device: str = "auto",
    data_range: float | None = None,
    name: str = "array",
):
    """Denoise an array in memory plane by plane, with the engine of :func:`denoise_stack`.

    A generator, so that a caller (the napari widget) can show progress and stop between
    planes. The same pixels, settings and seed give the same result as the same stack read
    from a file.

    Parameters
    ----------
    array : array_like
        2-D to 5-D image, e.g. a napari layer's data (numpy or dask).
    axes : str
        Its axes as NGFF letters, e.g. ``"yx"``, ``"zyx"``, ``"tczyx"``
        (:func:`fm2s.stacks.stack_from_array`).
    settings : Settings
        Effective settings (:func:`fm2s.settings.make_settings`); ``group_size`` 1 trains a
        network per plane, larger values share one per group.
    seed, device, data_range
        As for :func:`denoise_stack`.
    name : str, optional
        Names the array in messages.

    Yields
    ------
    (index, image, done, total)
        `index` is the tuple that places the ``(y, x)`` `image` in an array of the input's
        shape and axes; `done` of `total` planes are finished.
    """
    torch_device = resolve_device(device)
    with stack_from_array(array, axes, name=name) as stack:
        total = len(stack.plane_keys())
        planes = denoise_stack_planes(stack, settings, seed=seed, data_range=data_range,
                                      device=torch_device)
        for done, (key, result) in enumerate(planes, 1):
            yield stack.axes.select(*key), stack.axes.to_yx(result.image), done, total


def denoise_array(array, axes: str, *, settings: Settings, **kwargs) -> np.ndarray:
    """Denoise an array in memory; returns an array of its shape and dtype.

    Parameters are those of :func:`iter_denoise_array`.

    Examples
    --------
    >>> from fm2s.settings import make_settings
    >>> noisy = np.random.default_rng(0).poisson(20, (2, 64, 64)).astype(np.uint8)
    >>> clean = denoise_array(noisy, "zyx", settings=make_settings(steps=20))
    >>> clean.shape, clean.dtype
    ((2, 64, 64), dtype('uint8'))
    """
    out = np.empty(np.shape(array), dtype=np.asarray(array[(0,) * np.ndim(array)]).dtype)
    for index, image, _, _ in iter_denoise_array(array, axes, settings=settings, **kwargs):
        out[index] = image
    return out
