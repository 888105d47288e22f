"""fm2s: zero-shot FM2S denoising of fluorescence microscopy planes and stacks.

>>> import fm2s
>>> clean = fm2s.denoise(noisy_plane, seed=0)  # doctest: +SKIP
"""

# Raised whenever the same input, settings and seed give a different output (a new estimator,
# noise draw or training step), so that the workflow, which passes the version to its rules as
# a parameter, denoises again what an earlier version made.
__version__ = "0.9.0"

from .denoise import (  # noqa: E402  (the function shadows the module name on purpose)
    PlaneResult,
    denoise,
    denoise_planes,
    iter_denoise_planes,
    plane_seed,
)
from .estimate import NoiseEstimate, estimate_noise, resolve_settings  # noqa: E402
from .settings import PRESETS, RECIPES, Settings, make_settings  # noqa: E402

__all__ = [
    "PRESETS",
    "RECIPES",
    "NoiseEstimate",
    "PlaneResult",
    "Settings",
    "__version__",
    "denoise",
    "denoise_planes",
    "estimate_noise",
    "iter_denoise_planes",
    "make_settings",
    "plane_seed",
    "resolve_settings",
]
