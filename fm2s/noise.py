"""FM2S noise synthesis: region-adaptive Poisson-Gaussian noise added to a pseudo-clean plane.

All functions work on the algorithm's [0, 1] intensity scale and take their random generator
explicitly, so every draw is reproducible from a seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

__all__ = ["correlation_kernel", "lowfreq_gain", "median_target", "region_means", "synthesize",
           "synthesize_poisson_gaussian"]


def median_target(plane: np.ndarray, size: int) -> np.ndarray:
    """Pseudo-clean target: a ``size`` x ``size`` median filter with reflected borders.

    Parameters
    ----------
    plane : ndarray (Y, X) of float32
        Noisy plane on the [0, 1] scale.
    size : int
        Odd window side in pixels.

    Returns
    -------
    ndarray (Y, X) of float32
    """
    if size == 3 and plane.ndim == 2:
        return _median3(plane)
    return ndimage.median_filter(plane, size=size, mode="reflect")


def _median3(plane: np.ndarray) -> np.ndarray:
    """The 3 x 3 median filter with reflected borders, equal to ``ndimage.median_filter``'s
    (about 6x faster on a 512 x 512 plane): each column's three values sorted, the median of
    the nine is the median of the largest low, the median middle and the smallest high of
    three neighbouring columns."""
    padded = np.pad(plane, 1, mode="symmetric")  # scipy's "reflect": the edge repeated
    up, middle, down = padded[:-2], padded[1:-1], padded[2:]
    low, high = np.minimum(up, middle), np.maximum(up, middle)
    mid = np.minimum(high, down)
    high = np.maximum(high, down)
    mid, low = np.maximum(low, mid), np.minimum(low, mid)

    def columns(x):  # each pixel's left, own and right column
        return x[:, :-2], x[:, 1:-1], x[:, 2:]

    def median(a, b, c):
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))

    left, centre, right = columns(low)
    lows = np.maximum(np.maximum(left, centre), right)
    left, centre, right = columns(high)
    highs = np.minimum(np.minimum(left, centre), right)
    return median(lows, median(*columns(mid)), highs)


def region_means(target: np.ndarray, size: int, clamp: tuple[float, float]) -> np.ndarray:
    """Mean intensity ``M`` of each non-overlapping ``size`` x ``size`` tile, broadcast per pixel.

    Tiles at the right and bottom edges may be smaller than ``size``; their mean is taken over
    their own pixels only. (The reference code zero-pads the plane to a multiple of ``size`` and
    divides by ``size**2``, which darkens edge tiles and so gives borders too little noise.)

    Parameters
    ----------
    target : ndarray (Y, X) of float32
        Pseudo-clean plane on the [0, 1] scale.
    size : int
        Tile side in pixels.
    clamp : (float, float)
        Each tile mean is clamped to this range (it divides the Poisson rate, so it must be > 0).

    Returns
    -------
    ndarray (Y, X) of float32
        The clamped tile mean of every pixel's tile.
    """
    height, width = target.shape
    rows, cols = -(-height // size), -(-width // size)
    padded = np.zeros((rows * size, cols * size), dtype=np.float64)
    padded[:height, :width] = target
    counts = np.zeros_like(padded)
    counts[:height, :width] = 1.0
    tile_sum = padded.reshape(rows, size, cols, size).sum(axis=(1, 3))
    tile_count = counts.reshape(rows, size, cols, size).sum(axis=(1, 3))
    means = np.clip(tile_sum / tile_count, *clamp).astype(np.float32)
    return np.repeat(np.repeat(means, size, axis=0), size, axis=1)[:height, :width]


def synthesize(
    target: torch.Tensor, means: torch.Tensor, *, k_g: float, k_p: float, lam_p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw one FM2S noisy copy of ``target``.

    Three stages, as in the paper:

    1. regional Poisson: ``y = Poisson(c * k_p / M) * M / k_p`` (mean c, variance c M / k_p);
    2. regional Gaussian: ``y += Normal(0, (k_g M / 255)^2)``, then clamp to [0, 1];
    3. global Poisson: ``z = Poisson(y * lam_p) / lam_p``, then clamp to [0, 1].

    Parameters
    ----------
    target : Tensor (..., Y, X) of float32
        Pseudo-clean intensities ``c`` in [0, 1]; repeat it along a channel axis first to get
        independent draws per channel.
    means : Tensor broadcastable to ``target``
        Tile means ``M`` from :func:`region_means`.
    k_g, k_p, lam_p : float
        Noise strengths (see :class:`fm2s.settings.Settings`).
    generator : torch.Generator
        Source of randomness, on the same device as ``target``.

    Returns
    -------
    Tensor, same shape as ``target``
    """
    scale = k_p / means
    noisy = torch.poisson(target * scale, generator=generator) / scale
    gauss = torch.randn(target.shape, generator=generator, device=target.device,
                        dtype=target.dtype)
    noisy.add_(gauss.mul_(means * (k_g / 255.0))).clamp_(0.0, 1.0)
    noisy = torch.poisson(noisy.mul_(lam_p), generator=generator).div_(lam_p)
    return noisy.clamp_(0.0, 1.0)


