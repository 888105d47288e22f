"""Classical estimates of Poisson-Gaussian planes on the generalized Anscombe transform.

Non-local means, the classical and the guided estimates of the ``sure-nlm`` blend
(:func:`fm2s.blend.sure_weights`): no training; on a CPU as fused kernels
(:mod:`fm2s.cpu_kernels`, numba: about 0.02 s per pass over a 512 x 512 plane with white
noise on one AVX-512 core, 0.16 s with the 11 x 11 patches of a wide-field camera's
correlated noise), elsewhere in torch on the network's device (on that core 0.04-0.06 s, and
0.2-0.3 s; about 20 and 17 one-operation passes over the plane for each of the 84 offsets of
half the search window). Their errors differ from the network's: they keep fine repeated
texture that the network smooths, and average the broad correlated noise of wide-field
cameras over larger patches than the network sees.

The empirical Wiener filter of :func:`vst_wiener` refines that blend on white-noise planes
(the ``sure-nlm-wiener`` blend), as the second step of BM3D refines its first: on a CPU as
one fused kernel (:func:`fm2s.cpu_kernels.wiener_sums`: about 0.025 s per 512 x 512 plane on
one core, the kernel 0.018 of it; floor 0.011 s), elsewhere in torch, its DCTs as matrix
products (0.03-0.04 s on that core).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from scipy import signal

from .plane_noise import noise_kernel

__all__ = ["generalized_anscombe", "inverse_generalized_anscombe", "nlm_window", "vst_nlm",
           "vst_wiener", "dct_noise_variance"]

#: Non-local means on the stabilised plane (unit noise variance), for white noise: the
#: parameters of scikit-image's own example (5 x 5 patches, search distance 6, h = 0.8 sigma),
#: fast mode.
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
NLM_H = 0.8
#: On correlated noise the patch grows to hold as many independent noise samples as a 5 x 5
#: patch does on white noise (side ``sqrt(25 G)`` for the noise's ``lowfreq_gain`` G, as
#: :func:`fm2s.estimate.median_window` does for the median), up to this side; the search
#: distance grows with it (side + 1).
NLM_PATCH_MAX = 15
#: Classical non-local means (scikit-image's rule): pairs of pixels beyond this patch
#: distance weigh nothing.
NLM_CUTOFF = 5.0
#: Side of the empirical Wiener filter's square DCT patches (BM3D's second step: 8).
WIENER_PATCH = 8
#: Kaiser window (beta) that weighs each patch's pixels when patches are put back together.
WIENER_KAISER_BETA = 2.0
#: The Wiener filter handles the patches of a band of rows at a time: at most this many DCT
#: coefficients (float32) per band.
WIENER_BATCH_COEFFICIENTS = 2**22


def nlm_window(lowfreq_gain: float = 1.0) -> tuple[int, int]:
    """``(patch_size, patch_distance)`` of :func:`vst_nlm` for noise of `lowfreq_gain`
    (:func:`fm2s.noise.lowfreq_gain`; 1 for white noise: 5 x 5 patches, distance 6)."""
    side = np.sqrt(NLM_PATCH_SIZE**2 * max(lowfreq_gain, 1.0))
    width = 2 * int(np.floor((side - 1.0) / 2.0 + 0.5)) + 1  # the nearest odd side
    width = int(min(max(width, NLM_PATCH_SIZE), NLM_PATCH_MAX))
    return width, width + NLM_PATCH_DISTANCE - NLM_PATCH_SIZE


def generalized_anscombe(z: np.ndarray, gain: float, read_var: float) -> np.ndarray:
    """Generalized Anscombe transform of ``z`` (noise variance ``gain * u + read_var`` at the
    intensity ``u``): noise of standard deviation about 1 (float64).

    Parameters
    ----------
    z : ndarray
        The noisy plane, in the units of `gain` and `read_var`.
    gain : float
        Variance per unit of intensity (> 0).
    read_var : float
        Variance at zero intensity (>= 0; a dark offset may make it negative, floored at the
        transform's domain).
    """
    if gain <= 0:
        raise ValueError(f"generalized_anscombe: gain must be > 0, got {gain}")
    return 2.0 * np.sqrt(np.maximum(z / gain + 3.0 / 8.0 + read_var / gain**2, 0.0))


def inverse_generalized_anscombe(d: np.ndarray, gain: float, read_var: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of
    :func:`generalized_anscombe` (Makitalo & Foi, IEEE TIP 22(1), 2013), float64, >= 0."""
    d = np.maximum(d, 2.0 * np.sqrt(3.0 / 8.0))  # below the transform of 0 the formula blows up
    r = np.sqrt(1.5)
    # d^2 / 4 + r / (4 d) - 11 / (8 d^2) + 5 r / (8 d^3) - 1 / 8 - read_var / gain^2, in
    # powers of 1 / d (Horner): a third of the passes over the plane, no float power
    inverse = 1.0 / d
    u = inverse * (5 * r / 8)
    u -= 11 / 8
    u *= inverse
    u += r / 4
    u *= inverse
    u += 0.25 * d * d
    u -= 1 / 8 + read_var / gain**2
    return np.maximum(u, 0.0) * gain


def vst_nlm(plane: np.ndarray, gain: float, read_var: float, lowfreq_gain: float = 1.0, *,
            guide: np.ndarray | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """Non-local means of a Poisson-Gaussian plane through a variance-stabilising transform.

    Every pixel becomes a weighted mean of the pixels within the search distance, weighted by
    about ``exp(-max(d - 2, 0) / h^2)`` for the mean squared difference ``d`` of the two
    pixels' stabilised patches and ``h = NLM_H`` (scikit-image's fast mode,
    ``skimage.restoration.denoise_nl_means``, reproduced in torch: :func:`_nl_means`). With a
    `guide`, the patches are the guide's, taken as noise-free: ``exp(-d / h^2)``, over the
    plane's own pixels only. Both compute with torch, on `device`.

    Parameters
    ----------
    plane : ndarray, shape (H, W)
        The noisy plane.
    gain, read_var : float
        Its noise model: variance ``gain * u + read_var`` at the intensity ``u``, in the
        plane's units. With no signal-dependent part (``gain`` below a millionth of the read
        noise's standard deviation per unit) the plane is only scaled to unit noise.
    lowfreq_gain : float
        The noise's spatial correlation as :func:`fm2s.noise.lowfreq_gain` (1: white noise);
        it sets the patch size and search distance (:func:`nlm_window`).
    guide : ndarray, shape (H, W), optional
        An estimate of the clean plane, in the plane's units, whose patches decide which
        pixels are alike. None: the plane itself (classical non-local means).
    device : str or torch.device
        Where the guided version computes.

    Returns
    -------
    ndarray, float64, shape (H, W)
        The estimate, in the plane's units. Beyond the patch size, the noise's spatial
        correlation is not modelled.
    """
    plane = np.asarray(plane, dtype=np.float64)
    if plane.ndim != 2:
        raise ValueError(f"vst_nlm: expected a 2D plane, got shape {plane.shape}")
    if guide is not None and np.shape(guide) != plane.shape:
        raise ValueError(f"vst_nlm: guide of shape {np.shape(guide)} for a plane of shape "
                         f"{plane.shape}")
    forward, inverse = _stabiliser(gain, read_var, "vst_nlm")
    stabilised = forward(plane)
    patch_size, patch_distance = nlm_window(lowfreq_gain)
    if guide is None:
        smoothed = _nl_means(stabilised, patch_size, patch_distance, torch.device(device))
    else:
        smoothed = _guided_nl_means(stabilised, forward(np.asarray(guide, dtype=np.float64)),
                                    patch_size, patch_distance, torch.device(device))
    return inverse(smoothed)


def _stabiliser(gain: float, read_var: float, caller: str):
    """``(forward, inverse)``: the generalized Anscombe transform of the noise model and its
    inverse, or a plain scaling to unit variance without a signal-dependent part."""
    if gain < 0:
        raise ValueError(f"{caller}: no noise model in gain={gain}, read_var={read_var}")
    if gain <= 1e-6 * np.sqrt(max(read_var, 0.0)):
        if read_var <= 0:
            raise ValueError(f"{caller}: no noise model in gain={gain}, read_var={read_var}")
        std = np.sqrt(read_var)
        return (lambda x: x / std), (lambda d: d * std)
    return (lambda x: generalized_anscombe(x, gain, read_var),
            lambda d: inverse_generalized_anscombe(d, gain, read_var))


@cache
def _dct_cosines(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix of `size` points: row ``k`` is the ``k``-th cosine."""
    return scipy.fft.dct(np.eye(size), norm="ortho", axis=0)


def dct_noise_variance(line_corr: float = 0.0, patch: int = WIENER_PATCH) -> np.ndarray:
    """Variance of each coefficient of the orthonormal 2-D DCT of a ``patch x patch`` patch of
    unit-variance noise with the scan-line correlation `line_corr`
    (:func:`fm2s.estimate.noise_kernel`; 0: white noise, every coefficient 1), shape
    ``(patch, patch)``."""
    basis = _dct_cosines(patch)
    kernel = noise_kernel(0.0, line_corr)
    variance = np.empty((patch, patch))
    flipped = kernel[::-1, ::-1]
    for u in range(patch):
        for v in range(patch):
            # A coefficient <b, k * w> of white w is <k' * b, w>: its variance is ||k' * b||^2.
            variance[u, v] = (signal.convolve2d(np.outer(basis[u], basis[v]), flipped) ** 2).sum()
    return variance


def vst_wiener(plane: np.ndarray, pilot: np.ndarray, gain: float, read_var: float,
               line_corr: float = 0.0, *, device: str | torch.device = "cpu") -> np.ndarray:
    """Empirical Wiener filter of a Poisson-Gaussian plane in sliding DCT patches, with the
    spectrum of a pilot estimate, through a variance-stabilising transform.

    On the stabilised plane (unit noise variance, :func:`generalized_anscombe`), every
    ``WIENER_PATCH``-square patch's 2-D DCT coefficients ``c`` are shrunk by
    ``p^2 / (p^2 + s^2)``, where ``p`` is the same coefficient of the pilot's patch and ``s^2``
    the noise's variance there (:func:`dct_noise_variance`); the patches (one at every pixel)
    are put back with a Kaiser window and the weight ``1 / sum(shrink^2 s^2)`` of each patch,
    as in the second step of BM3D (Dabov et al., IEEE TIP 16(8), 2007) without its block
    matching. The pilot's errors then cost less than they would as the output: the filter
    keeps what the pilot says is signal from the plane itself.

    The transforms are separable (:func:`_wiener_sums`): 16 multiply-adds per coefficient
    each way instead of the 64 of a 2-D one, 0.93 GFLOP for a 512 x 512 plane (analyses of
    the plane and the pilot, one synthesis): 0.01 s at one AVX-512 core's float32 GEMM peak
    (about 100 GFLOP/s). On a CPU one fused kernel computes them with the shrinkage, a row
    of patches at a time (:func:`fm2s.cpu_kernels.wiener_sums`, 0.018 s); elsewhere they run
    as matrix products (near 40 GFLOP/s: their inner dimension is 8) and the shrinkage as
    torch operations in place, over bands of patches that stay in cache.

    Parameters
    ----------
    plane : ndarray, shape (H, W)
        The noisy plane; both sides at least ``WIENER_PATCH``.
    pilot : ndarray, shape (H, W)
        An estimate of the clean plane, in the plane's units.
    gain, read_var : float
        The noise model, as for :func:`vst_nlm`.
    line_corr : float
        Lag-1 correlation of the noise along rows (:attr:`fm2s.estimate.NoiseEstimate.line_corr`);
        noise correlated otherwise is not modelled.
    device : str or torch.device
        Where it computes.

    Returns
    -------
    ndarray, float64, shape (H, W)
        The estimate, in the plane's units.
    """
    plane = np.asarray(plane, dtype=np.float64)
    if plane.ndim != 2 or min(plane.shape) < WIENER_PATCH:
        raise ValueError(f"vst_wiener: expected a 2D plane of at least {WIENER_PATCH} x "
                         f"{WIENER_PATCH} pixels, got shape {plane.shape}")
    if np.shape(pilot) != plane.shape:
        raise ValueError(f"vst_wiener: pilot of shape {np.shape(pilot)} for a plane of shape "
                         f"{plane.shape}")
    forward, inverse = _stabiliser(gain, read_var, "vst_wiener")
    device = torch.device(device)
    size = WIENER_PATCH

    def padded(x):  # every patch that holds a pixel of the plane, reflected at the borders
        t = torch.as_tensor(forward(x), dtype=torch.float32, device=device)[None, None]
        return F.pad(t, (size - 1,) * 4, mode="reflect")[0, 0]

    total, weights = _wiener_sums(padded(plane), padded(np.asarray(pilot, dtype=np.float64)),
                                  dct_noise_variance(line_corr, size))
    return inverse((total / weights).double().cpu().numpy())


#: On a CPU, the Wiener filter takes this many rows of patches at a time: their coefficients
#: (0.5 MB a row of 512 patches) then stay in the core's cache between passes.
WIENER_CPU_BAND = 4
#: Elsewhere (a GPU), at most this many: the banded matrix that puts a band's patches back
#: along columns (:func:`_band_matrix`) holds ``(band + s - 1) / s`` times the products needed.
WIENER_GPU_BAND = 32
#: Pixels put back along a row per matrix product (:func:`_wiener_sums`).
WIENER_BACK_BLOCK = 16
#: Rows of slack in :func:`_wiener_sums`' buffers of rows, so that they slide (a copy of the
#: rows still in use to the front) once every few bands only.
WIENER_SLACK_ROWS = 48


def _band_matrix(taps: np.ndarray, n: int) -> np.ndarray:
    """``(n + s - 1, n s)``: row ``r + i``, column ``(r, k)`` holds ``taps[i, k]`` (``taps`` of
    shape (s, s)), so that ``matrix @ x`` adds ``taps @ x[r]`` to the rows ``r`` to ``r + s`` for
    each of the ``n`` blocks of ``s`` rows of ``x``."""
    size = len(taps)
    matrix = np.zeros((n + size - 1, n, size))
    for r in range(n):
        matrix[r:r + size, r, :] = taps
    return matrix.reshape(n + size - 1, n * size)


def _wiener_sums(values: torch.Tensor, guide: torch.Tensor, noise_var: np.ndarray
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums of :func:`vst_wiener` on its padded, stabilised planes (float32, shape
    ``(H + 2 (s - 1), W + 2 (s - 1))`` for patches of side ``s``): the windowed, weighted
    patches put back, and the windowed weights, each of shape (H, W).

    Patch ``(r, c)`` (its top left corner in the padded plane) has the coefficients
    ``C[r, u, c, v] = sum_ij cos[u, i] cos[v, j] x[r + i, c + j]``. Along rows first, for every
    patch of a row of pixels at once: ``x`` in overlapping windows of ``2 s`` pixels, ``s``
    apart (twice the row, copied), times one ``(2 s, s^2)`` matrix gives ``h[y, c, v]``. Then
    along columns, ``C[r] = cos @ h[r:r + s]`` for each row of patches, the rows ``r`` to
    ``r + s`` of ``h`` being a plain strided view: a batch of ``(s, s) @ (s, (W + s - 1) s)``
    products, nothing copied. Putting back is the adjoint in reverse order:
    ``taper_cos.T @ C'[r]`` (``taper_cos[u, i] = cos[u, i] kaiser[i]``) added to the rows ``r``
    to ``r + s``, for a band's rows of patches at once by one banded matrix
    (:func:`_band_matrix`); once a row has all its patches, windows of ``(k + s - 1) s`` of its sums
    every ``k s`` times one ``((k + s - 1) s, k)`` matrix give ``k = WIENER_BACK_BLOCK`` pixels.

    A band of rows of patches at a time (``WIENER_CPU_BAND`` on a CPU): its coefficients are
    shrunk in place, and only ``band + s - 1`` rows of ``h`` and of the sums are kept, so that
    the working set stays in cache and no plane-sized buffer is written twice.
    """
    device = values.device
    size = len(noise_var)
    cosines = _dct_cosines(size)
    window = np.kaiser(size, WIENER_KAISER_BETA)
    height, width = values.shape[0] - 2 * (size - 1), values.shape[1] - 2 * (size - 1)
    corners = height + size - 1  # patch positions along each column of the padded plane
    across = width + size - 1  # along each row
    count = across * size  # coefficients (c, v) of a row of patches, per u
    if fused_kernels(device) and size == 8:
        total, patch_weights = _wiener_sums_fused(values.numpy(), guide.numpy(), noise_var,
                                                  cosines, window)
        return torch.from_numpy(total), _window_sums_2d(torch.from_numpy(patch_weights), window,
                                                        height, width)
    f32 = dict(dtype=torch.float32, device=device)
    band = WIENER_CPU_BAND if device.type == "cpu" else min(
        WIENER_GPU_BAND, max(1, WIENER_BATCH_COEFFICIENTS // (size * count)))
    band = min(band, corners)
    reach = band + size - 1  # rows of h and of the sums that a band touches
    rows_h = _RowTransform(values, cosines, reach)
    guide_h = _RowTransform(guide, cosines, reach)
    back = _RowSynthesis(cosines * window, width, WIENER_BACK_BLOCK, device)
    cos = torch.as_tensor(cosines, **f32)
    # s^2 at (u, c, v); for white noise 1 (as float32: the products by 1 are left out)
    white = bool(np.all(noise_var.astype(np.float32) == 1.0))
    variance = None if white else torch.as_tensor(
        np.repeat(noise_var[:, None, :], across, axis=1).reshape(size, count),
        **f32).repeat(band, 1, 1)
    coefficients_b, spectrum_b, spare_b = (torch.empty((band, size, count), **f32)
                                           for _ in range(3))
    ones = torch.ones((band, 1, size), **f32)
    # rows start .. start + len of the padded plane, zero beyond the rows that bands reached
    sums = torch.zeros((reach + WIENER_SLACK_ROWS, count), **f32)
    start = 0
    total = torch.empty((height, width), **f32)
    patch_weights = torch.empty((corners, across), **f32)
    spreads = {}  # (n + s - 1, n s): rows r + i of the padded plane get taper_cos[i] @ C'[r]
    for top in range(0, corners, band):
        n = min(band, corners - top)
        coefficients, spectrum, spare = coefficients_b[:n], spectrum_b[:n], spare_b[:n]
        for h, out in ((rows_h.advance(top, n), coefficients), (guide_h.advance(top, n), spectrum)):
            rows = h.as_strided((n, size, h.shape[1]), (h.stride(0), h.stride(0), 1))
            torch.bmm(cos.expand(n, size, size), rows[:, :, :count], out=out)
        # shrink = p^2 / (p^2 + s^2), weight = 1 / sum(shrink^2 s^2): with out= and in place,
        # so that the band's three arrays stay in cache
        if white:
            torch.addcmul(ones[0, 0, 0], spectrum, spectrum, out=spare)
        else:
            torch.addcmul(variance[:n], spectrum, spectrum, out=spare)
        shrink = torch.div(spectrum.square_(), spare, out=spectrum)
        energy = torch.square(shrink, out=spare)
        if not white:
            energy.mul_(variance[:n])
        weight = torch.bmm(ones[:n], energy).view(n, across, size).sum(-1)
        weight = weight.clamp_min_(1e-8).reciprocal_()
        patch_weights[top:top + n] = weight
        shrink.mul_(weight.repeat_interleave(size, dim=1)[:, None])
        coefficients.mul_(shrink)
        if top + reach - start > len(sums):  # slide: the rows still open to the front
            sums[:size - 1] = sums[top - start:top - start + size - 1].clone()
            sums[size - 1:].zero_()
            start = top
        if n not in spreads:
            spreads[n] = torch.as_tensor(_band_matrix((cosines * window).T, n), **f32)
        sums[top - start:top - start + n + size - 1].addmm_(spreads[n],
                                                            coefficients.view(n * size, count))
        # rows top .. top + n now have all their patches: along rows, for the inner ones
        first, last = max(top, size - 1), min(top + n, size - 1 + height)
        if first < last:
            back(sums[first - start:last - start], out=total[first - size + 1:last - size + 1])
    return total, _window_sums_2d(patch_weights, window, height, width)


def _wiener_sums_fused(values: np.ndarray, guide: np.ndarray, noise_var: np.ndarray,
                       cosines: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_wiener_sums` on a CPU for patches of side 8: :func:`fm2s.cpu_kernels.wiener_sums`
    on bands of rows, at least one per thread of torch's, in parallel (the kernel releases the
    GIL). A band's output rows need the patches that reach them, which it computes again (7
    rows of patches); each output row's sums are then the same whatever the bands, so the
    result does not depend on the number of threads. Returns (total, patch weights) as
    numpy arrays."""
    from . import cpu_kernels  # numba: imported where it is used (0.2 s)

    size = 8
    height, width = values.shape[0] - 2 * (size - 1), values.shape[1] - 2 * (size - 1)
    total = np.empty((height, width), dtype=np.float32)
    patch_weights = np.empty((height + size - 1, width + size - 1), dtype=np.float32)
    single = [np.ascontiguousarray(a, dtype=np.float32)
              for a in (cosines, cosines * window, noise_var)]
    threads = max(1, torch.get_num_threads())

    def run(band):
        top, bottom = band[:2]
        rows = slice(top, bottom + 2 * (size - 1))  # padded rows of the band's patches
        weights = np.empty((bottom - top + size - 1, width + size - 1), dtype=np.float32)
        cpu_kernels.wiener_sums(values[rows], guide[rows], *single, total[top:bottom], weights)
        own = bottom - top + (size - 1 if bottom == height else 0)  # rows no other band writes
        patch_weights[top:top + own] = weights[:own]

    bands = _bands(height, width, 0, threads)
    _each_band(run, bands, threads)
    return total, patch_weights


class _RowTransform:
    """``h[y, c, v] = sum_j cos[v, j] x[y, c + j]`` for every patch column ``c`` of the rows
    of ``x`` (rows, columns) that a band of rows of patches needs (``reach`` rows): windows
    of ``2 s`` pixels every ``s`` pixels (the rows twice, copied) times a ``(2 s, s^2)``
    matrix that gives ``s`` patch columns' ``s`` coefficients each. Each row is transformed
    once, into a buffer that slides."""

    def __init__(self, x: torch.Tensor, cosines: np.ndarray, reach: int) -> None:
        size = len(cosines)
        self.size = size
        self.blocks = -(-(x.shape[1] - size + 1) // size)
        matrix = np.zeros((2 * size, size, size))  # (pixel 8a + m, patch column 8a + b, v)
        for b in range(size):
            matrix[b:b + size, b, :] = cosines.T
        self.matrix = torch.as_tensor(matrix.reshape(2 * size, size * size), dtype=x.dtype,
                                      device=x.device)
        self.x = F.pad(x, (0, (self.blocks + 1) * size - x.shape[1]))
        self.h = torch.empty((reach + WIENER_SLACK_ROWS, self.blocks * size * size),
                             dtype=x.dtype, device=x.device)
        self.start = self.done = 0  # the plane's rows in h[0], and transformed so far

    def advance(self, top: int, n: int) -> torch.Tensor:
        """The rows ``top`` to ``top + n + s - 1`` of ``h``, for bands in order."""
        end = top + n + self.size - 1
        if end - self.start > len(self.h):  # slide: the rows still in use to the front
            keep = self.done - top
            self.h[:keep] = self.h[top - self.start:self.done - self.start].clone()
            self.start = top
        new = end - self.done
        rows = self.x[self.done:end]
        windows = rows.as_strided((new, self.blocks, 2 * self.size),
                                  (rows.stride(0), self.size, 1))
        offset = self.done - self.start
        torch.mm(windows.reshape(new * self.blocks, 2 * self.size), self.matrix,
                 out=self.h[offset:offset + new].view(new * self.blocks, -1))
        self.done = end
        return self.h[top - self.start:end - self.start]


class _RowSynthesis:
    """``out[y, x] = sum_cv tapered[v, x + s - 1 - c] r[y, c, v]`` over the patch columns ``c``
    that hold the inner pixel ``x`` (0 <= x < width) of padded rows ``r`` of shape
    (rows, (width + s - 1) s): for ``k`` pixels at a time, windows of ``(k + s - 1) s``
    coefficients every ``k s`` times one ``((k + s - 1) s, k)`` matrix."""

    def __init__(self, tapered: np.ndarray, width: int, k: int, device: torch.device) -> None:
        size = len(tapered)
        self.size, self.k, self.width = size, k, width
        self.blocks = -(-width // k)
        self.span = (k + size - 1) * size
        matrix = np.zeros((k + size - 1, size, k))  # (patch column 16a + m, v, pixel 16a + p)
        for p in range(k):
            for m in range(p, p + size):  # the patches that hold pixel p: j = p + s - 1 - m
                matrix[m, :, p] = tapered[:, p + size - 1 - m]
        self.matrix = torch.as_tensor(matrix.reshape(self.span, k), dtype=torch.float32,
                                      device=device)

    def __call__(self, r: torch.Tensor, out: torch.Tensor) -> None:
        rows, count = r.shape
        pad = (self.blocks - 1) * self.k * self.size + self.span - count
        r = F.pad(r, (0, pad))
        windows = r.as_strided((rows, self.blocks, self.span), (r.stride(0), self.k * self.size, 1))
        product = torch.mm(windows.reshape(rows * self.blocks, self.span), self.matrix)
        out.copy_(product.view(rows, self.blocks * self.k)[:, :self.width])


def _window_sums_2d(weights: torch.Tensor, window: np.ndarray, height: int,
                    width: int) -> torch.Tensor:
    """``sum_ij window[i] window[j] weights[y + s - 1 - i, x + s - 1 - j]``: the windowed
    weights of the patches that hold each inner pixel ``(y, x)``, shape (height, width)."""
    size = len(window)
    rows = weights[size - 1:size - 1 + height] * float(window[0])
    for i in range(1, size):
        rows.add_(weights[size - 1 - i:size - 1 - i + height], alpha=float(window[i]))
    out = rows[:, size - 1:size - 1 + width] * float(window[0])
    for j in range(1, size):
        out.add_(rows[:, size - 1 - j:size - 1 - j + width], alpha=float(window[j]))
    return out


def _guided_nl_means(values: np.ndarray, guide: np.ndarray, patch_size: int,
                     patch_distance: int, device: torch.device) -> np.ndarray:
    """Fast non-local means (one pass per offset, patch distances by box sums) of `values`
    with the patch similarities of the noise-free `guide`: weights ``exp(-d / h^2)``.

    Only the plane's own pixels take part: each pixel averages the pixels within the search
    distance, and ``d`` is the mean squared difference over the pairs of patch pixels that both
    lie in the plane. (A reflected pixel near the border would often be the pixel itself or
    its neighbour again, and average its noise twice.) ``d`` is symmetric, the patches at ``p``
    and ``p + o`` being those at ``q = p + o`` and ``q - o``: half of the offsets are computed.
    On a CPU, :func:`fm2s.cpu_kernels.guided_nl_means_band` computes it.
    """
    height, width = values.shape
    reach, half = min(patch_distance, height - 1, width - 1), patch_size // 2
    scale = -1.0 / NLM_H**2
    if fused_kernels(device):
        from . import cpu_kernels  # numba: imported where it is used (0.2 s)

        def fused(z, g):
            return cpu_kernels.guided_nl_means_band(z, g, half, reach, np.float32(scale))

        planes = [np.ascontiguousarray(a, dtype=np.float32) for a in (values, guide)]
        return _in_bands_fused(fused, planes, reach + half).astype(np.float64)

    def means(z, g):  # one band of rows
        total, weights = z.clone(), torch.ones_like(z)  # the pixel itself, with weight 1
        # The squared differences go inside a border of `half` zeros, whose box sums are then
        # those of the plane's own pixels: two passes fewer per offset than padding each
        # axis in turn, the same floats.
        squares = torch.zeros((z.shape[0] + 2 * half, z.shape[1] + 2 * half), dtype=z.dtype,
                              device=device)
        for here, there in _offset_pairs(*z.shape, reach):
            count_rows, count_cols = (axis.stop - axis.start for axis in here)
            rows = _window_factors(count_rows, patch_size, scale, device)
            cols = _window_factors(count_cols, patch_size, 1.0, device)
            framed = squares[:count_rows + 2 * half, :count_cols + 2 * half]
            if half:  # the border, where the last offset's pixels may lie
                framed[:half].zero_()
                framed[-half:].zero_()
                framed[:, :half].zero_()
                framed[:, -half:].zero_()
            inside = framed[half:half + count_rows, half:half + count_cols]
            torch.sub(g[here], g[there], out=inside).square_()
            # -d / h^2: the box sums of the squared differences over the window's pixels,
            # times scale / rows and 1 / columns of the window in the plane
            distance = _box_sums(framed, -half, half, pad=False)
            if not half:  # the box is the pixel: a view of `squares`
                distance = distance.clone()
            weight = distance.mul_(rows[:, None]).mul_(cols).exp_()
            _add_pair(total, weights, z, weight, here, there)
        return total / weights

    planes = [torch.as_tensor(a, dtype=torch.float32, device=device) for a in (values, guide)]
    return _in_bands(means, planes, reach + half).double().cpu().numpy()


def _offset_pairs(height: int, width: int, reach: int):
    """``(here, there)``: for each offset ``o`` of one half of the search window (up to `reach`
    pixels each way; ``-o`` is the other half), the slices of the pixels ``x`` and ``x + o``
    of a ``height x width`` plane where both lie in it."""
    for dy in range(reach + 1):
        rows = slice(0, height - dy), slice(dy, height)
        for dx in range(-reach if dy else 1, reach + 1):
            cols = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (
                slice(-dx, width), slice(0, width + dx))
            yield (rows[0], cols[0]), (rows[1], cols[1])


def _add_pair(total: torch.Tensor, weights: torch.Tensor, values: torch.Tensor,
              weight: torch.Tensor, here: tuple, there: tuple) -> None:
    """``x`` takes the value at ``x + o``, and ``x + o`` the value at ``x``, with the same
    weight (the patch distance is symmetric)."""
    total[here].addcmul_(weight, values[there])
    total[there].addcmul_(weight, values[here])
    weights[here] += weight
    weights[there] += weight


#: Non-local means on a CPU works on bands of rows of about this many pixels (plus margins),
#: which stay in cache: a 2048 x 2048 plane then costs 16 times a 512 x 512 one, not 25 times.
NLM_BAND_PIXELS = 2**18


def _in_bands(means, planes: list[torch.Tensor], margin: int) -> torch.Tensor:
    """``means(*planes)``, computed on bands of rows with `margin` rows of context on each side
    where the planes are on a CPU (on a GPU, at once): each band's inner rows are exact when
    every output pixel depends only on the rows within `margin` of it."""
    height, width = planes[0].shape
    bands = _bands(height, width, margin)
    if planes[0].device.type != "cpu" or len(bands) == 1:
        return means(*planes)
    out = torch.empty_like(planes[0])
    for top, bottom, low, high in bands:
        out[top:bottom] = means(*(p[low:high] for p in planes))[top - low:bottom - low]
    return out


def _bands(height: int, width: int, margin: int, threads: int = 1
           ) -> list[tuple[int, int, int, int]]:
    """``(top, bottom, low, high)`` of each band of rows of a ``height x width`` plane: rows
    ``top .. bottom - 1``, read with `margin` rows of context (``low .. high - 1``). Bands
    hold at most ``NLM_BAND_PIXELS`` pixels (at least 64 rows), and there are at least
    `threads` of them where the plane has the rows."""
    rows = max(64, min(NLM_BAND_PIXELS // max(width, 1), -(-height // threads)))
    return [(top, min(top + rows, height), max(0, top - margin),
             min(height, top + rows + margin)) for top in range(0, height, rows)]


def fused_kernels(device: torch.device) -> bool:
    """Whether non-local means and the Wiener filter on `device` run the fused kernels of
    :mod:`fm2s.cpu_kernels`: on a CPU, unless ``FM2S_FUSED_KERNELS=0`` in the
    environment (torch's operations, which a GPU runs: for comparisons)."""
    return device.type == "cpu" and os.environ.get("FM2S_FUSED_KERNELS", "1") != "0"


def _in_bands_fused(kernel, planes: list[np.ndarray], margin: int) -> np.ndarray:
    """``kernel(*planes)`` (float32 arrays, a numba kernel of :mod:`fm2s.cpu_kernels`) on
    bands of rows with `margin` rows of context, as :func:`_in_bands` does: bands of at most
    ``NLM_BAND_PIXELS`` pixels, and at least one per thread of torch's (``torch.get_num_threads``),
    computed in parallel (the kernels release the GIL). Each band's inner rows are exact
    whatever the bands, so the result does not depend on the number of threads."""
    height, width = planes[0].shape
    threads = max(1, torch.get_num_threads())
    bands = _bands(height, width, margin, threads)
    if len(bands) == 1:
        return kernel(*planes)
    out = np.empty((height, width), dtype=np.float32)

    def run(band):
        top, bottom, low, high = band
        out[top:bottom] = kernel(*(p[low:high] for p in planes))[top - low:bottom - low]

    _each_band(run, bands, threads)
    return out


def _each_band(run, bands: list, threads: int) -> None:
    """``run(band)`` for each band: in turn on one thread, else in parallel on up to
    `threads` (the fused kernels release the GIL)."""
    if threads == 1 or len(bands) == 1:
        for band in bands:
            run(band)
    else:
        with ThreadPoolExecutor(min(threads, len(bands)), thread_name_prefix="fm2s-bands") as pool:
            list(pool.map(run, bands))


@cache
def _window_factors(length: int, size: int, scale: float, device: torch.device) -> torch.Tensor:
    """``scale`` over :func:`_window_counts`."""
    return scale / _window_counts(length, size, device)


@cache
def _window_counts(length: int, size: int, device: torch.device) -> torch.Tensor:
    """How many of ``length`` indices each window of `size` centred on one of them holds."""
    index, half = np.arange(length), size // 2
    return torch.as_tensor(np.minimum(index + half, length - 1) - np.maximum(index - half, 0) + 1,
                           dtype=torch.float32, device=device)


def _nl_means(values: np.ndarray, patch_size: int, patch_distance: int,
              device: torch.device) -> np.ndarray:
    """scikit-image's fast-mode non-local means of a plane with unit noise variance
    (``denoise_nl_means(values, patch_size, patch_distance, h=NLM_H, sigma=1,
    fast_mode=True)``), rewritten in torch so that it runs on `device`, and on a CPU as the
    fused kernel :func:`fm2s.cpu_kernels.nl_means_band` (on one core 0.02 s for a 512 x 512
    plane, scikit-image 0.23 s).

    Its rules are kept, as they decide its output (fm2s 0.8.1 measured a plainer version:
    -0.03 dB in the blend on wide-field planes): the plane is reflected beyond its borders by
    the search distance plus the patch radius plus one; the distance of two pixels is the sum
    over ``s - 1`` by ``s - 1`` pixels (rows and columns ``-s//2 + 1`` to ``s//2`` from each;
    ``s`` the patch size) of the squared difference less twice the noise variance, clamped at
    0 and divided by ``h^2 s^2``; a pair beyond distance 5 weighs nothing, any other
    Schraudolph's ``exp(-distance)`` (:func:`_fast_exp`), the pixel itself included. The
    result matches scikit-image's to 1e-5 at 99.9 % of the pixels of an FMD plane; where a
    distance lies within float rounding of the cut-off, to 6e-3.
    """
    radius = patch_size // 2
    margin = radius + patch_distance + 1
    scale = 1.0 / (NLM_H**2 * patch_size**2)
    itself = float(_fast_exp(torch.zeros(())))  # the pixel's own weight
    slope = scale * -_SCHRAUDOLPH  # distance to the high bits of exp(-distance)
    offset = torch.tensor(-2.0 * (patch_size - 1) ** 2 * slope, dtype=torch.float32, device=device)
    # Beyond NLM_CUTOFF a pair weighs nothing: a `high` (float32) below the cut-off's float32
    # becomes the integer `below`, under the integer part of any kept one, so that its weight
    # is less than any kept pair's (the bits are the integer part, and grow with it) and a
    # threshold sets it to 0. Two thresholds instead of a comparison and a masked fill, which
    # torch runs slowly on a CPU (0.05 of 0.12 s). The same weights.
    limit = float(np.float32(NLM_CUTOFF * -_SCHRAUDOLPH))
    kept = float(np.nextafter(np.float32(limit), np.float32(-np.inf)))  # high > kept: kept
    below = float(np.floor(limit) - 1.0)
    assert np.trunc(limit) > below == float(np.float32(below))
    dropped = float(_fast_exp_bits(torch.tensor([below], dtype=torch.float32))[0])

    if fused_kernels(device):
        from . import cpu_kernels

        def fused(band):
            return cpu_kernels.nl_means_band(
                band, radius, patch_distance, np.float32(slope), np.float32(offset),
                np.float32(kept), np.float32(below),
                np.array(dropped, dtype=np.float32).view(np.int32)[()], np.float32(itself))

        padded = np.pad(np.asarray(values, dtype=np.float64), margin,
                        mode="reflect").astype(np.float32)
        result = _in_bands_fused(fused, [padded], patch_distance + radius)
        return result[margin:-margin, margin:-margin].astype(np.float64)

    def means(padded):  # one band of rows
        total, weights = padded * itself, torch.full_like(padded, itself)
        for here, there in _offset_pairs(*padded.shape, patch_distance):
            squares = F.mse_loss(padded[here], padded[there], reduction="none")
            # The box sums of squared differences less twice the noise variance per pixel of
            # the (s - 1)^2 window, scaled at once to the high bits of _fast_exp's float64:
            # one pass. Only where the window lies within the pair's pixels (no zero padding:
            # the pixels within the window's reach of the edges are margin, never output).
            box = _box_sums(squares, 1 - radius, radius, pad=False)
            high = torch.add(offset, box, alpha=slope)
            high = F.threshold_(high, kept, below).clamp_max_(0.0)
            weight = F.threshold_(_fast_exp_bits(high), dropped, 0.0)
            _add_pair(total, weights, padded, weight, _inset(here, radius - 1, radius),
                      _inset(there, radius - 1, radius))
        return total / weights

    padded = torch.as_tensor(np.pad(np.asarray(values, dtype=np.float64), margin, mode="reflect"),
                             dtype=torch.float32, device=device)
    result = _in_bands(means, [padded], patch_distance + radius)
    return result[margin:-margin, margin:-margin].double().cpu().numpy()


def _fast_exp(distance: torch.Tensor) -> torch.Tensor:
    """``exp(-distance)`` for float32 distances in [0, ~80], as scikit-image computes it
    (``skimage/_shared/fast_exp.h``: Schraudolph, Neural Computation 11(4), 1999, with the
    constant of least RMS error; within 6 % of ``exp``), float32.

    The exponential's high 32 bits as a float64, ``2^20 / ln 2 * (-distance) + 1072632447``,
    are the float32's bits shifted by 3 after moving the exponent's bias from 1023 to 127.
    """
    return _fast_exp_bits(distance * -_SCHRAUDOLPH)


#: 2^20 / ln 2: -distance to the high 32 bits of a float64's exponent and mantissa.
_SCHRAUDOLPH = 1512775.3951951856938


def _fast_exp_bits(high: torch.Tensor) -> torch.Tensor:
    """:func:`_fast_exp` from ``-distance * 2^20 / ln 2`` (float32, <= 0): a new tensor."""
    bits = high.to(torch.int32).add_(1072632447 - (1023 - 127) * 2**20)
    return bits.bitwise_left_shift_(3).view(torch.float32)


def _box_sums(x: torch.Tensor, first: int, last: int, pad: bool = True) -> torch.Tensor:
    """Sums of ``x[..., i + k, j + l]`` over ``first <= k, l <= last`` (``first <= 0 <= last``)
    at each pixel ``(i, j)`` of the planes ``x`` (..., H, W), zeros outside: along each axis,
    the plane padded with zeros, then sums of 2, 4, 8 ... neighbours by doubling, so a window
    of ``w`` pixels costs about ``1 + log2(w)`` passes over the plane instead of ``w``.
    Without `pad`, only at the pixels whose window lies within the plane (``-first <= i <
    H - last``, the same along ``j``), with the same floats there."""
    for axis in (-2, -1):
        x = _window_sums(x, axis, first, last, pad)
    return x


def _window_sums(x: torch.Tensor, axis: int, first: int, last: int,
                 pad: bool = True) -> torch.Tensor:
    """``out[i] = sum(x[i + k] for first <= k <= last)`` along `axis`, zeros outside; without
    `pad`, for ``-first <= i < length - last`` only."""
    length, width = x.shape[axis], last - first + 1
    if pad:
        sums = F.pad(x, _pad_spec(x.dim(), axis, -first, last))
    else:
        sums, length = x, length - width + 1
    # sums[j] is the sum of `size` consecutive padded pixels from j (length + width - size)
    result, offset, size = None, 0, 1
    while True:
        if width & size:
            part = sums.narrow(axis, offset, length)
            result = part if result is None else result + part
            offset += size
        if 2 * size > width:
            break
        count = sums.shape[axis] - size
        sums = sums.narrow(axis, 0, count) + sums.narrow(axis, size, count)
        size *= 2
    return result


def _inset(pixels: tuple[slice, slice], before: int, after: int) -> tuple[slice, slice]:
    """The slices `pixels` (rows, columns), less `before` at their start and `after` at their
    end."""
    return tuple(slice(axis.start + before, axis.stop - after) for axis in pixels)


def _pad_spec(dims: int, axis: int, before: int, after: int) -> list[int]:
    """F.pad's list for `before` and `after` zeros along `axis` of a `dims`-dimensional tensor."""
    spec = [0, 0] * dims  # pairs from the last axis on
    index = -axis - 1 if axis < 0 else dims - 1 - axis
    spec[2 * index], spec[2 * index + 1] = before, after
    return spec
