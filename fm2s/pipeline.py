"""Denoise a whole stack into an OME-Zarr store, plane by plane.

:func:`denoise_stack` opens the input lazily (:func:`fm2s.stacks.open_stack`),
denoises it with the stack engine (:func:`fm2s.engine.denoise_stack_planes`: a network per
group of planes, trained, then applied) and writes each result, with its pyramid, into an
:class:`fm2s.ome.OmeZarrWriter` as soon as it is ready. Only one group's planes are ever in
memory (a few groups' on a GPU), so the peak memory does not grow with the number of planes.
The store appears under its final name only when complete, with provenance under ``"fm2s"``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from fm2s._provenance import (
    build_provenance,
    describe_device,
    describe_output,
    fingerprint_input,
    utc_now,
)
from fm2s.engine import plane_sha256
from fm2s.ome import OmeZarrWriter, check_output_path
from fm2s.stacks import PlaneKey, open_stack

__all__ = ["SEED_DERIVATION", "denoise_array", "denoise_stack", "iter_denoise_array"]

logger = logging.getLogger(__name__)

SEED_DERIVATION = (
    "each plane is denoised with seed fm2s.denoise.plane_seed(seed, (t, c, z)), a SHA-256 "
    "of the base seed and the plane's (t, c, z) tuple of ints, so a plane's result depends "
    "on its position and the base seed only, not on batching or on how a stack is split "
    "into jobs"
)


def denoise_stack(
    input_path: str | Path,
    output_path: str | Path,
    *,
    settings: Any,
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
    model: Any = None,
    model_path: str | Path | None = None,
) -> Path:
    """Denoise every plane of a stack with FM2S and write an OME-Zarr store.

    Parameters
    ----------
    input_path : str or Path
        Any input :func:`fm2s.stacks.open_stack` reads.
    output_path : str or Path
        The OME-Zarr store to create, e.g. ``"golgi.ome.zarr"``.
    settings : Settings
        Effective denoise settings (:func:`fm2s.settings.make_settings`).
    seed : int, optional
        Base seed; see :data:`SEED_DERIVATION` for the per-plane seeds.
    series, pages_as
        Passed to :func:`fm2s.stacks.open_stack`.
    levels, ngff_version, tile, overwrite
        Passed to :class:`fm2s.ome.OmeZarrWriter`: pyramid levels, NGFF ``"0.4"``
        (Zarr v2) or ``"0.5"`` (Zarr v3), largest chunk side, replace an existing store.
    device : {"auto", "cpu", "cuda", "cuda:N"}, optional
        Torch device for denoising.
    threads : int, optional
        CPU threads for torch.
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
        The store, complete, with provenance (:func:`fm2s.provenance`).

    Raises
    ------
    StackError
        Bad input (unsupported, corrupt, unmappable axes, series out of range, a plane
        the engine cannot denoise), an output that exists (unless `overwrite`) or an
        output inside the input. Nothing is left under `output_path` on any error.
    """
    from fm2s.denoise import resolve_device, set_threads
    from fm2s.engine import denoise_stack_planes, stack_noise

    input_path, output_path = Path(input_path), Path(output_path)
    set_threads(threads)
    torch_device = resolve_device(device)
    started = utc_now()
    from fm2s.chunks import check_unchanged, input_stamp

    stamp = input_stamp(input_path)
    with open_stack(input_path, series=series, pages_as=pages_as) as stack:
        meta = stack.metadata
        check_output_path(output_path, input_path=input_path, overwrite=overwrite)
        keys = stack.plane_keys()
        fingerprint = fingerprint_input(input_path)
        raw: dict[PlaneKey, str] = {}
        writer = OmeZarrWriter(
            output_path, shape=meta.shape, dtype=meta.dtype, metadata=meta, levels=levels,
            ngff_version=ngff_version, overwrite=overwrite, tile=tile,
        )  # fmt: skip
        logger.info(
            "denoising %s (%s, %d planes of %d x %d %s) into %s on %s%s",
            input_path, meta.format, len(keys), *meta.shape[3:], meta.dtype, output_path,
            torch_device, f" with {model_path}" if model_path else "",
        )  # fmt: skip
        results: dict[PlaneKey, Any] = {}
        references = None
        if settings.needs_estimate and model is None:
            references = stack_noise(stack, settings, data_range)
        bar = tqdm(total=len(keys), unit="plane", desc=input_path.name,
                   disable=None if progress else True)
        with writer, bar:
            planes = denoise_stack_planes(
                stack, settings, seed=seed, data_range=data_range, device=torch_device,
                model=model, references=references,
                on_plane=lambda key, plane: raw.__setitem__(key, plane_sha256(plane)),
            )  # fmt: skip
            for n, (key, result) in enumerate(planes, 1):
                writer.write_plane(key, result.image)
                results[key] = _plane_record(result, raw[key])
                bar.update(1)
                logger.info(
                    "%s: plane %d/%d (t,c,z = %s) denoised in %.2f s%s",
                    input_path.name, n, len(keys), key.label, result.seconds,
                    f" by {result.info['network']}" if "network" in (result.info or {}) else "",
                )  # fmt: skip
            record = build_provenance(
                settings=settings,
                seed=seed,
                seed_derivation=SEED_DERIVATION,
                input_metadata=meta,
                input_fingerprint=fingerprint,
                output=describe_output(meta.shape, meta.dtype, ngff_version=ngff_version,
                                       levels=levels),
                device=describe_device(torch_device),
                started=started,
                finished=utc_now(),
                plane_seconds={k.label: results[k]["seconds"] for k in keys},
                pixels_sha256=pixels_digest(raw[k] for k in keys),
                estimate=None,
            )
            record.update(stack_record(
                results, keys, data_range=data_range, model=model_path,
                references=references.record() if references else
                (model.references if model else None)))  # fmt: skip
            check_unchanged(input_path, stamp)
            writer.commit(record)
    return output_path


def _plane_record(result, input_sha256: str) -> dict[str, Any]:
    """What provenance keeps of a plane's result (see :func:`stack_record`)."""
    return {"seconds": result.seconds, "info": result.info, "input_sha256": input_sha256}