def correlation_kernel(corr: float) -> np.ndarray:
    """Gaussian kernel of std `corr` pixels, normalised to unit energy (sum of squares 1).

    Filtering white noise with it keeps the pixel variance and gives neighbouring pixels the
    correlation of :class:`fm2s.estimate.NoiseEstimate` (``neighbour_corr``). ``corr <= 0``
    gives the 1 x 1 identity.
    """
    if corr <= 0:
        return np.ones((1, 1))
    radius = max(1, int(np.ceil(4 * corr)))
    x = np.arange(-radius, radius + 1)
    g = np.exp(-(x**2) / (2 * corr**2))
    kernel = np.outer(g, g)
    return kernel / np.sqrt((kernel**2).sum())


def lowfreq_gain(corr: float) -> float:
    """Sum of the autocorrelation of noise correlated by :func:`correlation_kernel` over all
    lags (its power at zero frequency over its pixel variance): 1 for white noise; a window of
    ``n`` pixels holds about ``n / lowfreq_gain`` independent noise samples."""
    return float(correlation_kernel(corr).sum() ** 2)


def correlated_normal(shape, corr: float, *, generator: torch.Generator,
                      device=None, dtype=torch.float32) -> torch.Tensor:
    """Unit-variance normal noise of `shape` (..., Y, X), correlated by :func:`correlation_kernel`.

    Drawn on a frame larger by the kernel radius on each side and filtered without padding, so
    borders are as correlated as the middle.
    """
    kernel = correlation_kernel(corr)
    radius = kernel.shape[0] // 2
    *lead, height, width = shape
    white = torch.randn((*lead, height + 2 * radius, width + 2 * radius), generator=generator,
                        device=device, dtype=dtype)
    if radius == 0:
        return white
    weight = torch.as_tensor(kernel, dtype=dtype, device=white.device)[None, None]
    flat = white.reshape(-1, 1, height + 2 * radius, width + 2 * radius)
    return torch.nn.functional.conv2d(flat, weight).reshape(*lead, height, width)


def row_beta(line_corr: float) -> float:
    """Weight ``beta`` of the unit-energy two-tap average ``(n_x + beta n_(x-1)) / sqrt(1 +
    beta^2)`` whose output has the lag-1 correlation ``beta / (1 + beta^2) = line_corr`` along
    rows (``line_corr`` in [0, 0.5); 0 gives 0)."""
    if line_corr <= 0:
        return 0.0
    return (1.0 - math.sqrt(1.0 - 4.0 * line_corr**2)) / (2.0 * line_corr)


def neighbour_corr(corr: float) -> float:
    """Correlation of horizontally adjacent pixels for the (discrete) kernel of width `corr`."""
    kernel = correlation_kernel(corr)
    if kernel.shape[1] < 2:
        return 0.0
    return float((kernel[:, 1:] * kernel[:, :-1]).sum())


