"""Deterministic synthetic fluorescence-like data with known Poisson-Gaussian noise.

Used by ``fm2s demo``, the workflow's built-in demo stack and the tests: the clean image is
known, so the denoiser can be scored without real data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from fm2s.outputs import atomic_output

__all__ = ["clean_plane", "noisy_plane", "synthetic_stack", "write_synthetic_stack"]


def clean_plane(shape: tuple[int, int] = (256, 256), *, seed: int = 0, phase: float = 0.0,
                blobs: int = 40, filaments: int = 12) -> np.ndarray:
    """A clean fluorescence-like plane in [0, 1]: blurred nuclei-like blobs and filaments.

    Parameters
    ----------
    shape : (int, int)
        Plane shape (Y, X).
    seed : int
        Structure seed.
    phase : float
        Moves the structures smoothly (use it for time points or z slices of one object).
    blobs, filaments : int
        How many of each.

    Returns
    -------
    ndarray (Y, X) of float64, values in [0, 1]
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    canvas = np.zeros(shape)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(blobs):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        vy, vx = rng.normal(0, 3, size=2)
        radius = rng.uniform(3, 10) * (1 + 0.15 * np.sin(phase + rng.uniform(0, 6.3)))
        brightness = rng.uniform(0.3, 1.0)
        cy, cx = cy + vy * phase, cx + vx * phase
        canvas += brightness * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    for _ in range(filaments):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, np.pi) + 0.05 * phase
        for _ in range(int(max(shape) * 0.6)):
            angle += rng.normal(0, 0.08)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if 0 <= y < height and 0 <= x < width:
                canvas[int(y), int(x)] += 0.8
    canvas = ndimage.gaussian_filter(canvas, 1.2)
    canvas += 0.04 + 0.02 * ndimage.gaussian_filter(rng.normal(size=shape), 20) * 50
    return np.clip(canvas / max(canvas.max(), 1e-9), 0.0, 1.0)


def noisy_plane(clean: np.ndarray, *, photons: float = 30.0, read_noise: float = 0.02,
                seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Poisson-Gaussian noise on a clean [0, 1] plane, quantised to ``dtype``.

    Parameters
    ----------
    clean : ndarray (Y, X)
        Clean intensities in [0, 1].
    photons : float
        Expected photon count at intensity 1.0 (shot noise: variance ``clean / photons``).
    read_noise : float
        Standard deviation of the additive Gaussian noise, in units of the full range.
    seed : int
        Noise seed.
    dtype : integer dtype
        Output dtype; [0, 1] maps onto [0, iinfo(dtype).max].

    Returns
    -------
    ndarray (Y, X) of ``dtype``
    """
    rng = np.random.default_rng(seed)
    values = rng.poisson(clean * photons) / photons + rng.normal(0.0, read_noise, clean.shape)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(values * top), 0, top).astype(dtype)


def synthetic_stack(
    t: int = 3, c: int = 2, z: int = 4, size: int = 128, *, seed: int = 0,
    photons: float = 30.0, read_noise: float = 0.02, dark: float = 0.05,
    dtype: Any = np.uint16,
) -> np.ndarray:
    """A deterministic fluorescence-like ``(t, c, z, y, x)`` stack with Poisson-Gaussian noise.

    Channel 0 looks like nuclei, channel 1 like filaments (then alternating); structures drift
    smoothly over t and z. Built from :func:`fm2s.synthetic.clean_plane` and
    :func:`fm2s.synthetic.noisy_plane`; every plane's noise has its own seed. Intensities sit
    on a dark level of `dark` (fraction of the range), as a camera's offset does: without one,
    a sixth of the pixels clip at 0.

    Examples
    --------
    >>> synthetic_stack(2, 1, 3, 32).shape
    (2, 1, 3, 32, 32)
    """
    out = np.empty((t, c, z, size, size), dtype=dtype)
    scale = max(size / 256, 0.25) ** 2
    for ci in range(c):
        blobs, filaments = (40, 4) if ci % 2 == 0 else (6, 16)
        for ti in range(t):
            for zi in range(z):
                clean = clean_plane(
                    (size, size), seed=seed * 1000 + ci, phase=0.4 * ti + 0.25 * zi,
                    blobs=max(1, round(blobs * scale)),
                    filaments=max(1, round(filaments * max(scale, 0.5))),
                )  # fmt: skip
                noise_seed = int(np.random.SeedSequence([seed, ti, ci, zi]).generate_state(1)[0])
                out[ti, ci, zi] = noisy_plane(dark + (1 - dark) * clean, photons=photons,
                                              read_noise=read_noise, seed=noise_seed,
                                              dtype=dtype)
    return out


def write_synthetic_stack(
    path: str | os.PathLike, *, t: int = 3, c: int = 2, z: int = 4, size: int = 128,
    seed: int = 0, dtype: Any = np.uint16, overwrite: bool = False,
) -> Path:
    """Write :func:`synthetic_stack` as an OME-TIFF (axes TCZYX, 0.2 um pixels, 0.5 um z steps,
    60 s frames), under a temporary name first, then renamed."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path}: output exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    data = synthetic_stack(t, c, z, size, seed=seed, dtype=dtype)
    names = [("nuclei", "filaments")[i % 2] + (f"-{i}" if i > 1 else "") for i in range(c)]
    with atomic_output(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(
            tmp, data, ome=True, photometric="minisblack",
            metadata={
                "axes": "TCZYX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 0.5,
                "PhysicalSizeZUnit": "µm", "TimeIncrement": 60.0, "TimeIncrementUnit": "s",
                "Channel": {"Name": names},
            },
        )  # fmt: skip
    return path
