"""From a noise estimate to settings: what ``preset="auto"`` resolves to.

The estimators live in :mod:`fm2s.plane_noise` (one plane, blind) and :mod:`fm2s.stack_noise`
(one model per channel of a stack, with its changes); they are re-exported here, so
``fm2s.estimate.estimate_noise`` keeps working.
"""

from __future__ import annotations

import numpy as np

from .plane_noise import NoiseEstimate, estimate_noise, noise_kernel
from .settings import make_settings

__all__ = ["NoiseEstimate", "auto_settings", "estimate_noise", "median_window", "noise_kernel",
           "resolve_settings"]

#: ``auto`` picks the odd median window nearest to holding this many independent noise
#: samples (w^2 / lowfreq_gain): 9, as a 3 x 3 window on white noise, FM2S's choice for
#: confocal and two-photon data. Correlated noise needs a wider window (7-9 px for the
#: wide-field neighbour correlation of 0.6; the hand-set wide-field preset uses 11).
MEDIAN_SAMPLES = 9.0
MEDIAN_MAX = 15


def median_window(estimate: NoiseEstimate) -> int:
    """Median window for the noise's correlation: the odd side nearest ``sqrt(9 G)``.

    ``G`` is the estimate's ``lowfreq_gain``; the result lies in 3..``MEDIAN_MAX``.
    """
    side = np.sqrt(MEDIAN_SAMPLES * max(estimate.lowfreq_gain, 1.0))
    width = 2 * int(np.floor((side - 1.0) / 2.0 + 0.5)) + 1  # the nearest odd side
    return int(min(max(width, 3), MEDIAN_MAX))


def auto_settings(estimate: NoiseEstimate, settings=None):
    """Settings whose synthetic noise matches `estimate` (resolves ``preset="auto"``).

    Parameters
    ----------
    estimate : NoiseEstimate
        From :func:`estimate_noise`.
    settings : Settings, optional
        Unresolved ``auto`` settings (default ``make_settings("auto")``). Only the fields named
        in its ``auto_fields`` are set; fields the user pinned stay as they are.

    Returns
    -------
    Settings
        ``noise_model="poisson-gaussian"`` with ``gain = a``, ``read_var = b`` and
        ``noise_corr = corr`` of the estimate (so the synthetic noise added to the median image
        has the real noise's pixel variance at every intensity and its spatial correlation, rows
        included: ``noise_line_corr = line_corr``),
        ``median_size`` from :func:`median_window`, and ``auto_fields=()``.
    """
    settings = make_settings("auto") if settings is None else settings
    chosen = {"median_size": median_window(estimate), "gain": estimate.gain,
              "read_var": estimate.read_var, "noise_corr": estimate.corr,
              "noise_line_corr": estimate.line_corr}
    changes = {k: v for k, v in chosen.items() if k in settings.auto_fields}
    return settings.replace(**changes, auto_fields=())


def resolve_settings(image, settings="auto", *, recipe: str = "fast",
                     data_range: float | None = None, **overrides):
    """The settings ``fm2s.denoise(image, preset="auto")`` would use, and the estimate.

    Parameters
    ----------
    image : ndarray (Y, X)
        The noisy plane.
    settings : str or Settings
        A preset name (``"auto"``) or settings; settings that need no estimate are returned
        unchanged (with the estimate anyway, for information).
    recipe : str
        Recipe, when `settings` is a preset name.
    data_range : float, optional
        As in :func:`fm2s.denoise`.
    **overrides
        Settings fields, when `settings` is a preset name; they are kept as given.

    Returns
    -------
    settings : Settings
        Resolved (``auto_fields`` empty).
    estimate : NoiseEstimate

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> plane = rng.poisson(40.0, size=(64, 64)).astype(np.uint8)
    >>> resolved, est = resolve_settings(plane)
    >>> resolved.noise_model, resolved.median_size, round(est.gain_dn, 1)  # doctest: +SKIP
    ('poisson-gaussian', 3, 1.0)
    """
    if isinstance(settings, str):
        settings = make_settings(settings, recipe, **overrides)
    elif overrides:
        msg = "pass either settings or overrides, not both"
        raise ValueError(msg)
    estimate = estimate_noise(image, data_range=data_range)
    if settings.needs_estimate:
        settings = auto_settings(estimate, settings)
    return settings, estimate
