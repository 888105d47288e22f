"""The SURE blend: the network's output, and for ``sure-nlm`` two non-local means, weighed by
Stein's unbiased risk estimate of the result, per plane or per tile; ``sure-nlm-wiener`` refines
the blend with an empirical Wiener filter (docs/noise-estimation.md).

Every function works on one plane on the network's (boosted) scale, where the settings' noise
model ``gain * u + read_var`` holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from .classical import WIENER_PATCH, vst_nlm, vst_wiener
from .noise import correlate_rows, correlated_normal, lowfreq_gain
from .settings import Settings
from .train import predict

__all__ = ["SURE_EPS", "Tiles", "least_risk_weights", "nlm_blend", "risk_terms",
           "sure_blend_weight", "sure_probe", "sure_variance", "sure_weight", "sure_weight_maps",
           "sure_weights", "tile_risk"]


#: Size of the SURE probe's step, in noise standard deviations: small enough for a local
#: slope, large enough for float32.
SURE_EPS = 0.1


def sure_blend_weight(net, noisy: np.ndarray, clean: np.ndarray, settings: Settings,
                      quantization_var: float, seed: int, device: torch.device) -> float:
    """Weight ``w`` in [0, 1] of the network output in ``w * clean + (1 - w) * noisy``.

    Stein's unbiased risk estimate of the blend, for noise of covariance ``C`` (pixel variance
    ``gain * u + read_var`` at the denoised intensity ``u``, correlated as in
    :func:`fm2s.noise.correlated_normal` and :func:`fm2s.noise.correlate_rows`, plus white
    rounding noise), is minimised by
    ``w = (tr C - tr(J C)) / ||noisy - clean||^2`` where ``J`` is the network's Jacobian. The
    trace ``tr(J C)`` is estimated by one Monte-Carlo probe ``p ~ N(0, C)``:
    ``p . (f(y + eps p) - f(y)) / eps``. The network's dependence on the plane through its
    training target is neglected. Returns 1 when the model has no noise (nothing to weigh).
    """
    variance = sure_variance(clean, settings)
    probe = sure_probe(variance, settings, quantization_var, seed)
    moved = predict(net, (noisy + SURE_EPS * probe).astype(np.float32), device,
                    turn_average=settings.turn_average)
    return sure_weight(noisy, clean, probe, moved, variance, quantization_var)


def sure_variance(clean: np.ndarray, settings: Settings) -> np.ndarray:
    """Per-pixel noise variance ``gain * u + read_var`` at the denoised intensity (float64)."""
    return np.maximum(settings.gain * clean.astype(np.float64) + settings.read_var, 0.0)


def sure_probe(variance: np.ndarray, settings: Settings, quantization_var: float,
               seed: int) -> np.ndarray:
    """The probe ``p ~ N(0, C)`` of :func:`sure_blend_weight` (float64, the plane's shape),
    for the pixel variance of :func:`sure_variance`."""
    gen = torch.Generator().manual_seed(seed ^ 0xB1E4D)
    probe = correlate_rows(correlated_normal(variance.shape, settings.noise_corr, generator=gen),
                           settings.noise_line_corr, settings.noise_corr).numpy()
    probe = probe.astype(np.float64) * np.sqrt(variance)
    probe += np.sqrt(quantization_var) * torch.randn(variance.shape, generator=gen).numpy()
    return probe


def sure_weight(noisy: np.ndarray, clean: np.ndarray, probe: np.ndarray, moved: np.ndarray,
                variance: np.ndarray, quantization_var: float) -> float:
    """:func:`sure_blend_weight` from the network's output on ``noisy + SURE_EPS * probe``."""
    total = float(variance.sum() + quantization_var * variance.size)
    residual = float(((noisy.astype(np.float64) - clean) ** 2).sum())
    if total <= 0 or residual <= 0:
        return 1.0
    trace = float((probe * (moved.astype(np.float64) - clean)).sum() / SURE_EPS)
    weight = (total - trace) / residual
    return float(np.clip(weight, 0.0, 1.0)) if np.isfinite(weight) else 1.0


def sure_weights(noisy: np.ndarray, candidates: Sequence[np.ndarray], probe: np.ndarray,
                 moved: Sequence[np.ndarray], variance: np.ndarray,
                 quantization_var: float, keep_input: bool = True) -> np.ndarray:
    """Weights ``w_k >= 0``, ``sum(w) <= 1``, of the blend
    ``noisy + sum_k w_k (candidate_k - noisy)`` that minimise its Stein's unbiased risk estimate.

    :func:`sure_weight` for several estimates of one plane at once (the ``sure-nlm`` blend: the
    network's output and :func:`fm2s.classical.vst_nlm`'s). With ``d_k = candidate_k - noisy``
    and the Monte-Carlo traces ``t_k = p . (f_k(y + eps p) - f_k(y)) / eps`` (one probe for
    all), the risk is ``w' G w - 2 b' w + const`` with ``G_jk = d_j . d_k`` and
    ``b_k = tr C - t_k``: a small convex quadratic program over the simplex, solved exactly by
    trying every set of free weights with and without the ``sum(w) = 1`` constraint
    (Karush-Kuhn-Tucker points) and keeping the feasible one of least risk.

    Parameters
    ----------
    noisy : ndarray
        The plane ``y``, on the scale of `variance`.
    candidates, moved : sequence of ndarray
        Each estimate ``f_k(y)``, and ``f_k(y + SURE_EPS * probe)``.
    probe, variance, quantization_var
        As for :func:`sure_weight`.
    keep_input : bool
        False: ``sum(w) = 1``, the blend keeps none of the input. For a noise model known to
        miss part of the noise (a correlated one, whose broad part one plane cannot show):
        the estimate then understates the input's risk by all of the missing variance and
        overstates that of a strong smoother by nearly as much (docs/noise-estimation.md).

    Returns
    -------
    ndarray, float64, shape (len(candidates),)
        The weights (all 0 when the model has no noise or the plane equals every candidate).
    """
    gram, drive, total = risk_terms(noisy, candidates, probe, moved, variance,
                                     quantization_var, lambda x: x.sum(axis=(-2, -1)))
    return least_risk_weights(gram, drive, total, keep_input)


def sure_weight_maps(noisy: np.ndarray, candidates: Sequence[np.ndarray], probe: np.ndarray,
                     moved: Sequence[np.ndarray], variance: np.ndarray, quantization_var: float,
                     tile: int) -> np.ndarray:
    """Per-pixel weights of the blend ``noisy + sum_k w_k (candidate_k - noisy)``: the weights
    of :func:`sure_weights` chosen on each tile of about ``tile x tile`` pixels (its own terms
    of the risk estimate), interpolated bilinearly between tile centres.

    Where a plane holds both flat background and fine texture, one set of weights trades one
    against the other; per tile each region gets the candidates that suit it. Interpolated
    weights stay in the simplex (``w_k >= 0``, ``sum(w) <= 1``), and the blend has no seams.

    Parameters
    ----------
    noisy, candidates, probe, moved, variance, quantization_var
        As for :func:`sure_weights`; all planes of shape (H, W).
    tile : int
        Tile side in pixels (> 0); each axis is cut into ``max(1, round(side / tile))`` tiles
        of equal size, to the pixel.

    Returns
    -------
    ndarray, float64, shape (len(candidates), H, W)
        The weights at every pixel.
    """
    if tile < 1:
        raise ValueError(f"sure_weight_maps: tile must be >= 1 pixel, got {tile}")
    tiles = Tiles(noisy.shape, tile)
    gram, drive, total = risk_terms(noisy, candidates, probe, moved, variance,
                                     quantization_var, tiles.sums)
    return tiles.interpolate(least_risk_weights(gram, drive, total))


class Tiles:
    """A plane of `shape` cut into about `tile` x `tile` pixel tiles (each axis into
    ``max(1, round(side / tile))`` tiles of equal size, to the pixel; one tile where `tile` is
    0): sums over each tile, and per-tile values interpolated bilinearly between tile
    centres (flat beyond the outer centres)."""

    def __init__(self, shape: tuple[int, int], tile: int) -> None:
        self.shape = shape
        self.rows, self.cols = (
            np.linspace(0, side, max(1, round(side / tile)) + 1).round().astype(int) if tile
            else np.array([0, side]) for side in shape)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """(..., H, W) -> (..., rows, cols): the sum over each tile."""
        return np.add.reduceat(np.add.reduceat(x, self.rows[:-1], axis=-2), self.cols[:-1],
                               axis=-1)

    def spread(self, x: np.ndarray) -> np.ndarray:
        """(..., rows, cols) -> (..., H, W): each tile's value on all its pixels."""
        return np.repeat(np.repeat(x, np.diff(self.rows), axis=-2), np.diff(self.cols), axis=-1)

    def interpolate(self, x: np.ndarray) -> np.ndarray:
        """(..., rows, cols) -> (..., H, W), bilinear between the tile centres."""
        return (_interpolation(self.rows, self.shape[0]) @ x
                @ _interpolation(self.cols, self.shape[1]).T)


def _interpolation(edges: np.ndarray, size: int) -> np.ndarray:
    """(size, tiles): linear in the tile centres, flat beyond."""
    centres = (edges[:-1] + edges[1:] - 1) / 2.0
    unit = np.eye(len(centres))
    return np.stack([np.interp(np.arange(size), centres, u) for u in unit], axis=1)


def tile_risk(weights: np.ndarray, gram: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """The risk estimate ``w' G w - 2 b' w`` of weights (k, ...) per problem (...)."""
    return (np.einsum("j...,jk...,k...->...", weights, gram, weights)
            - 2 * np.einsum("k...,k...->...", drive, weights))


def risk_terms(noisy, candidates, probe, moved, variance, quantization_var, sums):
    """The terms of :func:`sure_weights`' risk, summed over pixels by `sums` (the whole plane,
    or each tile): the Gram matrix ``G`` (k, k, ...), the drive ``b = tr C - t`` (k, ...) and
    the noise's total variance ``tr C`` (...)."""
    y = noisy.astype(np.float64)
    diffs = [c.astype(np.float64) - y for c in candidates]
    k = len(diffs)
    total = sums(variance.astype(np.float64) + quantization_var)
    gram = np.empty((k, k, *np.shape(total)))
    for i in range(k):
        for j in range(i, k):
            gram[i, j] = gram[j, i] = sums(diffs[i] * diffs[j])
    traces = np.stack([sums(probe * (m.astype(np.float64) - c))
                       for m, c in zip(moved, candidates, strict=True)]) / SURE_EPS
    return gram, total - traces, total


def least_risk_weights(gram: np.ndarray, drive: np.ndarray, total: np.ndarray | float,
                        keep_input: bool = True) -> np.ndarray:
    """The weights of :func:`sure_weights` from its risk terms ``w' G w - 2 b' w``: the
    Karush-Kuhn-Tucker point of least risk over the simplex, or over its face ``sum(w) = 1``
    without `keep_input` (zeros without noise). Each of the problems in ``G`` (k, k, ...),
    ``b`` (k, ...) and the noise's total variance (...) is solved on its own, all at once;
    returns the weights (k, ...)."""
    k = len(drive)
    shape = np.shape(total)
    gram = np.moveaxis(np.reshape(gram, (k, k, -1)), -1, 0)  # (problems, k, k)
    drive = np.reshape(drive, (k, -1)).T  # (problems, k)
    count = len(drive)
    # The input alone (w = 0, risk 0 relative to it) is a candidate only where it may be kept.
    best = np.zeros((count, k)) if keep_input else np.tile(np.eye(k)[0], (count, 1))
    best_risk = np.zeros(count) if keep_input else np.full(count, np.inf)
    for free in itertools.chain.from_iterable(
            itertools.combinations(range(k), n) for n in range(1, k + 1)):
        idx = list(free)
        g, b = gram[:, idx][:, :, idx], drive[:, idx]
        n = len(idx)
        # Free weights alone (G w = b), then on the face sum(w) = 1 (with a multiplier).
        face = np.zeros((count, n + 1, n + 1))
        face[:, :n, :n], face[:, :n, n], face[:, n, :n] = g, 1.0, 1.0
        face_rhs = np.concatenate([b, np.ones((count, 1))], axis=1)
        systems = [(g, b), (face, face_rhs)] if keep_input else [(face, face_rhs)]
        for lhs, rhs in systems:
            w = np.zeros((count, k))
            w[:, idx] = _solve_each(lhs, rhs)[:, :n]
            feasible = (np.all(w >= -1e-12, axis=1) & (w.sum(axis=1) <= 1 + 1e-9)
                        & np.all(np.isfinite(w), axis=1))
            w = np.clip(np.nan_to_num(w), 0.0, None)
            risk = np.einsum("pj,pjk,pk->p", w, gram, w) - 2 * np.einsum("pk,pk->p", drive, w)
            better = feasible & (risk < best_risk)
            best[better], best_risk[better] = w[better], risk[better]
    valid = (np.reshape(total, -1) > 0) & np.all(np.isfinite(gram), axis=(1, 2)) & np.all(
        np.isfinite(drive), axis=1)
    best[~valid] = 0.0
    return best.T.reshape(k, *shape)


def _solve_each(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``lhs[p] x[p] = rhs[p]`` for every problem p; NaN where ``lhs[p]`` is singular."""
    try:
        return np.linalg.solve(lhs, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # one singular system: solve them one by one
        solutions = np.full(rhs.shape, np.nan)
        for p in range(len(lhs)):
            try:
                solutions[p] = np.linalg.solve(lhs[p], rhs[p])
            except np.linalg.LinAlgError:
                pass
        return solutions


def nlm_blend(work, clean, probe, probed, moved, variance, quant, settings, device, *,
              on_probe: bool = False):
    """The ``sure-nlm`` blend of one plane, on the network's boosted scale (`settings` scaled
    to match), and its Wiener refinement for ``sure-nlm-wiener``: the network's output `clean`
    and two non-local means weighed by their risk estimate. Returns the result, what its
    info records (the weights' means over the plane, the tile, whether Wiener refined it) and,
    with `on_probe`, the same blend (same weights) of the estimates on the probed plane
    (stack mode's risk estimate needs it; else None).
    """
    complete = settings.noise_corr <= 0
    model = (settings.gain, settings.read_var + quant, lowfreq_gain(settings.noise_corr))
    # Non-local means (the plane's noise model, rounding included), classical and with the
    # patch similarities of the network's output (for the probe, of its output on the probed
    # plane, so that SURE sees the whole map): each wins where the other fails (FMD
    # two-photon tissue / wide-field).
    candidates = [clean, vst_nlm(work, *model, device=device),
                  vst_nlm(work, *model, guide=clean, device=device)]
    shifted = [moved, vst_nlm(probed, *model, device=device),
               vst_nlm(probed, *model, guide=moved, device=device)]
    # Weights per tile where the noise model is complete (white noise). A correlated model
    # misses the broad part of the noise: per tile its risk estimate misleads more than per
    # plane (FMD wide-field: -0.9 dB), and it rates the input far too well, so none of the
    # input is kept (FMD wide-field raw: +0.5 to +1 dB).
    tile = settings.sure_tile if complete else 0
    if tile:
        weights = sure_weight_maps(work, candidates, probe, shifted, variance, quant, tile)
    else:
        weights = sure_weights(work, candidates, probe, shifted, variance, quant,
                               keep_input=complete)
    blend = work + sum(w * (c - work) for w, c in zip(weights, candidates, strict=True))
    on_probed = None if not on_probe else (
        probed + sum(w * (c - probed) for w, c in zip(weights, shifted, strict=True)))
    recorded = {name: float(f"{np.mean(w):.6g}") for name, w in zip(
        ("blend", "blend_nlm", "blend_guided_nlm"), weights, strict=True)}
    recorded["sure_tile"] = tile
    del candidates, shifted, weights  # the Wiener filter needs the memory
    if settings.blend == "sure-nlm-wiener":
        # The empirical Wiener filter's spectrum is the noise model's: left out where that
        # model is a correlated one, whose broad part a single plane misses
        # (docs/noise-estimation.md), and on planes smaller than its patches.
        recorded["wiener"] = complete and min(work.shape) >= WIENER_PATCH
        if recorded["wiener"]:
            blend = vst_wiener(work, blend, *model[:2], settings.noise_line_corr, device=device)
            if on_probed is not None:
                on_probed = vst_wiener(probed, on_probed, *model[:2], settings.noise_line_corr,
                                       device=device)
    return blend, recorded, on_probed
