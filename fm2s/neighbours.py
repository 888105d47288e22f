"""Stack mode: a plane's neighbours in z or t as a second, independent look at its structures.

A plane ``y`` of a stack is denoised as in plane mode (the network, the two non-local means,
their SURE blend and the Wiener refinement: the plane-mode result ``P``), and then blended once
more, per tile, with estimates that use its neighbouring planes (up to :data:`REACH` on each
side along the stack's axis, see :func:`neighbour_keys`):

``M``
    the mean of the raw neighbours (no smoothing, unbiased wherever the field is static);
``NLM(M)``
    non-local means of that mean, for its smaller noise (the noise model divided by their
    number);
``NLM(F)``, ``NLM(F | P)``, ``Wiener(F)``
    non-local means of the mean ``F`` of the plane and its neighbours, classical and with the
    patch similarities of ``P`` (moving structures weigh little where their patches differ),
    and the empirical Wiener filter of ``F`` with the spectrum of ``NLM(F | P)``.

Each neighbour is first aligned to ``P`` by a whole-pixel drift (:func:`drift`, at most
:data:`MAX_DRIFT` pixels); the candidates are made from the aligned and from the unaligned
neighbours, and the set of lower risk estimate is kept.

``M`` and ``NLM(M)`` are functions of the neighbours alone (the drift is a piecewise-constant
function of the plane): their divergence with respect to the plane is zero, so Stein's unbiased
risk estimate of the blend ``sum_k w_k c_k`` (``c_0 = P``) needs the probe only for ``P`` and
the estimates of ``F`` (the plane's own probe, the one plane mode uses; ``P`` on the probed
plane keeps the plane-mode blend weights fixed). The weights (:func:`face_weights`) are
non-negative and sum to one: on that face the noise's total variance drops out of the risk, so
the neighbours' estimates are compared by ``||g - y||^2`` whatever the noise model's error
(the input, whose own estimate rests wholly on that model, is already in ``P`` as far as plane
mode chose). They are chosen per tile of ``sure_tile`` pixels and kept only where their
estimated gain over ``P`` clears the estimate's own noise (:data:`GUARD`): where the
neighbours show other structures (motion beyond the drift, a coarse z-step, structures that
appear) the tile keeps ``P``. Planes whose noise model is a correlated one (whose broad part
the risk estimate misses) get plane mode.

The neighbours are raw input planes, read from the stack, never results: a plane's stack-mode
result depends only on its own network, its own bytes and its neighbours' bytes, so it is the
same whichever group, chunk or job it is computed in.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from .blend import Tiles, least_risk_weights, risk_terms, tile_risk
from .classical import vst_nlm, vst_wiener
from .intensity import rounding_variance, to_dtype
from .networks import (
    REGION_PIXELS,
    Network,
    RiskTerms,
    _denoise_works,
    _scaled,
    apply_network,
)
from .noise import lowfreq_gain
from .prepare import PlaneResult, PreparedPlane

__all__ = ["NEIGHBOUR_MODES", "REACH", "apply_with_neighbours", "neighbour_axis",
           "neighbour_keys", "stack_candidates"]

log = logging.getLogger(__name__)

#: Values of :attr:`fm2s.settings.Settings.neighbours`.
NEIGHBOUR_MODES = ("off", "auto")
#: Neighbours on each side of a plane (fewer at the ends of the stack).
REACH = 2
#: The guard of :func:`face_weights`: a tile's stack weights count fully where their estimated
#: gain over the plane-mode result is at least ``GUARD[1]`` standard deviations of its
#: estimate, not at all below ``GUARD[0]``.
GUARD = (1.5, 3.0)
#: Neighbours are aligned to the plane by a whole-pixel shift of at most this many pixels each
#: way (stage drift, a time-lapse's moving field): :func:`drift`.
MAX_DRIFT = 8
#: :func:`drift` correlates detail finer than a Gaussian blur of this many pixels, and takes a
#: shift only where its correlation beats no shift's by this fraction.
DRIFT_DETAIL = 4.0
DRIFT_MARGIN = 0.005
ALIGN = True
#: Tile side of the stack blend's weights (None: the settings' ``sure_tile``).
STACK_TILE: int | None = None
#: Names of the stack-mode candidates, in the order of the blend (``info["stack_weights"]``).
CANDIDATES = ("plane", "nlm_mean", "nlm_mean_guided", "raw_neighbours", "nlm_neighbours",
              "wiener_mean")


def neighbour_axis(shape: Sequence[int]) -> str | None:
    """The axis whose neighbours a plane uses, from a stack's ``(t, c, z, ...)`` shape: ``z``
    for a z-stack (also at each time point of a t+z stack: neighbouring slices are closer
    in time than neighbouring frames), ``t`` for a time-lapse of single planes, None for a
    stack of one plane per channel."""
    t, _, z = shape[:3]
    if z > 1:
        return "z"
    if t > 1:
        return "t"
    return None


def neighbour_keys(key: Sequence[int], shape: Sequence[int],
                   reach: int = REACH) -> list[tuple[int, int, int]]:
    """The ``(t, c, z)`` keys of a plane's neighbours, nearest first (before, after), within
    the stack's ``(t, c, z, ...)`` `shape`: same channel, and same time point for ``z``."""
    axis = neighbour_axis(shape)
    if axis is None or reach < 1:
        return []
    t, c, z = (int(v) for v in key[:3])
    index, size = (z, shape[2]) if axis == "z" else (t, shape[0])
    keys = []
    for step in range(1, reach + 1):
        for other in (index - step, index + step):
            if 0 <= other < size:
                keys.append((t, c, other) if axis == "z" else (other, c, z))
    return keys


