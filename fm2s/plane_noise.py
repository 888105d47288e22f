"""Blind estimation of a plane's noise: Poisson-Gaussian variance with spatial correlation.

The per-plane estimator. :mod:`fm2s.stack_noise` pools the evidence of many planes of one
channel into one model per acquisition; :mod:`fm2s.estimate` turns an estimate into settings.

Model
-----
On the algorithm's [0, 1] intensity scale (the plane divided by its ``data_range``), a noisy
pixel is ``x = u + n`` with clean intensity ``u`` and zero-mean noise ``n`` of variance

    var(n | u) = a * u + b

(``a``: gain, the intensity of one detected photon, in [0, 1] units; ``b``: signal-independent
read variance, in [0, 1]^2 units), spatially correlated as white noise smoothed by a Gaussian
kernel of standard deviation ``corr`` pixels (normalised to keep the pixel variance; for
``corr`` above about 0.5 the neighbour correlation is ``exp(-1 / (4 corr^2))``). Integer
planes also carry white rounding noise of variance ``1/12`` DN^2, which is modelled and not
counted in ``a`` and ``b``.

Method
------
A multi-scale version of the level-set fit of Foi et al. [1]_, made robust to texture. At scales
``s = 1, 2`` the plane is binned into ``s x s`` block means; a 3 x 3 high-pass (second
differences in x times second differences in y, which cancels locally linear signal) isolates
noise, and its energy (mean square) is taken in every 7 x 7 window. Windows are grouped into
level sets of equal local mean. In each, the mean noise energy comes from the lower half of the
window energies only (their 25 % quantile and median, through the gamma law of a noise-only
window energy): windows on edges or texture have more energy and fall above it, in the spirit
of the weak-texture patch selection of Liu et al. [2]_. A level set whose energies are more
dispersed than noise alone can make holds texture everywhere and is left out.

Every (scale, level) energy is a linear function of ``(a, b)`` whose coefficient depends on
``corr`` only through the exactly computed gain of the linear chain "Gaussian correlation ->
binning -> high-pass". ``corr`` is set by the ratio of the coarse to the fine energies at
the least textured level sets (texture raises the coarse energy more and would look like
correlated noise); where every coarse level set is textured, or the fitted neighbour
correlation is below ``WEAK_CORR`` (as weak as texture can fake), the noise is taken as white.
``(a, b)`` then follow by weighted least squares in closed form. A single-scale (pixel-level)
estimator would see only the high-frequency part of correlated noise (about a seventh of
wide-field variance).

Noise that is white apart from a weak correlation of neighbours along rows (the scan lines of
point-scanning microscopes, correlated by the detector's bandwidth; about 0.05 on the FMD
confocal and two-photon planes) hides ``4/3 rho`` of its variance from the high-pass. The
correlation ``rho`` is measured by comparing second differences along x and along y, which
texture without a preferred direction raises alike, and enters the chain gain.

References
----------
.. [1] A. Foi, M. Trimeche, V. Katkovnik, K. Egiazarian, "Practical Poissonian-Gaussian noise
   modeling and fitting for single-image raw-data", IEEE Trans. Image Process. 17(10),
   1737-1754, 2008.
.. [2] X. Liu, M. Tanaka, M. Okutomi, "Single-image noise level estimation for blind
   denoising", IEEE Trans. Image Process. 22(12), 5226-5237, 2013.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np
from scipy import ndimage, signal, stats

from .intensity import intensity_range, rounding_variance
from .noise import correlation_kernel, lowfreq_gain, neighbour_corr, row_beta

__all__ = ["NoiseEstimate", "PlaneEvidence", "estimate_noise", "fit_evidence", "noise_kernel",
           "plane_evidence"]

#: Scales (bin sides in pixels) at which noise is measured.
SCALES = (1, 2)
#: Candidate correlation widths (pixels); 0 is white noise.
CORR_GRID = tuple(np.round(np.arange(0.0, 2.51, 0.05), 2))
_HIGHPASS = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_LEVELS = 16  # level sets per scale (at most)
_MIN_COUNT = 64  # fewest windows for a level set to count
_WINDOW = 7  # side (binned samples) of the windows whose high-pass energy is measured
_QUANTILE = 0.25  # the low quantile of the window energies taken in each level set
#: A level set whose window energies are more dispersed (median / low quantile) than white
#: noise's by more than this fraction holds texture (noise up to about 1.4 px wide stays within
#: it at scale 1, every modelled width at scale 2); it is left out of the fit.
_SPREAD_TOL = 0.05
_CORR_QUANTILE = 0.25  # the correlation is set where this quantile of scale ratios is 1
#: Noise whose fitted neighbour correlation is below this is taken as white. Such weak
#: correlation (kernel widths up to 0.5 px) raises the coarse energy no more than fine texture
#: does (on FMD two-photon planes with white noise, texture alone fitted widths of 0.45-0.5 px),
#: yet it divides the fine-scale chain gain by up to 2.3, so a texture-induced width inflates
#: the pixel variance by as much. Taking it as white errs low instead, which the SURE blend
#: tolerates (it then keeps more of the input).
WEAK_CORR = 0.3
#: Largest correlation of neighbours along a scan line (x) in excess of across lines (y) that
#: :func:`estimate_noise` corrects for; stronger correlation is the Gaussian model's business.
LINE_CORR_MAX = 0.3
#: Correlated noise needs at least this many coarse (scale-2) level sets in the fit (with one,
#: any width fits it) ...
MIN_COARSE_LEVELS = 2
#: ... and a relative misfit below this fraction of white noise's (:func:`_robust_fit`). On
#: FMD's wide-field planes correlated noise fits 6x better (0.05 against 0.32); on frames where
#: the per-plane choice flipped it fit worse or barely better (0.21 against 0.26).
CORR_EVIDENCE = 0.75
_SECOND_DIFF = np.array([[1.0, -2.0, 1.0]])  # along x; its transpose along y
_LINE_MIN_NOISE = 3.0


@dataclass(frozen=True)
class NoiseEstimate:
    """A plane's noise, as fitted by :func:`estimate_noise`.

    Variance of a pixel of clean intensity ``u``: ``gain * u + read_var`` on the [0, 1] scale,
    ``gain_dn * u_dn + read_var_dn`` in DN (the input's own units, ``u_dn = u * data_range``).

    Attributes
    ----------
    gain : float
        ``a``, in [0, 1] intensity units (one photon's intensity); >= 0.
    read_var : float
        ``b``, signal-independent variance in [0, 1]^2 units; may be negative when dark pixels
        are clipped or offset (the fit is linear over the plane's range).
    gain_dn : float
        ``a`` in DN (``gain * data_range``).
    read_var_dn : float
        ``b`` in DN^2 (``read_var * data_range**2``).
    corr : float
        Width (pixels) of the Gaussian kernel that correlates the noise; 0 for white noise.
    neighbour_corr : float
        Correlation of adjacent noise pixels implied by ``corr`` (0 for white noise; about 0.6
        for ``corr = 0.7``).
    lowfreq_gain : float
        Noise power at low spatial frequencies relative to white noise of the same pixel
        variance (1 for white noise; about 6 for ``corr = 0.7``): what a large smoothing
        window sees.
    mean : float
        Mean intensity of the plane, [0, 1] scale.
    std : float
        Noise standard deviation at the plane's mean intensity, [0, 1] scale (pixel level,
        rounding noise excluded).
    std_dn : float
        The same in DN.
    data_range : float
        Intensity (DN) that maps to 1.0.
    quantization_var : float
        Variance of the rounding noise modelled, [0, 1]^2 units (0 for float input).
    levels : int
        Level sets (over all scales) that entered the fit; 0 means no usable level set
        (a constant plane): then every variance is 0.
    residual : float
        Weighted RMS relative misfit of the level-set variances (0 = perfect).
    line_corr : float
        Correlation of neighbours along a row (the scan line of point-scanning microscopes)
        in excess of neighbours along a column, where the Gaussian correlation is weak
        (``neighbour_corr < WEAK_CORR``); 0 otherwise. The pixel variance accounts for it,
        and ``auto`` synthesises it (``Settings.noise_line_corr``).
    """

    gain: float
    read_var: float
    gain_dn: float
    read_var_dn: float
    corr: float
    neighbour_corr: float
    lowfreq_gain: float
    mean: float
    std: float
    std_dn: float
    data_range: float
    quantization_var: float
    levels: int
    residual: float
    line_corr: float = 0.0

    def variance(self, intensity) -> np.ndarray:
        """Pixel noise variance at clean `intensity` ([0, 1] scale), floored at 0."""
        return np.maximum(self.gain * np.asarray(intensity, dtype=np.float64) + self.read_var,
                          0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (floats rounded to 6 significant digits)."""
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v)
                for k, v in dataclasses.asdict(self).items()}


