"""Deterministic synthetic fluorescence-like data with known Poisson-Gaussian noise.

Used by ``fm2s demo``, the workflow's built-in demo stack and the tests: the clean image is
known, so the denoiser can be scored without real data.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["clean_plane", "noisy_plane"]


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
