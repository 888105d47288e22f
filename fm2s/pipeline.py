"""Denoise a whole stack into an OME-Zarr store, plane by plane.

:func:`denoise_stack` opens the input lazily (:func:`fm2s.stacks.open_stack`),
feeds its planes one at a time to :func:`fm2s.denoise.iter_denoise_planes` and
writes each result, with its pyramid, into an :class:`fm2s.ome.OmeZarrWriter`
as soon as it is ready. Only a few planes are ever in memory (one on CPU, up to
``fm2s.denoise.CUDA_GROUP_SIZE`` on a GPU, where planes train in groups), so
the peak memory does not grow with the number of planes. The store appears
under its final name only when complete, with provenance under ``"fm2s"``.
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
from fm2s.ome import OmeZarrWriter, check_output_path
from fm2s.stacks import StackError, open_stack

__all__ = ["SEED_DERIVATION", "denoise_stack"]

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
    from fm2s.denoise import iter_denoise_planes, resolve_device

    input_path, output_path = Path(input_path), Path(output_path)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        msg = f"threads must be an int >= 1, got {threads!r}"
        raise ValueError(msg)
    torch_device = resolve_device(device)
    started = utc_now()
    with open_stack(input_path, series=series, pages_as=pages_as) as stack:
        meta = stack.metadata
        check_output_path(output_path, input_path=input_path, overwrite=overwrite)
        keys = stack.plane_keys()
        fingerprint = fingerprint_input(input_path)
        pixels = hashlib.sha256()

        def planes():
            for key in keys:
                plane = stack.read_plane(key)
                pixels.update(np.ascontiguousarray(plane).tobytes())
                yield plane

        writer = OmeZarrWriter(
            output_path, shape=meta.shape, dtype=meta.dtype, metadata=meta, levels=levels,
            ngff_version=ngff_version, overwrite=overwrite, tile=tile,
        )  # fmt: skip
        logger.info(
            "denoising %s (%s, %d planes of %d x %d %s) into %s on %s",
            input_path, meta.format, len(keys), *meta.shape[3:], meta.dtype, output_path,
            torch_device,
        )  # fmt: skip
        plane_seconds: dict[str, float] = {}
        plane_infos: dict[str, dict] = {}
        references = None
        if settings.needs_estimate:
            from fm2s.estimate import ChannelReferences

            references = ChannelReferences(stack, data_range)
        bar = tqdm(total=len(keys), unit="plane", desc=input_path.name, disable=not progress)
        with writer, bar:
            results = iter_denoise_planes(
                planes(), settings, seed=seed, keys=[tuple(k) for k in keys],
                device=torch_device, threads=threads, data_range=data_range,
                noise_reference=references,
            )  # fmt: skip
            try:
                for n, (key, result) in enumerate(zip(keys, results, strict=True), 1):
                    writer.write_plane(key, result.image)
                    plane_seconds[key.label] = result.seconds
                    if result.info is not None:
                        plane_infos[key.label] = result.info
                    bar.update(1)
                    logger.info(
                        "%s: plane %d/%d (t,c,z = %s) denoised in %.2f s",
                        input_path.name, n, len(keys), key.label, result.seconds,
                    )  # fmt: skip
            except StackError:
                raise
            except ValueError as exc:  # the engine refused a plane of this input
                msg = f"{input_path}: cannot denoise: {exc}"
                raise StackError(msg) from exc
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
                plane_seconds=plane_seconds,
                pixels_sha256=pixels.hexdigest(),
                estimate=_estimate_record(references, plane_infos),
            )
            writer.commit(record)
    return output_path


def _estimate_record(references, plane_infos):
    """Provenance ``estimate`` block of an ``auto`` run (None for fixed presets)."""
    if references is None and not plane_infos:
        return None
    from fm2s.estimate import provenance_record

    return provenance_record(references.record() if references else {}, plane_infos)
