"""Intensity scales: how a plane maps onto FM2S's [0, 1] scale, and back.

An integer plane is divided by its dtype's largest value (255 for uint8, exactly as the paper;
65535 for uint16), a float plane in [0, 1] is used as it is and a brighter float plane is
divided by its maximum; ``data_range`` overrides the divisor (see :mod:`fm2s.denoise`).
"""

from __future__ import annotations

import math

import numpy as np

from .settings import Settings

__all__ = ["fills_little_of_dtype", "intensity_range", "rounding_variance", "to_dtype",
           "training_boost"]


def intensity_range(plane: np.ndarray, data_range: float | None = None) -> float:
    """The intensity mapped to 1.0 (see :mod:`fm2s.denoise`)."""
    if data_range is not None:
        if not np.isfinite(data_range) or data_range <= 0:
            msg = f"data_range must be a positive number, got {data_range!r}"
            raise ValueError(msg)
        return float(data_range)
    if plane.dtype.kind in "ui":
        return float(np.iinfo(plane.dtype).max)
    peak = float(plane.max())
    return 1.0 if peak <= 1.0 else peak


def rounding_variance(plane: np.ndarray, scale: float) -> float:
    """Variance of the rounding to integers on the [0, 1] scale: ``1 / (12 scale^2)`` for
    integer planes (one DN step is ``1 / scale``), 0 for float planes."""
    return 1.0 / (12.0 * scale**2) if plane.dtype.kind in "ui" else 0.0


def fills_little_of_dtype(plane: np.ndarray) -> bool:
    """True for >8-bit integer data below 1/16 of the dtype's range (e.g. 12 bits in uint16)."""
    return (plane.dtype.kind in "ui" and plane.dtype.itemsize > 1
            and plane.max() < np.iinfo(plane.dtype).max / 16)


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def training_boost(noisy: np.ndarray, settings: Settings) -> float:
    """Power of two by which a [0, 1] plane is multiplied to train and apply its network.

    The network's initialisation and learning rate suit data that fill [0, 1]. Data far below
    it (12-bit camera data stored as uint16 fill at most 1/16) train worse: FMD planes stored
    that way lost 0.2-0.3 dB. The Poisson-Gaussian model of ``auto`` has no fixed scale (its
    gain and read variance scale with the data), so such a plane is multiplied to bring its
    peak into (0.5, 1], and the network's output divided back. A power of two keeps every step
    exact. The paper's presets return 1: their synthetic noise depends on the [0, 1] scale.

    Parameters
    ----------
    noisy : ndarray (Y, X)
        The plane on the [0, 1] scale.
    settings : Settings

    Returns
    -------
    float
        1 for planes whose peak is above 0.5 (all 8-bit data that uses its upper half), for
        empty or black planes and for the ``fm2s`` noise model; else ``2**k``.
    """
    peak = float(noisy.max())
    if settings.noise_model != "poisson-gaussian" or not 0 < peak <= 0.5:
        return 1.0
    return float(2.0 ** math.floor(-math.log2(peak)))
