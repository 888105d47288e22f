"""Public denoising functions: one plane (``denoise``) or many planes that are not a stack
(``denoise_planes``, ``iter_denoise_planes``), each with a network of its own.

Stacks, whose planes of one channel share networks, go through :mod:`fm2s.engine`. How planes
are scaled to [0, 1] and back: :mod:`fm2s.prepare`.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .devices import pack_size, resolve_device, set_threads
from .networks import TrainingUnit, apply_network, train_networks
from .prepare import LowRangeWarning, PlaneResult, constant_result, plane_seed, prepare_plane
from .settings import Settings, make_settings

__all__ = ["denoise", "denoise_planes", "denoise_result", "iter_denoise_planes"]


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


def denoise_planes(planes, settings: Settings | None = None, **kwargs) -> list[np.ndarray]:
    """Denoise many 2D planes; the list form of :func:`iter_denoise_planes` (same arguments)."""
    return [result.image for result in iter_denoise_planes(planes, settings, **kwargs)]


def denoise(
    image: np.ndarray,
    preset: str | None = None,
    seed: int = 0,
    *,
    recipe: str | None = None,
    channel_axis: int | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    data_range: float | None = None,
    settings: Settings | None = None,
    return_info: bool = False,
    **overrides,
) -> np.ndarray:
    """Denoise a fluorescence plane with FM2S.

    Parameters
    ----------
    image : ndarray (Y, X) or (Y, X, C) of ints, uints or floats
        The noisy plane. Not modified.
    preset : str
        ``auto`` (the default, also for None): noise synthesis estimated from the plane itself
        (:func:`fm2s.estimate_noise`, :func:`fm2s.resolve_settings`), for any microscope and
        noise level; or the paper's hand-set synthesis for a microscope: ``confocal``,
        ``twophoton``, ``widefield``, ``base`` or ``v1``.
    seed : int
        Base seed; the same image, settings and seed always give the same result on CPU (with
        the same number of threads: float reductions depend on it).
    recipe : str
        ``fast`` (the default, also for None), ``v2`` or ``v1`` (the published schedules).
    channel_axis : int, optional
        Axis of colour channels; each channel is denoised on its own. None: a gray plane.
    device : {'auto', 'cpu', 'cuda', 'cuda:N'}
    threads : int, optional
        CPU threads for torch.
    data_range : float, optional
        Intensity mapped to 1.0 (default: the dtype's maximum for integers; see module notes).
    settings : Settings, optional
        Complete settings (:func:`fm2s.make_settings`); when given, ``preset``, ``recipe`` and
        ``overrides`` are refused.
    return_info : bool
        Deprecated: use :func:`denoise_result`, which returns the :class:`PlaneResult`.
    **overrides
        Fields of :class:`fm2s.settings.Settings`, e.g. ``k_g=150`` or ``steps=200``.

    Returns
    -------
    ndarray
        The denoised image, with the input's dtype and shape.

    Raises
    ------
    ValueError
        Bad input (wrong dimensions or dtype, NaN/inf, negative floats, too small), unknown
        preset, recipe or setting, or `settings` given together with a preset, recipe or
        override.

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
    result = denoise_result(image, preset, seed, recipe=recipe, channel_axis=channel_axis,
                            device=device, threads=threads, data_range=data_range,
                            settings=settings, **overrides)
    if return_info:
        warnings.warn("denoise(return_info=True) is deprecated: denoise_result() returns the "
                      "PlaneResult", DeprecationWarning, stacklevel=2)
        return result
    return result.image


def denoise_result(
    image: np.ndarray,
    preset: str | None = None,
    seed: int = 0,
    *,
    recipe: str | None = None,
    channel_axis: int | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    data_range: float | None = None,
    settings: Settings | None = None,
    **overrides,
) -> PlaneResult:
    """:func:`denoise`, returning the plane's :class:`PlaneResult`: ``image`` (the denoised
    image), ``seed``, ``seconds``, and ``info`` (for ``auto``: the noise estimate, resolved
    settings and blend weights). With `channel_axis`, ``info`` is
    ``{"channels": [info of each channel]}``. Same arguments as :func:`denoise`.
    """
    if settings is None:
        settings = make_settings(preset or "auto", recipe or "fast", **overrides)
    elif preset is not None or recipe is not None or overrides:
        given = [name for name, value in (("preset", preset), ("recipe", recipe)) if value]
        msg = (f"pass either settings or {', '.join(given + sorted(overrides))}, not both "
               f"(settings already hold the preset, recipe and every field)")
        raise ValueError(msg)
    image = np.asarray(image)
    options = dict(seed=seed, device=device, threads=threads, data_range=data_range)
    if channel_axis is None:
        return next(iter_denoise_planes([image], settings, **options))
    if image.ndim != 3:
        msg = f"channel_axis given: expected a (Y, X, C)-like 3D image, got shape {image.shape}"
        raise ValueError(msg)
    axis = channel_axis % image.ndim
    channels = np.moveaxis(image, axis, 0)
    results = list(iter_denoise_planes(list(channels), settings, **options))
    out = np.moveaxis(np.stack([r.image for r in results]), 0, axis)
    return PlaneResult(out, sum(r.seconds for r in results), seed, None,
                       results[0].data_range, {"channels": [r.info for r in results]})