def noise_kernel(corr: float, line_corr: float = 0.0) -> np.ndarray:
    """Unit-energy kernel that gives white noise the correlation of a :class:`NoiseEstimate`.

    The Gaussian kernel of width `corr` (:func:`fm2s.noise.correlation_kernel`), followed by
    the two-tap moving average ``[1, beta]`` along x that gives white noise the lag-1
    correlation ``beta / (1 + beta^2) = line_corr`` (``line_corr`` in [0, 0.5)), normalised to
    unit energy (pixel variance kept), as :func:`fm2s.noise.correlate_rows` draws it.
    """
    kernel = correlation_kernel(corr)
    if line_corr <= 0:
        return kernel
    kernel = signal.convolve2d(kernel, np.array([[1.0, row_beta(line_corr)]]))
    return kernel / np.sqrt((kernel**2).sum())


def _chain_kernel(corr: float, scale: int, line_corr: float = 0.0) -> np.ndarray:
    """Pixel-grid kernel of the chain white noise -> correlation -> binning -> high-pass."""
    box = np.full((scale, scale), 1.0 / scale**2)
    dilated = np.zeros((2 * scale + 1, 2 * scale + 1))
    dilated[::scale, ::scale] = _HIGHPASS
    return signal.convolve2d(signal.convolve2d(noise_kernel(corr, line_corr), box), dilated)


