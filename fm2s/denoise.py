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
import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np
import torch

from .noise import correlate_rows, correlated_normal, median_target, region_means
from .settings import Settings, make_settings
from .train import PlaneData, extract_model, fit, group_key, predict

__all__ = ["PlaneResult", "denoise", "denoise_planes", "iter_denoise_planes", "plane_seed",
           "resolve_device", "sure_blend_weight", "training_boost"]

log = logging.getLogger(__name__)

#: Planes trained in one grouped pass on a CUDA device (on CPU, one at a time: there grouping
#: gains nothing and a lone plane gives bitwise the same result either way).
CUDA_GROUP_SIZE = 16


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


def _check_plane(plane: np.ndarray, settings: Settings, what: str) -> None:
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


def intensity_range(plane: np.ndarray, data_range: float | None = None) -> float:
    """The intensity mapped to 1.0 (see the module docstring)."""
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


def _fills_little_of_dtype(plane: np.ndarray) -> bool:
    """True for >8-bit integer data below 1/16 of the dtype's range (e.g. 12 bits in uint16)."""
    return (plane.dtype.kind in "ui" and plane.dtype.itemsize > 1
            and plane.max() < np.iinfo(plane.dtype).max / 16)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


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
    """Denoise 2D planes one after another, yielding each result as soon as it is ready.

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
        For ``auto`` settings: ``noise_reference(key)`` gives the reference
        :class:`fm2s.estimate.NoiseEstimate` of the plane's channel (or None). Each plane's
        own estimate (cheap: about 0.09 s for 512 x 512) is compared with it
        (:func:`fm2s.estimate.consistent`): the reference is used when they agree, so planes
        of one channel share settings (and train together on a GPU), the plane's own estimate
        when they do not. Default: every plane uses its own estimate.

    Yields
    ------
    PlaneResult
        In input order; ``info`` holds the estimate and resolved settings of ``auto`` planes.
    """
    settings = settings or make_settings()
    device = resolve_device(device)
    if threads is not None:
        if threads < 1:
            msg = f"threads must be >= 1, got {threads!r}"
            raise ValueError(msg)
        torch.set_num_threads(threads)
    group_size = CUDA_GROUP_SIZE if device.type == "cuda" else 1
    key_iter = iter(keys) if keys is not None else None
    warned = False

    def prepared():
        nonlocal warned
        for index, plane in enumerate(planes):
            plane = np.asarray(plane)
            _check_plane(plane, settings, f"plane {index}")
            scale = intensity_range(plane, data_range)
            if (not warned and data_range is None and settings.noise_model == "fm2s"
                    and _fills_little_of_dtype(plane)):
                warned = True
                log.warning(
                    "plane %d: %s data use at most %d of %d levels; the global Poisson stage "
                    "then synthesises far too much noise. Pass data_range (for 12-bit "
                    "cameras: 4095) to map the camera's range onto [0, 1]", index, plane.dtype,
                    int(plane.max()), int(scale))
            normalised = (plane.astype(np.float64) / scale).astype(np.float32)
            # Keying on the [0, 1] plane gives a uint16 copy of a uint8 plane (x257) its seed.
            key = next(key_iter) if key_iter is not None else content_key(normalised)
            own, info = _plane_settings(plane, settings, key, data_range, noise_reference)
            yield plane, normalised, scale, key, own, info

    pending = prepared()
    while True:
        chunk = list(itertools.islice(pending, group_size))
        if not chunk:
            if key_iter is not None and next(key_iter, None) is not None:
                msg = "more keys than planes"
                raise ValueError(msg)
            return
        # Consecutive planes with equal batch shapes and settings train together.
        for (_, own), members in groupby(
                chunk, key=lambda item: (group_key(item[4], item[0].shape), item[4])):
            yield from _denoise_group(list(members), own, seed, device)