def correlate_rows(noise: torch.Tensor, line_corr: float, corr: float = 0.0) -> torch.Tensor:
    """`noise` (..., Y, X) averaged along rows by the two-tap kernel of :func:`row_beta`.

    White noise gets the lag-1 correlation `line_corr` along rows, as the detector's bandwidth
    gives neighbours on a scan line. Noise already correlated by :func:`correlation_kernel` of
    width `corr` is averaged alike. Either keeps its variance. The first column, which has no
    left neighbour, is only rescaled. Returns `noise` itself when `line_corr` is 0.
    """
    if line_corr <= 0:
        return noise
    beta = row_beta(line_corr)
    # Variance of the average of unit-variance neighbours of correlation neighbour_corr(corr).
    gain = 1.0 + 2.0 * beta * neighbour_corr(corr) / (1.0 + beta**2)
    rows = torch.empty_like(noise)
    rows[..., :1] = noise[..., :1] / math.sqrt(gain)
    rows[..., 1:] = ((noise[..., 1:] + beta * noise[..., :-1])
                     / math.sqrt((1.0 + beta**2) * gain))
    return rows


#: Below this gain ([0, 1] units: over a million photons at full scale) the shot noise is drawn
#: from its normal approximation: counts that large lose precision in float32 (and overflow
#: int64 near 1e19), and their skewness at full scale is below 0.001.
_MIN_POISSON_GAIN = 1e-6


def synthesize_poisson_gaussian(
    target: torch.Tensor, *, gain: float, read_var: float, corr: float,
    generator: torch.Generator, line_corr: float = 0.0,
) -> torch.Tensor:
    """Draw a noisy copy of ``target`` with the noise model of :mod:`fm2s.estimate`.

    The pixel variance is that of the Poisson-Gaussian fit, ``max(a c + b, 0)`` (``a`` the
    gain, ``b`` the read variance, ``c`` the target); its distribution follows the spatial
    correlation:

    * white noise (``corr == 0``, ``a >= 1e-6``): the shot noise is drawn as Poisson counts,
      ``z = c + a (P - lam)`` with ``P ~ Poisson(lam)``, ``lam = max(c + min(b, 0) / a, 0) / a``,
      plus normal read noise of variance ``max(b, 0)``. A negative ``b`` is an offset: the
      counts start at ``-b / a``. At the few photons per pixel of raw confocal and
      two-photon planes (about 3 at the mean) shot noise is skewed and discrete, and a network
      trained on its normal approximation denoises them worse;
    * otherwise (correlated noise, or so many photons that the counts are normal):
      ``z = c + sqrt(max(a c + b, 0)) g`` with ``g`` unit normal noise correlated by a
      Gaussian kernel of std ``corr`` pixels. Correlation comes from processing after
      detection (interpolation, binning), which mixes neighbouring counts and leaves the
      noise close to normal.

    Either noise is then averaged along rows to the lag-1 correlation `line_corr`
    (:func:`correlate_rows`), and the result is clamped to [0, 1].

    Parameters
    ----------
    target : Tensor (..., Y, X) of float32
        Pseudo-clean intensities ``c`` in [0, 1].
    gain, read_var : float
        ``a`` ([0, 1] units) and ``b`` ([0, 1]^2 units) of the variance ``a c + b``.
    corr : float
        Correlation kernel width in pixels (0: white).
    generator : torch.Generator
        On the same device as ``target``.
    line_corr : float
        Lag-1 correlation along rows, in [0, 0.5) (0: none).

    Returns
    -------
    Tensor, same shape as ``target``
    """
    if corr <= 0 and gain >= _MIN_POISSON_GAIN:
        rate = (target + min(read_var, 0.0) / gain).clamp_(min=0.0).div_(gain)
        noise = torch.poisson(rate, generator=generator).sub_(rate).mul_(gain)
        if read_var > 0:
            read = torch.randn(target.shape, generator=generator, device=target.device,
                               dtype=target.dtype)
            noise.add_(read.mul_(read_var**0.5))
        noise = correlate_rows(noise, line_corr)
    else:
        unit = correlated_normal(target.shape, corr, generator=generator, device=target.device,
                                 dtype=target.dtype)
        noise = correlate_rows(unit, line_corr, corr).mul_(
            (target * gain + read_var).clamp_(min=0.0).sqrt_())
    return noise.add_(target).clamp_(0.0, 1.0)
