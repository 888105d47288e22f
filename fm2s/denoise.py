"""Public denoising functions: one plane (``denoise``) or many (``denoise_planes``).

Intensity scale
---------------
FM2S works on intensities in [0, 1]. An integer plane is divided by its dtype's largest value
(255 for uint8, exactly as the paper; 65535 for uint16; ``iinfo(dtype).max`` in general), so a
uint16 plane equal to a uint8 plane times 257 is the same [0, 1] plane and denoises to the
uint8 result times 257, within rounding. A float plane in [0, 1] is used as it is; a float plane
with larger values is divided by its maximum. ``data_range`` overrides the divisor, for example
``data_range=4095`` for 12-bit data stored as uint16, which keeps the global Poisson stage
(``lam_p`` photons at 1.0) as strong as for data that fills its range. ``auto`` needs no such
help: its noise model has no fixed scale, and a plane whose peak is below 0.5 is multiplied
by a power of two for training and inference (:func:`training_boost`).

The result is multiplied back, rounded (not truncated) and clipped to the input dtype.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .classical import WIENER_PATCH, vst_nlm, vst_wiener
from .estimate import auto_settings, estimate_noise
from .intensity import (
    fills_little_of_dtype,
    intensity_range,
    rounding_variance,
    to_dtype,
    training_boost,
)
from .model import FM2SNet
from .noise import (
    correlate_rows,
    correlated_normal,
    lowfreq_gain,
    median_target,
    region_means,
)
from .settings import Settings, make_settings
from .train import TrainingSet, extract_model, fit, group_key, predict, predict_batch

__all__ = ["PlaneResult", "denoise", "denoise_planes", "iter_denoise_planes", "plane_seed",
           "resolve_device", "sure_blend_weight", "training_boost"]

log = logging.getLogger(__name__)

#: Planes trained in one grouped pass on a CUDA device (on CPU, one at a time: there grouping
#: gains nothing and a lone plane gives bitwise the same result either way).
CUDA_GROUP_SIZE = 16


def pack_size(device: torch.device) -> int:
    """Networks trained together in one grouped pass on `device` (one at a time on a CPU)."""
    return CUDA_GROUP_SIZE if device.type == "cuda" else 1


@dataclass
class PlaneResult:
    """One denoised plane and how it was made."""

    image: np.ndarray  # same dtype and shape as the input plane
    seconds: float  # wall time spent on this plane (its share of a grouped pass)
    seed: int  # the plane's own seed, from plane_seed(base seed, key)
    key: Hashable  # the plane's identity
    data_range: float  # intensity that was mapped to 1.0
    #: ``preset="auto"`` (or a blend): the noise estimate used (``estimate``, a
    #: NoiseEstimate.to_dict()), where it came from (``source``: ``"plane"`` or ``"channel"``),
    #: the plane's own std estimate (``plane_std_dn``), the resolved ``settings``
    #: (Settings.to_dict()) and the blend weight (``blend``: 1 = network only). None otherwise.
    info: dict[str, Any] | None = field(default=None)


def plane_seed(seed: int, key: Hashable) -> int:
    """Seed of one plane: SHA-256 of the base seed and the plane's key, as a 63-bit integer.

    The key is any value with a stable ``repr`` (a (t, c, z) tuple, a file name, or the digest of
    the plane's bytes that :func:`iter_denoise_planes` uses by default).
    """
    digest = hashlib.sha256(f"fm2s:{int(seed)}:{key!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def content_key(plane: np.ndarray) -> str:
    """Identity of a plane by content: SHA-256 of its dtype, shape and bytes (16 hex digits)."""
    h = hashlib.sha256(f"{plane.dtype.str}{plane.shape}".encode())
    h.update(np.ascontiguousarray(plane).tobytes())
    return h.hexdigest()[:16]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        msg = f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            msg = f"device {device!r} requested but CUDA is not available on this machine"
            raise ValueError(msg)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            msg = f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            raise ValueError(msg)
    elif resolved.type != "cpu":
        msg = f"unsupported device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg)
    return resolved


def check_plane(plane: np.ndarray, settings: Settings, what: str) -> None:
    """Raise ValueError, naming the plane by `what`, unless FM2S can denoise `plane`."""
    if plane.dtype == bool or plane.dtype.kind not in "uif":
        msg = (f"{what}: unsupported dtype {plane.dtype}; expected an integer or float plane")
        raise ValueError(msg)
    if plane.ndim != 2:
        msg = (f"{what}: expected a 2D plane (Y, X), got shape {plane.shape}; use channel_axis "
               f"for colour planes, or denoise_planes for stacks")
        raise ValueError(msg)
    if plane.size == 0:
        msg = f"{what}: empty plane of shape {plane.shape}"
        raise ValueError(msg)
    smallest = max(2 * (2 * (settings.kernel_size // 2) + 1) + 1, settings.median_size)
    if min(plane.shape) < smallest:
        msg = (f"{what}: plane of shape {plane.shape} is smaller than the network's receptive "
               f"field; need at least {smallest} x {smallest} pixels")
        raise ValueError(msg)
    if plane.dtype.kind == "f":
        if not np.isfinite(plane).all():
            msg = f"{what}: plane contains NaN or infinite values"
            raise ValueError(msg)
        if plane.min() < 0:
            msg = (f"{what}: float plane has negative values (min {plane.min():g}); FM2S models "
                   f"photon counts: subtract a smaller offset or clip at 0 first")
            raise ValueError(msg)


def iter_denoise_planes(
    planes: Iterable[np.ndarray] | np.ndarray,
    settings: Settings | None = None,
    *,
    seed: int = 0,
    keys: Sequence[Hashable] | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    data_range: float | None = None,
    noise_reference: Callable[[Hashable], Any] | None = None,
) -> Iterator[PlaneResult]:
    """Denoise 2D planes one after another, each with a network of its own, yielding each
    result as soon as it is ready.

    This is the paper's network per plane, for planes that are not a stack. Stacks (whose
    planes of one channel can share a network) go through :mod:`fm2s.engine`.

    Parameters
    ----------
    planes : iterable of ndarray (Y, X), or ndarray (N, Y, X)
        Integer or float planes. On CUDA, up to ``CUDA_GROUP_SIZE`` consecutive planes whose
        training batches have equal shapes train together in one grouped pass.
    settings : Settings, optional
        Default: ``make_settings()`` (``auto`` preset, fast recipe).
    seed : int
        Base seed; plane ``i`` uses ``plane_seed(seed, keys[i])``.
    keys : sequence of hashable, optional
        Identity of each plane. Default: a digest of the plane's dtype, shape and bytes, so the
        same plane gets the same result wherever it sits in the batch.
    device : {'auto', 'cpu', 'cuda', 'cuda:N'} or torch.device
    threads : int, optional
        CPU threads for torch (default: torch's own choice).
    data_range : float, optional
        Intensity mapped to 1.0, for every plane (default: from each plane's dtype).
    noise_reference : callable, optional
        For ``auto`` settings: ``noise_reference(key)`` gives the plane's
        :class:`fm2s.stack_noise.Segment`, whose model the plane uses (a stack's one noise
        model per acquisition, :class:`fm2s.stack_noise.StackNoise`). Default: every plane
        uses its own estimate.

    Yields
    ------
    PlaneResult
        In input order; ``info`` holds the estimate and resolved settings of ``auto`` planes.
    """
    settings = settings or make_settings()
    device = resolve_device(device)
    set_threads(threads)
    group_size = pack_size(device)
    key_iter = iter(keys) if keys is not None else None
    warn = LowRangeWarning(settings, data_range)

    def prepared():
        for index, plane in enumerate(planes):
            plane = np.asarray(plane)
            key = next(key_iter) if key_iter is not None else None
            yield prepare_plane(plane, settings, key, data_range=data_range,
                                noise_reference=noise_reference, what=f"plane {index}",
                                warn=warn)

    pending = prepared()
    while True:
        chunk = list(itertools.islice(pending, group_size))
        if not chunk:
            if key_iter is not None and next(key_iter, None) is not None:
                msg = "more keys than planes"
                raise ValueError(msg)
            return
        start = time.perf_counter()
        units = [TrainingUnit((p,), plane_seed(seed, p.key)) for p in chunk if not p.constant]
        networks = iter(train_networks(units, device))
        results = [constant_result(p, seed) if p.constant
                   else apply_network(next(networks), p, plane_seed(seed, p.key), device)
                   for p in chunk]
        share = (time.perf_counter() - start) / len(chunk)
        for result in results:
            result.seconds = share
        yield from results


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (None: leave torch's own choice)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            msg = f"threads must be an int >= 1, got {threads!r}"
            raise ValueError(msg)
        torch.set_num_threads(threads)


class LowRangeWarning:
    """Warns once when a hand-set preset meets >8-bit data that fill little of their dtype."""

    def __init__(self, settings: Settings, data_range: float | None):
        self.armed = data_range is None and settings.noise_model == "fm2s"

    def __call__(self, plane: np.ndarray, scale: float, what: str) -> None:
        if self.armed and fills_little_of_dtype(plane) and plane.max() > plane.min():
            self.armed = False
            log.warning(
                "%s: %s data use at most %d of %d levels; the global Poisson stage "
                "then synthesises far too much noise. Pass data_range (for 12-bit "
                "cameras: 4095) to map the camera's range onto [0, 1]", what, plane.dtype,
                int(plane.max()), int(scale))


@dataclass(eq=False)
class PreparedPlane:
    """A plane checked and put on the [0, 1] scale, with its effective settings."""

    plane: np.ndarray  # as given
    noisy: np.ndarray  # (Y, X) float32, plane / scale
    scale: float  # intensity mapped to 1.0
    key: Hashable  # identity (seeds)
    settings: Settings  # resolved for this plane
    info: dict[str, Any] | None  # auto: estimate, source, resolved settings

    @property
    def constant(self) -> bool:
        """A constant plane is its own result (there is no noise to learn from)."""
        return bool(self.plane.min() == self.plane.max())


def prepare_plane(plane: np.ndarray, settings: Settings, key: Hashable | None = None, *,
                  data_range: float | None = None,
                  noise_reference: Callable[[Hashable], Any] | None = None,
                  what: str = "plane", warn: Callable | None = None) -> PreparedPlane:
    """Check a plane, scale it to [0, 1] and resolve its settings (``auto``: its estimate).

    `key` None keys the plane by its content (:func:`content_key` of the [0, 1] plane, so a
    uint16 copy of a uint8 plane, x257, gets its seed). Raises ValueError on a plane the
    engine cannot denoise, naming it by `what`.
    """
    check_plane(plane, settings, what)
    scale = intensity_range(plane, data_range)
    if warn is not None:
        warn(plane, scale, what)
    normalised = (plane.astype(np.float64) / scale).astype(np.float32)
    key = content_key(normalised) if key is None else key
    own, info = _plane_settings(plane, settings, key, data_range, noise_reference)
    return PreparedPlane(plane, normalised, scale, key, own, info)


def _plane_settings(plane, settings, key, data_range, noise_reference):
    """A plane's effective settings and, for ``auto``, the info recorded with its result.

    With a `noise_reference` (a stack's :class:`fm2s.stack_noise.StackNoise`), the plane takes
    its segment's model; without one, its own estimate.
    """
    if not settings.needs_estimate:
        return settings, None
    if noise_reference is not None:
        segment = noise_reference(key)
        chosen = segment.estimate_for(plane, data_range)
        info = {"estimate": chosen.to_dict(), "source": "plane" if segment.own else "stack",
                "segment": segment.index, "plane_std_dn": float(f"{chosen.std_dn:.6g}")}
    else:
        chosen = estimate_noise(plane, data_range=data_range)
        info = {"estimate": chosen.to_dict(), "source": "plane",
                "plane_std_dn": float(f"{chosen.std_dn:.6g}")}
    resolved = auto_settings(chosen, settings)
    info["settings"] = resolved.to_dict()
    return resolved, info


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


#: Size of the SURE probe's step, in noise standard deviations: small enough for a local
#: slope, large enough for float32.
SURE_EPS = 0.1


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
    gram, drive, total = _risk_terms(noisy, candidates, probe, moved, variance,
                                     quantization_var, lambda x: x.sum(axis=(-2, -1)))
    return _least_risk_weights(gram, drive, total, keep_input)


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
    height, width = noisy.shape
    rows = np.linspace(0, height, max(1, round(height / tile)) + 1).round().astype(int)
    cols = np.linspace(0, width, max(1, round(width / tile)) + 1).round().astype(int)

    def tile_sums(x):  # (..., H, W) -> (..., rows, cols)
        return np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=-2), cols[:-1], axis=-1)

    gram, drive, total = _risk_terms(noisy, candidates, probe, moved, variance,
                                     quantization_var, tile_sums)
    weights = _least_risk_weights(gram, drive, total)

    def interpolation(edges, size):  # (size, tiles): linear in the tile centres, flat beyond
        centres = (edges[:-1] + edges[1:] - 1) / 2.0
        unit = np.eye(len(centres))
        return np.stack([np.interp(np.arange(size), centres, u) for u in unit], axis=1)

    across, along = interpolation(rows, height), interpolation(cols, width)
    return across @ weights @ along.T


def _risk_terms(noisy, candidates, probe, moved, variance, quantization_var, sums):
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


def _least_risk_weights(gram: np.ndarray, drive: np.ndarray, total: np.ndarray | float,
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


@dataclass(frozen=True)
class TrainingUnit:
    """Planes that train one network together (one: the paper's network per plane)."""

    planes: tuple[PreparedPlane, ...]  # equal shapes, equal settings
    seed: int  # the network's seed (weights, crops, noise)


@dataclass
class Network:
    """A trained single-model network and what applying it needs."""

    model: FM2SNet
    seed: int
    settings: Settings  # resolved, on the planes' [0, 1] scale
    boost: float  # the planes were multiplied by this to train (training_boost)
    trained_on: tuple[Hashable, ...]  # keys of the planes it was trained on
    seconds: float = 0.0  # training wall time (its share of a grouped pass)
    #: Intensity (DN) that maps to 1.0 on the network's scale (None: each plane's own). Float
    #: planes brighter than 1 are each divided by their own maximum; planes of one noise model
    #: train and are applied on the scale of the brightest one, where that model holds.
    scale: float | None = None

    def factor(self, plane: PreparedPlane) -> float:
        """What a prepared plane is multiplied by to be on the network's (boosted) scale."""
        if self.scale is None or plane.scale == self.scale:
            return self.boost
        return self.boost * plane.scale / self.scale


def unit_samples(settings: Settings, planes: int) -> int:
    """Synthetic samples of a network trained on `planes` planes.

    One plane trains the recipe's ``samples``; a shared network trains ``samples`` per plane,
    up to ``group_samples``: its cost per plane never exceeds a network of its own.
    """
    if planes <= 1:
        return settings.samples
    return max(settings.samples, min(planes * settings.samples, settings.group_samples))


def unit_scale(unit: TrainingUnit) -> PreparedPlane:
    """The plane of a unit whose scale the unit trains on: the largest (no plane leaves
    [0, 1] when brought onto it); the first such plane."""
    return max(unit.planes, key=lambda p: p.scale)


def unit_boost(unit: TrainingUnit) -> float:
    """The training boost of a unit: its brightest plane's (no plane leaves [0, 1])."""
    top = unit_scale(unit).scale
    return min(training_boost(_on_scale(p, top), p.settings) for p in unit.planes)


def _on_scale(plane: PreparedPlane, scale: float) -> np.ndarray:
    """A prepared plane brought onto the [0, 1] scale that maps `scale` DN to 1.0."""
    return plane.noisy if plane.scale == scale else plane.noisy * np.float32(plane.scale / scale)


def _scaled(settings: Settings, boost: float) -> Settings:
    """The noise model on planes multiplied by `boost` (Poisson-Gaussian scales exactly)."""
    if boost == 1:
        return settings
    return settings.replace(gain=settings.gain * boost, read_var=settings.read_var * boost**2)


def train_networks(units: Sequence[TrainingUnit], device: torch.device,
                   pack: int | None = None) -> list[Network]:
    """Train one network per unit; units with equal batch shapes, settings and boosts train
    together in grouped passes of up to `pack` networks (default: ``CUDA_GROUP_SIZE`` on
    CUDA, 1 on CPU, where grouping gains nothing).

    Returns
    -------
    list of Network
        In the order of `units`.
    """
    pack = pack or pack_size(device)
    prepared = []
    for slot, unit in enumerate(units):
        first = unit_scale(unit)  # its settings hold on the unit's scale
        samples = unit_samples(first.settings, len(unit.planes))
        settings = (first.settings if samples == first.settings.samples
                    else first.settings.replace(samples=samples))
        boost = unit_boost(unit)
        key = (group_key(settings, first.noisy.shape), settings, boost)
        prepared.append((key, slot, unit, settings, boost))
    networks: list[Network | None] = [None] * len(units)
    order = sorted(range(len(prepared)), key=lambda i: (prepared[i][0][0], i))
    batches: dict[tuple, list] = {}
    for i in order:
        batches.setdefault(prepared[i][0], []).append(prepared[i])
    for members in batches.values():
        for start in range(0, len(members), pack):
            for slot, network in _fit_units(members[start:start + pack], device):
                networks[slot] = network
    return networks


def _fit_units(members, device):
    """Train units of one batch key in one grouped pass; yield ``(slot, Network)``."""
    began = time.perf_counter()
    _, _, first_unit, settings, boost = members[0]
    train_settings = _scaled(settings, boost)
    data = []
    for _, _, unit, _, _ in members:
        top = unit_scale(unit).scale
        works = [_on_scale(p, top) * np.float32(boost) for p in unit.planes]
        targets = [median_target(w, settings.median_size) for w in works]
        means = [region_means(t, settings.region_size, settings.mean_clamp) for t in targets]
        init_gen = torch.Generator().manual_seed(unit.seed)
        noise_gen = torch.Generator(device=device).manual_seed(unit.seed ^ 0x5EED)
        data.append(TrainingSet(*([torch.from_numpy(a).to(device) for a in arrays]
                                  for arrays in (works, targets, means)), init_gen, noise_gen))
    log.debug("training %d network(s) on %s plane(s) of shape %s", len(members),
              "+".join(str(len(m[2].planes)) for m in members), first_unit.planes[0].noisy.shape)
    net = fit(data, train_settings, device)
    seconds = (time.perf_counter() - began) / len(members)
    for g, (_, slot, unit, _, _) in enumerate(members):
        network = Network(extract_model(net, g), unit.seed, settings, boost,
                          tuple(p.key for p in unit.planes), seconds, unit_scale(unit).scale)
        yield slot, network


#: Most pixels of one inference pass on CUDA (its activations: 24 channels of float32 each).
INFERENCE_PIXELS = 1 << 24


def inference_batch(device: torch.device, plane_shape: tuple[int, int]) -> int:
    """Planes applied together in one forward pass on `device` (one at a time on a CPU).

    On CUDA, up to ``CUDA_GROUP_SIZE`` planes, fewer for planes so large that a batch would
    exceed ``INFERENCE_PIXELS`` (4 planes of 2048 x 2048). Every pass is padded to this size
    (:func:`fm2s.train.predict_batch`), so the kernels do not depend on the batch's content.
    """
    if device.type != "cuda":
        return 1
    return max(1, min(CUDA_GROUP_SIZE, INFERENCE_PIXELS // max(1, plane_shape[0] * plane_shape[1])))


def apply_network(network: Network, prepared: PreparedPlane, seed: int,
                  device: torch.device) -> PlaneResult:
    """Denoise one plane with a trained network (and the SURE blend of its settings).

    `seed` is the plane's own seed (the blend's probe). ``seconds`` of the result is the
    inference time; callers add their share of training.
    """
    return apply_network_batch(network, [prepared], [seed], device)[0]


def apply_network_batch(network: Network, planes: Sequence[PreparedPlane], seeds: Sequence[int],
                        device: torch.device, batch: int | None = None) -> list[PlaneResult]:
    """:func:`apply_network` for planes of one shape, in one forward pass (and one more for
    the blend's probes), padded to `batch` planes (:func:`inference_batch`).

    Each plane's result is the one :func:`apply_network` gives it alone; ``seconds`` is its
    share of the batch's time. A plane of more than ``REGION_PIXELS`` pixels is applied in
    overlapping regions (:func:`_apply_in_regions`).
    """
    began = time.perf_counter()
    factors = [network.factor(p) for p in planes]
    if planes and planes[0].noisy.size > REGION_PIXELS:  # such planes come one per batch
        outputs = [_apply_in_regions(network, p, seed, device)
                   for p, seed in zip(planes, seeds, strict=True)]
    else:
        works = np.stack([p.noisy * np.float32(f) for p, f in zip(planes, factors, strict=True)])
        quants = [f**2 * rounding_variance(p.plane, p.scale)
                  for p, f in zip(planes, factors, strict=True)]
        outputs = zip(*_denoise_works(network, works, quants, seeds, [p.info for p in planes],
                                      device, batch), strict=True)
    seconds = (time.perf_counter() - began) / len(planes)
    return [PlaneResult(to_dtype(clean / f * p.scale, p.plane.dtype), seconds, seed, p.key,
                        p.scale, info)
            for (clean, info), p, seed, f in zip(outputs, planes, seeds, factors, strict=True)]


#: Planes of more pixels than this are applied in regions of about ``REGION_SIDE`` pixels
#: square, so that the blend's memory (about 135 bytes per pixel) does not grow with the plane.
REGION_PIXELS = 1 << 23
REGION_SIDE = 2048
#: Context beyond a region's share of the plane: its pixels depend on those within 29 pixels
#: (network 5, guided NLM 17 with wide-field patches, Wiener 7); the outer half of it is
#: context only, the inner half is where neighbouring regions cross-fade.
REGION_MARGIN = 64


def _apply_in_regions(network: Network, prepared: PreparedPlane, seed: int,
                      device: torch.device) -> tuple[np.ndarray, dict | None]:
    """The network's output and blend of a large plane, region by region (float64, boosted
    scale), and its info: each region's risk estimate chooses its own blend weights, with its
    own probe (seed derived from the plane's and the region's corner), and neighbouring
    regions cross-fade linearly over the central ``REGION_MARGIN`` pixels of their overlap,
    so that there are no seams.
    The info records the weights' means over the plane and the number of regions.
    """
    boost = network.factor(prepared)
    work = prepared.noisy * np.float32(boost)
    quant = boost**2 * rounding_variance(prepared.plane, prepared.scale)
    height, width = work.shape
    half = REGION_MARGIN // 2
    rows, cols = (np.linspace(0, side, -(-side // REGION_SIDE) + 1).round().astype(int)
                  for side in (height, width))

    def fade(edges, i, size):  # weights of core i along one axis, and the span they need
        lo, hi = edges[i], edges[i + 1]
        centres = np.arange(size) + 0.5
        rise = np.clip((centres - (lo - half)) / (2 * half), 0, 1) if i > 0 else 1.0
        fall = np.clip(((hi + half) - centres) / (2 * half), 0, 1) if hi < size else 1.0
        span = slice(max(0, lo - REGION_MARGIN), min(size, hi + REGION_MARGIN))
        return (rise * fall * np.ones(size))[span], span

    clean = np.zeros(work.shape)
    sums: dict[str, float] = {}
    info = None
    regions = list(itertools.product(range(len(rows) - 1), range(len(cols) - 1)))
    for count, (i, j) in enumerate(regions, 1):
        (across, ys), (along, xs) = fade(rows, i, height), fade(cols, j, width)
        log.info("plane %s (%d x %d): region %d/%d, rows %d-%d, columns %d-%d", prepared.key,
                 height, width, count, len(regions), rows[i], rows[i + 1], cols[j], cols[j + 1])
        region_seed = plane_seed(seed, ("region", int(rows[i]), int(cols[j])))
        (out,), (info,) = _denoise_works(network, work[None, ys, xs], [quant], [region_seed],
                                         [prepared.info], device, 1)
        clean[ys, xs] += across[:, None] * along[None, :] * out
        share = (rows[i + 1] - rows[i]) * (cols[j + 1] - cols[j]) / work.size
        for name in ("blend", "blend_nlm", "blend_guided_nlm"):
            if info is not None and name in info:
                sums[name] = sums.get(name, 0.0) + share * info[name]
    if info is not None:
        info = {**info, **{k: float(f"{v:.6g}") for k, v in sums.items()},
                "regions": len(regions)}
    return clean, info


def _denoise_works(network: Network, works: np.ndarray, quants: Sequence[float],
                   seeds: Sequence[int], infos: Sequence[dict | None], device: torch.device,
                   batch: int | None) -> tuple[np.ndarray, list[dict | None]]:
    """The network's output on planes on its boosted scale (`works`, stacked, with the
    variance of their rounding `quants`), blended as its settings say; float64, that scale.
    Returns the outputs and each plane's info (`infos`, with the blend's weights added)."""
    settings = _scaled(network.settings, network.boost)
    cleans = predict_batch(network.model, works, device, turn_average=settings.turn_average,
                           batch=batch).astype(np.float64)
    infos = list(infos)
    if settings.blend in ("sure", "sure-nlm", "sure-nlm-wiener"):
        # On the boosted scale, where the settings' noise model holds; w is scale-free.
        variances = [sure_variance(clean, settings) for clean in cleans]
        probes = [sure_probe(variance, settings, quant, seed)
                  for variance, quant, seed in zip(variances, quants, seeds, strict=True)]
        probed = [(w + SURE_EPS * p).astype(np.float32) for w, p in zip(works, probes, strict=True)]
        moved = predict_batch(network.model, np.stack(probed), device,
                              turn_average=settings.turn_average, batch=batch)
        for i in range(len(works)):
            info = infos[i] or {"settings": network.settings.to_dict()}
            if settings.blend == "sure":
                weight = sure_weight(works[i], cleans[i], probes[i], moved[i], variances[i],
                                     quants[i])
                cleans[i] = weight * cleans[i] + (1.0 - weight) * works[i]
                infos[i] = {**info, "blend": float(f"{weight:.6g}")}
                continue
            blend, recorded = _nlm_blend(works[i], cleans[i], probes[i], probed[i], moved[i],
                                         variances[i], quants[i], settings, device)
            infos[i] = {**info, **recorded}
            cleans[i] = blend
    return cleans, infos


def _nlm_blend(work, clean, probe, probed, moved, variance, quant, settings, device):
    """The ``sure-nlm`` blend of one plane, on the network's boosted scale (`settings` scaled
    to match), and its Wiener refinement for ``sure-nlm-wiener``: the network's output `clean`
    and two non-local means weighed by their risk estimate. Returns the result and what its
    info records (the weights' means over the plane, the tile, whether Wiener refined it).
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
    return blend, recorded


def constant_result(prepared: PreparedPlane, seed: int) -> PlaneResult:
    """A constant plane's result: the plane itself (blend 0: all input)."""
    info = None if prepared.info is None else {**prepared.info, "blend": 0.0}
    return PlaneResult(prepared.plane.copy(), 0.0, plane_seed(seed, prepared.key),
                       prepared.key, prepared.scale, info)


def denoise_planes(planes, settings: Settings | None = None, **kwargs) -> list[np.ndarray]:
    """Denoise many 2D planes; the list form of :func:`iter_denoise_planes` (same arguments)."""
    return [result.image for result in iter_denoise_planes(planes, settings, **kwargs)]


def denoise(
    image: np.ndarray,
    preset: str = "auto",
    seed: int = 0,
    *,
    recipe: str = "fast",
    channel_axis: int | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    data_range: float | None = None,
    settings: Settings | None = None,
    return_info: bool = False,
    **overrides,
) -> np.ndarray | PlaneResult:
    """Denoise a fluorescence plane with FM2S.

    Parameters
    ----------
    image : ndarray (Y, X) or (Y, X, C) of ints, uints or floats
        The noisy plane. Not modified.
    preset : str
        ``auto`` (default): noise synthesis estimated from the plane itself
        (:func:`fm2s.estimate_noise`, :func:`fm2s.resolve_settings`), for any microscope and
        noise level; or the paper's hand-set synthesis for a microscope: ``confocal``,
        ``twophoton``, ``widefield``, ``base`` or ``v1``.
    seed : int
        Base seed; the same image, settings and seed always give the same result on CPU (with
        the same number of threads: float reductions depend on it).
    recipe : str
        ``fast`` (default), ``v2`` or ``v1`` (the published schedules).
    channel_axis : int, optional
        Axis of colour channels; each channel is denoised on its own. None: a gray plane.
    device : {'auto', 'cpu', 'cuda', 'cuda:N'}
    threads : int, optional
        CPU threads for torch.
    data_range : float, optional
        Intensity mapped to 1.0 (default: the dtype's maximum for integers; see module notes).
    settings : Settings, optional
        Complete settings; when given, ``preset``, ``recipe`` and ``overrides`` are not allowed.
    return_info : bool
        Return a :class:`PlaneResult` (``image``, ``seed``, ``seconds``, and ``info``: the
        noise estimate, resolved settings and blend weight of ``auto``) instead of the image.
        With `channel_axis`, ``info`` is ``{"channels": [info of each channel]}``.
    **overrides
        Fields of :class:`fm2s.settings.Settings`, e.g. ``k_g=150`` or ``steps=200``.

    Returns
    -------
    ndarray or PlaneResult
        The denoised image, with the input's dtype and shape (or its PlaneResult, see
        `return_info`).

    Raises
    ------
    ValueError
        Bad input (wrong dimensions or dtype, NaN/inf, negative floats, too small) or unknown
        preset, recipe or setting.

    Notes
    -----
    FM2S [1]_ trains a small CNN per plane to map synthetic noisy versions of the plane's median
    filter back to that median image, then applies it to the real plane.

    References
    ----------
    .. [1] J. Liu, Y. Teng, X. Jiang et al., "FM2S: Towards Spatially-Correlated Noise Modeling
       in Zero-Shot Fluorescence Microscopy Image Denoising", arXiv:2412.10031.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noisy = rng.poisson(40.0, size=(32, 32)).astype(np.uint8)
    >>> clean = denoise(noisy, seed=0, steps=10, device="cpu")
    >>> clean.shape, clean.dtype
    ((32, 32), dtype('uint8'))
    """
    if settings is None:
        settings = make_settings(preset, recipe, **overrides)
    elif overrides:
        msg = "pass either settings or overrides, not both"
        raise ValueError(msg)
    image = np.asarray(image)
    options = dict(seed=seed, device=device, threads=threads, data_range=data_range)
    if channel_axis is None:
        result = next(iter_denoise_planes([image], settings, **options))
        return result if return_info else result.image
    if image.ndim != 3:
        msg = f"channel_axis given: expected a (Y, X, C)-like 3D image, got shape {image.shape}"
        raise ValueError(msg)
    axis = channel_axis % image.ndim
    channels = np.moveaxis(image, axis, 0)
    results = list(iter_denoise_planes(list(channels), settings, **options))
    out = np.moveaxis(np.stack([r.image for r in results]), 0, axis)
    if not return_info:
        return out
    return PlaneResult(out, sum(r.seconds for r in results), seed, None,
                       results[0].data_range, {"channels": [r.info for r in results]})
