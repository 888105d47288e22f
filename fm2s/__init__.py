"""fm2s: zero-shot FM2S denoising of fluorescence microscopy planes and stacks.

>>> import fm2s
>>> clean = fm2s.denoise(noisy_plane, seed=0)  # doctest: +SKIP

The public names below are imported on first use, so that ``import fm2s`` (and ``fm2s
--version`` or ``--help``) does not load torch, SciPy or scikit-image.
"""

from __future__ import annotations

import importlib
import sys
import types

# Raised whenever the same input, settings and seed give a different output (a new estimator,
# noise draw or training step), so that the workflow, which passes the version to its rules as
# a parameter, denoises again what an earlier version made.
__version__ = "0.13.0"

# Public name -> submodule that defines it.
_LAZY = {
    "PlaneResult": "prepare",
    "denoise": "denoise",
    "denoise_planes": "denoise",
    "denoise_result": "denoise",
    "iter_denoise_planes": "denoise",
    "plane_seed": "prepare",
    "NoiseEstimate": "estimate",
    "estimate_noise": "estimate",
    "resolve_settings": "estimate",
    "denoise_array": "pipeline",
    "denoise_stack": "pipeline",
    "open_stack": "stacks",
    "PRESETS": "settings",
    "RECIPES": "settings",
    "Settings": "settings",
    "make_settings": "settings",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str):
    """Import the submodule that defines public name `name` and return it (PEP 562)."""
    if name not in _LAZY:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package module: ``fm2s.denoise`` stays the function, never the submodule.

    Importing a submodule binds it as an attribute of its package. The function
    :func:`fm2s.denoise.denoise` has the name of its module on purpose, and was bound after the
    submodule when this package imported it eagerly; now that it is imported on first use, the
    binding of the submodule ``fm2s.denoise`` (by any ``from .denoise import ...``) is turned
    into the function here, so ``fm2s.denoise(plane)`` works whatever was imported first.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "denoise" and isinstance(value, types.ModuleType):
            value = value.denoise
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