def pixels_digest(plane_hashes) -> str:
    """SHA-256 over the SHA-256 of every raw plane, in plane order: identifies the pixels
    read, whichever job read which plane."""
    digest = hashlib.sha256()
    for plane_hash in plane_hashes:
        digest.update(bytes.fromhex(plane_hash))
    return digest.hexdigest()


def stack_record(results, keys, *, data_range, model=None, references=None) -> dict[str, Any]:
    """Provenance entries of a stack's planes: ``data_range``, ``networks`` (which network
    denoised which plane, summarised) and, for ``auto``, ``estimate``."""
    from fm2s.stack_noise import provenance_record

    infos = {k.label: results[k]["info"] for k in keys if results[k]["info"]}
    record: dict[str, Any] = {"data_range": data_range, "model_file": None if model is None
                              else str(Path(model).resolve())}
    record["networks"] = network_summary(infos)
    autos = {label: info for label, info in infos.items() if "estimate" in info}
    if autos:
        references = references if references is not None else {}
        record["estimate"] = provenance_record(references, autos)
    return record


def network_summary(infos: dict[str, dict]) -> dict[str, Any]:
    """Per network: its digest and the planes it denoised (as ``"t,c,z"`` labels)."""
    networks: dict[str, dict[str, Any]] = {}
    for label, info in infos.items():
        name = info.get("network")
        if name is None:
            continue
        entry = networks.setdefault(name, {"digest": info.get("network_digest"), "planes": []})
        entry["planes"].append(label)
    return dict(sorted(networks.items()))


def denoise_image_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    settings: Any,
    seed: int = 0,
    series: int = 0,
    pages_as: Literal["z", "t"] = "z",
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    data_range: float | None = None,
    model: Any = None,
) -> Path:
    """Denoise a PNG or TIFF (plane or stack) into a PNG or TIFF of the input's array shape.

    The same stack engine, seeds and groups as :func:`denoise_stack`: a stack written to
    ``.tif`` has the pixels it has in an OME-Zarr store. A TIFF output of a TIFF input keeps
    its kind (ImageJ hyperstack, OME-TIFF or plain), axes, pixel sizes and time step
    (:func:`fm2s.planeio.write_image`). No provenance (use an ``.ome.zarr`` output for it).
    """
    from fm2s.chunks import check_unchanged, input_stamp
    from fm2s.denoise import resolve_device, set_threads
    from fm2s.engine import denoise_stack_planes
    from fm2s.planeio import write_image
    from fm2s.stacks import AxisMap

    input_path, output_path = Path(input_path), Path(output_path)
    set_threads(threads)
    torch_device = resolve_device(device)
    stamp = input_stamp(input_path)
    with open_stack(input_path, series=series, pages_as=pages_as) as stack:
        meta = stack.metadata
        check_output_path(output_path, input_path=input_path, overwrite=overwrite)
        axes = AxisMap(meta.axes_found, meta.shape_found, pages_as=pages_as, path=meta.path)
        out = np.empty(meta.shape_found, dtype=meta.dtype)
        keys = stack.plane_keys()
        logger.info("denoising %s (%s, %d planes of %d x %d %s) into %s on %s", input_path,
                    meta.format, len(keys), *meta.shape[3:], meta.dtype, output_path,
                    torch_device)
        with tqdm(total=len(keys), unit="plane", desc=input_path.name,
                  disable=None if progress else True) as bar:
            for key, result in denoise_stack_planes(stack, settings, seed=seed,
                                                    data_range=data_range, device=torch_device,
                                                    model=model):
                out[axes.select(*key)] = axes.to_yx(result.image)  # to_yx is its own inverse
                bar.update(1)
    check_unchanged(input_path, stamp)
    tiff_input = meta.format in ("tiff", "imagej-tiff", "ome-tiff")
    write_image(output_path, out, overwrite=overwrite, metadata=meta if tiff_input else None)
    return output_path


def iter_denoise_array(
    array,
    axes: str,
    *,
    settings: Any,
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
    from fm2s.denoise import resolve_device
    from fm2s.engine import denoise_stack_planes
    from fm2s.stacks import stack_from_array

    torch_device = resolve_device(device)
    with stack_from_array(array, axes, name=name) as stack:
        axis_map = stack._source.axes
        total = len(stack.plane_keys())
        planes = denoise_stack_planes(stack, settings, seed=seed, data_range=data_range,
                                      device=torch_device)
        for done, (key, result) in enumerate(planes, 1):
            yield axis_map.select(*key), axis_map.to_yx(result.image), done, total


def denoise_array(array, axes: str, *, settings: Any, **kwargs) -> np.ndarray:
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