def stack_candidates(work, probe, probed, neighbours, plane, plane_moved, model,
                     wiener=False, line_corr=0.0, device="cpu"):
    """The stack-mode candidates on one plane's (boosted) scale and the same on the probed
    plane: see the module notes. `neighbours` (K, H, W) on the plane's scale; `model` is
    ``(gain, read_var + rounding, lowfreq_gain)`` of one plane."""
    count = len(neighbours)
    gain, read, low = model
    mean = neighbours.mean(axis=0)
    full = (work + count * mean) / (count + 1)
    full_moved = (probed + count * mean) / (count + 1)
    together = (gain / (count + 1), read / (count + 1), low)
    nlm_full = vst_nlm(full, *together, device=device)
    nlm_full_moved = vst_nlm(full_moved, *together, device=device)
    guided = vst_nlm(full, *together, guide=plane, device=device)
    guided_moved = vst_nlm(full_moved, *together, guide=plane_moved, device=device)
    nlm_mean = vst_nlm(mean, gain / count, read / count, low, device=device)
    candidates = [plane, nlm_full, guided, mean, nlm_mean]
    shifted = [plane_moved, nlm_full_moved, guided_moved, mean, nlm_mean]
    if wiener:
        # The Wiener refinement of the mean, with the guided estimate's spectrum.
        candidates.append(vst_wiener(full, guided, *together[:2], line_corr, device=device))
        shifted.append(vst_wiener(full_moved, guided_moved, *together[:2], line_corr,
                                  device=device))
    return candidates, shifted


def drift(plane: np.ndarray, other: np.ndarray, reach: int = MAX_DRIFT) -> tuple[int, int]:
    """The whole-pixel shift ``(dy, dx)``, at most `reach` each way, that aligns `other` with
    `plane` (the plane-mode result): the peak of the cross-correlation of their fine detail
    (each minus its Gaussian blur of ``DRIFT_DETAIL`` pixels, Hann-windowed), kept only where
    it beats the correlation without a shift by ``DRIFT_MARGIN`` (a shift below a pixel, or
    none, is no shift). A function of the plane that is constant almost everywhere: its
    divergence is zero, and the risk estimate of the aligned neighbours stays unbiased."""
    return drifts(plane, [other], reach)[0]