@lru_cache(maxsize=4096)  # bounded: line_corr takes a new value on every plane
def _chain_gain(corr: float, scale: int, line_corr: float = 0.0) -> float:
    """Variance of high-pass output per unit pixel variance of the correlated noise.

    The chain is linear: white noise -> :func:`noise_kernel` -> ``scale x scale`` block mean
    -> 3 x 3 high-pass on the binned grid (= the high-pass dilated by `scale` on the pixel
    grid). The output variance is the energy of the composed kernel.
    """
    return float((_chain_kernel(corr, scale, line_corr) ** 2).sum())


@cache
def _window_dof(corr: float, scale: int) -> float:
    """Degrees of freedom of a noise-only window energy (Welch-Satterthwaite).

    A window energy is the mean of the squared high-pass over ``_WINDOW x _WINDOW`` samples
    of the binned grid: for Gaussian noise a weighted sum of chi-square variables, which is
    approximated by the gamma distribution of the same mean and variance. Its variance follows
    exactly from the autocorrelation of the chain's kernel (high-pass samples overlap, and
    correlated noise correlates them further).
    """
    kernel = _chain_kernel(corr, scale)
    auto = signal.correlate2d(kernel, kernel)  # autocorrelation on the pixel grid
    centre = auto.shape[0] // 2
    lags = np.arange(-(_WINDOW - 1), _WINDOW)
    total = 0.0
    for ly in lags:
        for lx in lags:
            y, x = centre + scale * ly, centre + scale * lx
            if 0 <= y < auto.shape[0] and 0 <= x < auto.shape[1]:
                total += (_WINDOW - abs(ly)) * (_WINDOW - abs(lx)) * auto[y, x] ** 2
    return float(_WINDOW**4 * auto[centre, centre] ** 2 / total)


def _gamma_quantiles(dof):
    """(`_QUANTILE`-quantile, median) of a gamma law of mean 1 with `dof` degrees of freedom."""
    dof = np.asarray(dof, dtype=np.float64)
    return (stats.gamma.ppf(_QUANTILE, dof / 2.0, scale=2.0 / dof),
            stats.gamma.ppf(0.5, dof / 2.0, scale=2.0 / dof))