def _plane_settings(plane, settings, key, data_range, noise_reference):
    """A plane's effective settings and, for ``auto``, the info recorded with its result."""
    if not settings.needs_estimate:
        return settings, None
    from .estimate import auto_settings, choose_estimate, estimate_noise

    own = estimate_noise(plane, data_range=data_range)
    reference = noise_reference(key) if noise_reference is not None else None
    chosen, source = choose_estimate(reference, own)
    resolved = auto_settings(chosen, settings)
    info = {"estimate": chosen.to_dict(), "source": source,
            "plane_std_dn": float(f"{own.std_dn:.6g}"), "settings": resolved.to_dict()}
    return resolved, info


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
    variance = np.maximum(settings.gain * clean.astype(np.float64) + settings.read_var, 0.0)
    total = float(variance.sum() + quantization_var * variance.size)
    residual = float(((noisy.astype(np.float64) - clean) ** 2).sum())
    if total <= 0 or residual <= 0:
        return 1.0
    gen = torch.Generator().manual_seed(seed ^ 0xB1E4D)
    probe = correlate_rows(correlated_normal(noisy.shape, settings.noise_corr, generator=gen),
                           settings.noise_line_corr, settings.noise_corr).numpy()
    probe = probe.astype(np.float64) * np.sqrt(variance)
    probe += np.sqrt(quantization_var) * torch.randn(noisy.shape, generator=gen).numpy()
    eps = 0.1  # a tenth of the noise: small enough for a local slope, large enough for float32
    moved = predict(net, (noisy + eps * probe).astype(np.float32), device,
                    turn_average=settings.turn_average)
    trace = float((probe * (moved.astype(np.float64) - clean)).sum() / eps)
    weight = (total - trace) / residual
    return float(np.clip(weight, 0.0, 1.0)) if np.isfinite(weight) else 1.0


def _denoise_group(members, settings, seed, device) -> list[PlaneResult]:
    start = time.perf_counter()
    results: list[PlaneResult | None] = [None] * len(members)
    by_boost: dict[float, list] = {}  # planes of one boost train together, on scaled settings
    for slot, (plane, noisy, scale, key, _, info) in enumerate(members):
        if plane.min() == plane.max():
            # A constant plane is its own denoised result (and has no noise to learn from).
            if info is not None:
                info = {**info, "blend": 0.0}
            results[slot] = PlaneResult(plane.copy(), 0.0, plane_seed(seed, key), key, scale,
                                        info)
            continue
        boost = training_boost(noisy, settings)
        by_boost.setdefault(boost, []).append((slot, plane, noisy * np.float32(boost), key,
                                               scale, info))
    for boost, trainable in by_boost.items():
        for slot, result in _train_and_apply(trainable, settings, boost, seed, device):
            results[slot] = result
    share = (time.perf_counter() - start) / len(members)
    for result in results:
        result.seconds = share
    return results


def _train_and_apply(trainable, settings, boost, seed, device):
    """Train the planes' networks on ``boost`` times their [0, 1] intensities (the noise model
    scaled to match); yield ``(slot, PlaneResult)`` of each, scaled back."""
    recorded = settings
    if boost != 1:
        settings = settings.replace(gain=settings.gain * boost,
                                    read_var=settings.read_var * boost**2)
    seeds = [plane_seed(seed, key) for _, _, _, key, _, _ in trainable]
    data = []
    for (_, _, work, _, _, _), own_seed in zip(trainable, seeds, strict=True):
        target = median_target(work, settings.median_size)
        means = region_means(target, settings.region_size, settings.mean_clamp)
        init_gen = torch.Generator().manual_seed(own_seed)
        noise_gen = torch.Generator(device=device).manual_seed(own_seed ^ 0x5EED)
        data.append(PlaneData(*(torch.from_numpy(a).to(device) for a in (work, target, means)),
                              init_gen, noise_gen))
    log.debug("training %d plane(s) of shape %s", len(trainable), trainable[0][1].shape)
    net = fit(data, settings, device)
    for g, ((slot, plane, work, key, scale, info), own_seed) in enumerate(
            zip(trainable, seeds, strict=True)):
        model = extract_model(net, g)
        clean = predict(model, work, device,
                        turn_average=settings.turn_average).astype(np.float64)
        if settings.blend == "sure":
            # On the boosted scale, where the settings' noise model holds; w is scale-free.
            quant = boost**2 * rounding_variance(plane, scale)
            weight = sure_blend_weight(model, work, clean, settings, quant, own_seed, device)
            clean = weight * clean + (1.0 - weight) * work
            info = {**(info or {"settings": recorded.to_dict()}),
                    "blend": float(f"{weight:.6g}")}
        image = _to_dtype(clean / boost * scale, plane.dtype)
        yield slot, PlaneResult(image, 0.0, own_seed, key, scale, info)


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