def drifts(plane: np.ndarray, others: Sequence[np.ndarray],
           reach: int = MAX_DRIFT) -> list[tuple[int, int]]:
    """:func:`drift` of each of `others` against `plane`. The shift does not depend on the
    planes' scales, so `others` may be raw planes in their own units; their detail's spectra
    are kept for the next few calls (:class:`_SpectrumCache`: a neighbour serves up to
    ``2 REACH`` planes), the plane's is computed once."""
    spectrum = _detail_spectrum(plane)
    reach = min(reach, plane.shape[0] // 4, plane.shape[1] // 4)
    shifts = []
    for other in others:
        corr = np.fft.irfft2(spectrum * np.conj(_NEIGHBOUR_SPECTRA.get(other)), s=plane.shape)
        best, where = corr[0, 0], (0, 0)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                if corr[dy, dx] > best:
                    best, where = corr[dy, dx], (dy, dx)
        no_shift = best <= 0 or corr[0, 0] >= (1 - DRIFT_MARGIN) * best
        shifts.append((0, 0) if no_shift else where)
    return shifts


def _detail_spectrum(plane: np.ndarray) -> np.ndarray:
    """The 2-D spectrum (``rfft2``) of `plane` less its Gaussian blur of ``DRIFT_DETAIL``
    pixels, Hann-windowed."""
    from scipy import ndimage

    plane = np.asarray(plane, dtype=np.float64)
    window = np.outer(np.hanning(plane.shape[0]), np.hanning(plane.shape[1]))
    return np.fft.rfft2((plane - ndimage.gaussian_filter(plane, DRIFT_DETAIL)) * window)


class _SpectrumCache:
    """:func:`_detail_spectrum` of the last `size` planes seen, by their bytes (a digest), so
    that a hit gives exactly what a miss computes: the result does not depend on which planes
    a process saw before."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.spectra: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, plane: np.ndarray) -> np.ndarray:
        plane = np.ascontiguousarray(plane)
        key = (plane.shape, plane.dtype.str, hashlib.blake2b(plane.view(np.uint8)).digest())
        with self.lock:
            spectrum = self.spectra.get(key)
            if spectrum is not None:
                self.spectra.move_to_end(key)
                return spectrum
        spectrum = _detail_spectrum(plane)
        with self.lock:
            self.spectra[key] = spectrum
            while len(self.spectra) > self.size:
                self.spectra.popitem(last=False)
        return spectrum


#: The neighbours of consecutive planes overlap in all but one.
_NEIGHBOUR_SPECTRA = _SpectrumCache(2 * REACH + 2)


def moved_by(plane: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """`plane` shifted by whole pixels ``(dy, dx)`` (``out[y, x] = plane[y - dy, x - dx]``),
    the edge repeated where the shift leaves no pixels."""
    dy, dx = shift
    if not dy and not dx:
        return plane
    height, width = plane.shape
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return plane[rows][:, cols]


def _plane_where_empty(weights):
    """Where the risk estimate could not choose (no noise, non-finite terms), the plane-mode
    result (candidate 0) alone."""
    empty = weights.sum(axis=0) <= 0
    weights[0][empty] = 1.0
    return weights


def face_weights(noisy, candidates, probe, moved, variance, quant, tile, with_risk=False):
    """Weights ``w_k >= 0``, ``sum(w) = 1``, of the blend ``sum_k w_k candidate_k`` of least
    risk estimate, per tile of about `tile` pixels (one tile for the whole plane where `tile`
    is 0), interpolated between tile centres as :func:`fm2s.blend.sure_weight_maps` does.

    Candidate 0 is the plane-mode result ``P``. A tile keeps its weights only where their
    estimated gain over ``P`` alone, ``R(P) - R(w)``, is clear of the estimate's own noise:
    its standard deviation is about ``s = 2 sqrt(sum C (blend - P)^2)`` (the noise in
    ``y . (blend - P)``); the weights move towards ``P`` as the gain falls from ``2 s`` to
    ``s`` (:data:`GUARD`), and are ``P`` alone below. Returns (k, H, W), or (k,) without
    tiles; `with_risk`: and the risk estimate of those weights summed over the tiles
    (relative to the noise's total variance)."""
    tiles = Tiles(noisy.shape, tile)
    gram, drive, total = risk_terms(noisy, candidates, probe, moved, variance, quant,
                                     tiles.sums)
    weights = _plane_where_empty(least_risk_weights(gram, drive, total, keep_input=False))
    # The guard: the estimated gain over P and its noise, per tile.
    k = len(candidates)
    gain = (gram[0, 0] - 2 * drive[0]) - tile_risk(weights, gram, drive)
    change = sum(tiles.spread(weights[i]) * (candidates[i] - candidates[0]) for i in range(1, k))
    noise = 2.0 * np.sqrt(tiles.sums((variance + quant) * change**2))
    keep = np.clip(gain / np.maximum(noise, 1e-300) - GUARD[0], 0.0, GUARD[1] - GUARD[0])
    keep = np.where(noise > 0, keep / (GUARD[1] - GUARD[0]), 1.0)
    weights = keep * weights + (1 - keep) * np.eye(k)[:, 0].reshape(k, *[1] * keep.ndim)
    risk = float(tile_risk(weights, gram, drive).sum())
    if not tile:
        return (weights[:, 0, 0], risk) if with_risk else weights[:, 0, 0]
    maps = tiles.interpolate(weights)
    return (maps, risk) if with_risk else maps

def apply_with_neighbours(network: Network, prepared: PreparedPlane, seed: int,
                          device: torch.device, neighbours: Sequence[np.ndarray]) -> PlaneResult:
    """Denoise one plane of a stack with its network and its neighbouring raw planes.

    Parameters
    ----------
    network : Network
        The plane's network (as in plane mode).
    prepared : PreparedPlane
        The plane, prepared as for :func:`fm2s.denoise.apply_network`.
    seed : int
        The plane's own seed (the blend's probe).
    device : torch.device
    neighbours : sequence of ndarray (Y, X)
        The raw neighbouring planes (:func:`neighbour_keys`), in the plane's intensity units
        (same dtype and data range). Empty: plane mode, bitwise.

    Returns
    -------
    PlaneResult
        ``info`` adds ``neighbours`` (their number) and ``stack_weights`` (each candidate's
        mean weight over the plane, :data:`CANDIDATES`).
    """
    settings = network.settings
    # Plane mode: without neighbours; for blends without a risk estimate per candidate; on
    # planes applied in regions; and where the noise model is a correlated one, which misses
    # the broad part of the noise that the stack blend's risk estimate cannot do without
    # (FMD wide-field, its four real captures: -5.8 dB on one plane).
    if (not len(neighbours) or settings.blend not in ("sure-nlm", "sure-nlm-wiener")
            or prepared.noisy.size > REGION_PIXELS or prepared.constant
            or settings.noise_corr > 0):
        return apply_network(network, prepared, seed, device)
    began = time.perf_counter()
    factor = network.factor(prepared)
    work = prepared.noisy * np.float32(factor)
    quant = factor**2 * rounding_variance(prepared.plane, prepared.scale)
    scaled = _scaled(settings, network.boost)
    terms: list[RiskTerms] = []
    (plane,), (info,) = _denoise_works(network, work[None], [quant], [seed], [prepared.info],
                                       device, None, terms)
    (risk_terms,) = terms
    probe, probed, variance = risk_terms.probe, risk_terms.probed, risk_terms.variance
    plane_moved = risk_terms.blend_on_probe
    info = dict(info)
    model = (scaled.gain, scaled.read_var + quant, lowfreq_gain(scaled.noise_corr))
    tile = info["sure_tile"]
    if STACK_TILE:
        tile = STACK_TILE
    # The neighbours on the plane's scale: the same DN -> work factor as the plane.
    per_dn = factor / prepared.scale
    stack = np.stack([np.asarray(n, dtype=np.float64) * per_dn for n in neighbours])
    # Aligned by their drift, or as they are: the one of the two of least estimated risk
    # (a sub-pixel drift is better left alone).
    shifts = drifts(plane, neighbours) if ALIGN else [(0, 0)] * len(stack)
    options = [[(0, 0)] * len(stack)] + ([shifts] if any(map(any, shifts)) else [])
    best = None
    for option in options:
        aligned = np.stack([moved_by(n, s) for n, s in zip(stack, option, strict=True)])
        cands, moves = stack_candidates(work.astype(np.float64), probe,
                                        probed.astype(np.float64), aligned, plane, plane_moved,
                                        model, wiener=bool(info.get("wiener")),
                                        line_corr=scaled.noise_line_corr, device=device)
        # Weights summing to one: the input's own risk estimate rests wholly on the noise
        # model (too small a model favours it), and P keeps as much input as plane mode
        # chose. On that face the noise's total variance is a constant of the risk:
        # independent candidates are compared by ||g - y||^2 alone, whatever the noise
        # model's error.
        stack_w, risk = face_weights(work, cands, probe, moves, variance, quant, tile,
                                     with_risk=True)
        if best is None or risk < best[0]:
            best = (risk, option, cands, stack_w)
    _, shifts, cands, stack_w = best
    result = work + sum(w * (c - work) for w, c in zip(stack_w, cands, strict=True))
    info["neighbours"] = len(neighbours)
    info["neighbour_shifts"] = [list(map(int, s)) for s in shifts]
    info["stack_weights"] = {name: float(f"{np.mean(w):.6g}")
                             for name, w in zip(CANDIDATES, stack_w, strict=False)}
    info["stack_weights"]["input"] = float(f"{1 - np.mean(sum(stack_w)):.6g}")
    seconds = time.perf_counter() - began
    return PlaneResult(to_dtype(result / factor * prepared.scale, prepared.plane.dtype), seconds,
                       seed, prepared.key, prepared.scale, info)