@cache
def _spread_limit() -> float:
    """Largest median / low-quantile ratio of window energies accepted as noise alone."""
    low, mid = _gamma_quantiles(_window_dof(0.0, 1))
    return float(mid / low) * (1.0 + _SPREAD_TOL)


@cache
def _spread_table():
    """Median / low-quantile ratio of mean-1 gamma laws, increasing, and their low quantile."""
    low, mid = _gamma_quantiles(np.logspace(0.0, 3.5, 600))
    return (mid / low)[::-1], low[::-1]


def _mean_energy(low: float, mid: float) -> tuple[float, bool]:
    """Mean noise energy of a level set from its low quantile and median; noise-like or not.

    The gamma law through the two quantiles gives the mean, so the lower half of the energy
    distribution alone decides it (texture and edges fill the upper half). Where the spread
    exceeds what noise produces (:func:`_spread_limit`), it is clipped to that limit, and the
    level set is marked as textured.
    """
    spread = mid / max(low, 1e-300)
    limit = _spread_limit()
    table_spread, table_low = _spread_table()
    factor = float(np.interp(min(spread, limit), table_spread, table_low))
    return low / factor, bool(spread <= limit)


def _bin(plane: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return plane
    h, w = (plane.shape[0] // scale) * scale, (plane.shape[1] // scale) * scale
    return plane[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))


def _highpass(plane: np.ndarray) -> np.ndarray:
    """The 3 x 3 high-pass of `plane`, without the border row and column it reflects into."""
    return ndimage.correlate(plane, _HIGHPASS, mode="reflect")[1:-1, 1:-1]


def _window_energies(binned: np.ndarray, ok: np.ndarray, highpasses):
    """Windowed energies of each high-pass of `binned`, and the windows' local means.

    Returns ``(energies, mean)``: one array of window energies per high-pass, and the signal
    level over each window's support, for the windows whose support has no clipped sample
    (`ok` True on every sample of it). Empty when the plane is too small for one window.
    """
    if min(binned.shape) < _WINDOW + 2:
        return [], np.empty(0)
    cut = _WINDOW // 2 + 1  # the high-pass's border row and half a window
    inner = (slice(cut, binned.shape[0] - cut), slice(cut, binned.shape[1] - cut))
    energies = [ndimage.uniform_filter(hp * hp, _WINDOW, mode="reflect")[inner]
                for hp in (ndimage.correlate(binned, k, mode="reflect") for k in highpasses)]
    mean = ndimage.uniform_filter(binned, _WINDOW + 2, mode="reflect")[inner]
    ok = ndimage.minimum_filter(ok.astype(np.uint8), _WINDOW + 2, mode="nearest")[inner] == 1
    return [e[ok] for e in energies], mean[ok]


def _level_set_members(mean: np.ndarray):
    """Boolean masks of up to ``_LEVELS`` level sets of `mean`, each of ``_MIN_COUNT`` or more."""
    levels = int(np.clip(mean.size // (2 * _MIN_COUNT), 1, _LEVELS))  # fewer on small planes
    edges = np.unique(np.quantile(mean, np.linspace(0.0, 1.0, levels + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, max(len(edges) - 2, 0))
    for k in range(len(edges) - 1):
        members = which == k
        if members.sum() >= _MIN_COUNT:
            yield members


def _robust_energy(energy: np.ndarray) -> tuple[float, bool]:
    """:func:`_mean_energy` of a low quantile and the median: windows on texture or edges
    have more energy than noise alone and fall above them."""
    low, mid = np.quantile(energy, [_QUANTILE, 0.5])
    return _mean_energy(float(low), float(mid))


def _level_sets(plane: np.ndarray, valid: np.ndarray, scale: int, *, rows_too: bool = False):
    """``(rows, directions)`` of the level sets of local mean at `scale`.

    ``rows``: (mean, robust variance, count, noise-like) of the high-pass in each level set.
    ``directions``: with `rows_too`, the robust energies ``((E_x, x_like), (E_y, y_like))`` of
    the second differences along x and along y in each level set (for :func:`_line_corr`),
    from the same windows and level sets; else empty.
    """
    binned = _bin(plane, scale)
    ok = _bin(valid.astype(np.float64), scale) == 1.0  # blocks without clipped pixels
    highpasses = [_HIGHPASS, _SECOND_DIFF, _SECOND_DIFF.T] if rows_too else [_HIGHPASS]
    energies, mean = _window_energies(binned, ok, highpasses)
    if mean.size < _MIN_COUNT:
        return [], []
    out, directions = [], []
    for members in _level_set_members(mean):
        level, noise_like = _robust_energy(energies[0][members])
        out.append((float(mean[members].mean()), level, int(members.sum()), noise_like))
        if rows_too:
            directions.append(tuple(_robust_energy(e[members]) for e in energies[1:]))
    return out, directions


def _line_corr(directions, quant: float) -> float:
    """Lag-1 noise correlation along rows in excess of that along columns, in [0, LINE_CORR_MAX].

    Point-scanning microscopes record a row as one scan line: the detector's bandwidth
    correlates neighbours along it, while rows are recorded apart in time. A second difference
    along x then sees ``6 - 8 rho`` times the pixel variance and one along y sees 6 (lags of 2
    or more neglected). Texture adds about equally to both where it has no preferred direction,
    so their robust energies in each level set (`directions`, from :func:`_level_sets` at
    scale 1) give ``rho = 3/4 (1 - E_x / E_y)``; the median over level sets where both look
    like noise is returned. Texture oriented along x reads as correlation and is capped at
    ``LINE_CORR_MAX``; correlation across rows is not measured (it reads as 0). Level sets
    whose noise variance is under ``_LINE_MIN_NOISE`` times the rounding noise's are left out:
    texture, not noise, then fills even the flattest windows.
    """
    rhos = []
    for (ex, x_like), (ey, y_like) in directions:
        ex, ey = ex - 6.0 * quant, ey - 6.0 * quant  # white rounding noise in both
        if x_like and y_like and ey > 6.0 * _LINE_MIN_NOISE * quant:
            rhos.append(0.75 * (1.0 - ex / ey))
    return float(np.clip(np.median(rhos), 0.0, LINE_CORR_MAX)) if rhos else 0.0


def estimate_noise(image, *, data_range: float | None = None) -> NoiseEstimate:
    """Estimate a plane's Poisson-Gaussian noise and its spatial correlation, blind.

    Parameters
    ----------
    image : ndarray (Y, X) of ints, uints or floats
        One noisy plane, at least 16 x 16 pixels. Not modified.
    data_range : float, optional
        Intensity (DN) mapped to 1.0, as in :func:`fm2s.denoise`: by default the dtype's
        maximum for integers (255 for uint8), 1.0 for floats in [0, 1], else the maximum.

    Returns
    -------
    NoiseEstimate
        Gain ``a``, read variance ``b`` (both on the [0, 1] scale and in DN), correlation
        width and derived quantities. Always finite; all zero for a constant plane.

    Raises
    ------
    ValueError
        Not a 2D numeric plane, smaller than 16 x 16, NaN or infinite values, negative
        floats, or a non-positive `data_range`.

    Notes
    -----
    Accuracy on synthetic 256 x 256 planes with smooth structure (``tests/test_estimate.py``):
    the noise std at the mean intensity within 12 %, the gain within 15 % where shot noise
    dominates, the correlation width within 0.15 px; with fine texture on every cell, white
    noise is still found white and its std within 8 %. The level sets only use windows without
    pixels at 0 or at ``data_range`` (clipped), so saturated and dark areas do not bias the
    fit. On the 100 FMD test_mix planes the estimated std is 0.68-1.25 times the std of
    noisy minus ground truth (``benchmarks/estimator_accuracy.py``,
    ``docs/noise-estimation.md``); correlated noise on a plane textured everywhere, and
    correlation weaker than ``WEAK_CORR``, is taken as white and underestimated, except for
    correlation along rows (``line_corr``, measured within 0.03 at 0.1-0.2).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = np.full((128, 128), 0.3)
    >>> noisy = rng.poisson(clean * 200) / 200 + rng.normal(0, 0.01, clean.shape)
    >>> est = estimate_noise(np.clip(noisy, 0, 1).astype(np.float32))
    >>> round(est.gain * 200, 1), round(est.corr, 1)  # doctest: +SKIP
    (1.0, 0.0)
    """

    plane = np.asarray(image)
    return fit_evidence([plane_evidence(plane, data_range=data_range)])


@dataclass(frozen=True)
class PlaneEvidence:
    """What one plane says about its noise: level-set energies, before any fit.

    Every quantity is on the plane's own [0, 1] scale (intensity / ``data_range``); evidence of
    planes with different scales (float planes divided by their maximum) is pooled in DN by
    :func:`fit_evidence`.

    Attributes
    ----------
    rows : tuple of (scale, mean, energy, count, noise_like)
        Per level set: bin side, mean intensity, robust high-pass energy, windows, and whether
        its windows look like noise alone (not texture).
    directions : tuple of ((E_x, x_like), (E_y, y_like))
        Per scale-1 level set: the robust energies of second differences along x and y.
    data_range : float
        Intensity (DN) mapped to 1.0.
    quantization_var : float
        Rounding variance on the [0, 1] scale (0 for float planes).
    mean : float
        Mean intensity of the plane, [0, 1] scale.
    constant : bool
        True for a constant plane (no evidence at all).
    """

    rows: tuple
    directions: tuple
    data_range: float
    quantization_var: float
    mean: float
    constant: bool

    def rescaled(self, data_range: float) -> PlaneEvidence:
        """The same evidence on the scale that maps `data_range` DN to 1.0."""
        if data_range == self.data_range:
            return self
        f = self.data_range / data_range
        rows = tuple((s, m * f, e * f * f, n, like) for s, m, e, n, like in self.rows)
        directions = tuple(((ex * f * f, xl), (ey * f * f, yl))
                           for (ex, xl), (ey, yl) in self.directions)
        return PlaneEvidence(rows, directions, float(data_range),
                             self.quantization_var * f * f, self.mean * f, self.constant)


def plane_evidence(image, *, data_range: float | None = None) -> PlaneEvidence:
    """Measure a plane's level-set noise energies (the input of :func:`fit_evidence`).

    Parameters and errors are those of :func:`estimate_noise`.
    """
    plane = np.asarray(image)
    if plane.dtype == bool or plane.dtype.kind not in "uif":
        msg = f"estimate_noise: unsupported dtype {plane.dtype}; expected an integer or float plane"
        raise ValueError(msg)
    if plane.ndim != 2:
        msg = f"estimate_noise: expected a 2D plane (Y, X), got shape {plane.shape}"
        raise ValueError(msg)
    if min(plane.shape) < 16:
        msg = f"estimate_noise: plane of shape {plane.shape} is too small; need 16 x 16 or more"
        raise ValueError(msg)
    if plane.dtype.kind == "f":
        if not np.isfinite(plane).all():
            msg = "estimate_noise: plane contains NaN or infinite values"
            raise ValueError(msg)
        if plane.min() < 0:
            msg = f"estimate_noise: float plane has negative values (min {plane.min():g})"
            raise ValueError(msg)
    scale = intensity_range(plane, data_range)
    x = plane.astype(np.float64) / scale
    quant = rounding_variance(plane, scale)
    low, high = float(x.min()), float(x.max())
    # Clipped pixels (at 0 or at the top of the range) have no noise: keep them out of the fit.
    top = 1.0 if (plane.dtype.kind in "ui" or data_range is not None) else np.inf
    valid = (x > 0.0) & (x < top)

    rows = []  # (scale, mean, energy, count, noise_like)
    directions = []  # scale 1: robust second-difference energies along x and y per level set
    if high > low:
        for s in SCALES:
            found, along = _level_sets(x, valid, s, rows_too=s == 1)
            rows += [(s, *r) for r in found]
            directions += along
        if len(rows) < 4:
            # Clipped pixels everywhere (a dark plane with many zeros): use every window;
            # clipping then biases the variance low, which is better than no estimate.
            everything = np.ones_like(valid)
            rows = [(s, *r) for s in SCALES for r in _level_sets(x, everything, s)[0]]
    return PlaneEvidence(tuple(rows), tuple(directions), float(scale), float(quant),
                         float(x.mean()), not high > low)


def fit_evidence(evidence, *, data_range: float | None = None,
                 mean: float | None = None) -> NoiseEstimate:
    """Fit one Poisson-Gaussian model with spatial correlation to the evidence of some planes.

    Parameters
    ----------
    evidence : sequence of PlaneEvidence
        Of one plane (:func:`estimate_noise`) or of many planes of one noise (pooled: every
        level set of every plane enters one weighted fit, and the correlation is chosen once).
    data_range : float, optional
        The scale of the result (default: the first plane's).
    mean : float, optional
        Mean intensity ([0, 1] scale) at which ``std`` is given (default: the mean of the
        planes' means).

    Returns
    -------
    NoiseEstimate
    """
    if not evidence:
        msg = "fit_evidence: no planes"
        raise ValueError(msg)
    scale = float(evidence[0].data_range if data_range is None else data_range)
    evidence = [e.rescaled(scale) for e in evidence]
    rows = [r for e in evidence for r in e.rows]
    directions = [d for e in evidence for d in e.directions]
    quant = float(max(e.quantization_var for e in evidence))
    line = _line_corr(directions, quant)
    fit = _robust_fit(rows, quant, line) if rows else None
    if fit is None:
        a = b = corr = res = line = 0.0
        used = 0
    else:
        a, b, corr, line, res = fit
        used = len(rows)
    mean = float(np.mean([e.mean for e in evidence])) if mean is None else float(mean)
    var_at_mean = max(a * mean + b, 0.0)
    return NoiseEstimate(
        gain=float(a), read_var=float(b), gain_dn=float(a * scale), read_var_dn=float(b * scale**2),
        corr=float(corr), neighbour_corr=neighbour_corr(corr),
        lowfreq_gain=lowfreq_gain(corr), mean=mean, std=float(np.sqrt(var_at_mean)),
        std_dn=float(np.sqrt(var_at_mean) * scale), data_range=float(scale),
        quantization_var=float(quant), levels=used, residual=float(res), line_corr=float(line),
    )


def _robust_fit(rows, quant: float, line: float):
    """:func:`_fit` of the untextured level sets; correlated noise only on clear evidence.

    Correlated noise is kept only where at least ``MIN_COARSE_LEVELS`` coarse level sets enter
    the fit and it fits the level sets clearly better than white noise (relative misfit below
    ``CORR_EVIDENCE`` times white noise's). On small planes (a few thousand pixels) one or two
    coarse level sets decide the width, and texture or a dark offset then passes for
    correlation: one capture of a field was fitted as correlated and the next as white (on
    a Nikon time-lapse of 64 x 64 planes, 18 of 53 frames, whose correlated fits missed the
    level sets by 0.82-0.91 against 0.32-0.39 for white noise).
    """
    chosen, corr = _untextured(rows)
    fit = _fit(chosen, corr, quant, line)
    if fit is None or fit[2] <= 0:
        return fit
    white = _fit(chosen, 0.0, quant, line)
    coarse = sum(1 for r in chosen if r[0] == 2)
    if white is not None and (coarse < MIN_COARSE_LEVELS or fit[4] > CORR_EVIDENCE * white[4]):
        return white
    return fit


def _untextured(rows):
    """(level sets to fit, corr or None): textured level sets left out where that is possible.

    ``corr`` is 0 (white) where every coarse level set is textured: the correlation is then
    not identifiable from this plane, and only the fine scale is fitted (texture makes noise
    look more correlated, never less, so this errs low). With too few level sets to judge,
    all are kept.
    """
    noise_like = np.array([r[4] for r in rows], dtype=bool)
    coarse = np.array([r[0] for r in rows]) == 2
    if (noise_like & ~coarse).sum() >= 2:
        if (noise_like & coarse).sum() >= 2:
            return [r for r, k in zip(rows, noise_like, strict=True) if k], None
        if (coarse & ~noise_like).sum() >= 2:
            return [r for r, k in zip(rows, noise_like & ~coarse, strict=True) if k], 0.0
    return rows, None


def _fit(rows, corr: float | None, quant: float, line_corr: float = 0.0):
    """(a, b, corr, line_corr, residual): weighted least squares of the level-set energies.

    `corr` is chosen by comparing the scales (:func:`_choose_corr`) unless given; then
    ``(a, b)`` is solved in closed form. Noise about as white as texture allows (neighbour
    correlation below ``WEAK_CORR``) is taken to have the row correlation `line_corr` too;
    otherwise the returned `line_corr` is 0.
    """
    scales = np.array([r[0] for r in rows])
    means = np.array([r[1] for r in rows])
    var = np.array([r[2] for r in rows])
    count = np.array([r[3] for r in rows], dtype=np.float64)
    # Rounding noise is white: its share at scale s is quant * 36 / s^2.
    white = np.array([_chain_gain(0.0, int(s)) for s in scales]) * quant
    target = var - white
    # A variance estimate from n samples has relative error ~ sqrt(2/n): weight by count / var^2.
    weight = count / np.maximum(var, 1e-20) ** 2
    if corr is None:
        corr = _choose_corr(scales, means, var, quant)
    best = None
    for width in (CORR_GRID if corr is None else (corr,)):
        line = line_corr if neighbour_corr(float(width)) < WEAK_CORR else 0.0
        gain = np.array([_chain_gain(float(width), int(s), line) for s in scales])
        design = np.stack([gain * means, gain], axis=1)
        sw = np.sqrt(weight)
        coef, *_ = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)
        a, b = coef
        if a < 0:  # no shot noise: fit b alone
            a = 0.0
            b = float((weight * gain * target).sum() / (weight * gain * gain).sum())
        # The modelled variance must be >= 0 over the fitted range.
        b = max(b, -a * float(means.min()))
        model = gain * (a * means + b) + white
        cost = float((weight * (var - model) ** 2).sum() / weight.sum())
        rel = float(np.sqrt((count * ((var - model) / np.maximum(var, 1e-20)) ** 2).sum()
                            / count.sum()))
        if best is None or cost < best[0] - 1e-12 * abs(best[0]):
            best = (cost, float(a), float(b), float(width), line, rel)
    if best is None or not np.isfinite(best[1:3]).all():
        return None
    return best[1:]


def _choose_corr(scales, means, var, quant: float):
    """Correlation width from the ratio of the scale-2 to the scale-1 energies, or None.

    For each candidate width, the scale-1 level sets give the pixel variance at their
    intensities; interpolated to the scale-2 level sets it predicts their energies. Texture
    adds energy to both scales, but relatively more to the coarser one (its spectrum falls
    with frequency), so on textured level sets the observed/predicted ratio exceeds 1 at the
    true width, which would make the noise look correlated. The width is therefore set by
    the least textured level sets: the one where a low quantile of the ratios is 1. Widths
    whose neighbour correlation is below ``WEAK_CORR`` are returned as 0 (white).
    """
    one, two = scales == 1, scales == 2
    if one.sum() < 2 or two.sum() < 2:
        return None
    order = np.argsort(means[one])
    m1, e1 = means[one][order], var[one][order]
    m2, e2 = means[two], var[two]
    stat = []
    for corr in CORR_GRID:
        g1, g2 = _chain_gain(float(corr), 1), _chain_gain(float(corr), 2)
        w1, w2 = _chain_gain(0.0, 1) * quant, _chain_gain(0.0, 2) * quant
        pixel = np.maximum(e1 - w1, 0.0) / g1
        predicted = g2 * np.interp(m2, m1, pixel) + w2
        ratio = e2 / np.maximum(predicted, 1e-30)
        stat.append(float(np.quantile(ratio, _CORR_QUANTILE)))
    stat = np.log(np.maximum(np.array(stat), 1e-30))
    corr = float(CORR_GRID[int(np.argmin(np.abs(stat)))])
    return corr if neighbour_corr(corr) >= WEAK_CORR else 0.0


