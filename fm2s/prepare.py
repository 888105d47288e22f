"""A plane made ready for the engine: checked, put on the [0, 1] scale, seeded and given its
settings (``auto``: its noise model); and what comes back, :class:`PlaneResult`.

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
by a power of two for training and inference (:func:`fm2s.intensity.training_boost`).

The result is multiplied back, rounded (not truncated) and clipped to the input dtype.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .estimate import auto_settings, estimate_noise
from .intensity import fills_little_of_dtype, intensity_range
from .settings import Settings

__all__ = ["LowRangeWarning", "PlaneResult", "PreparedPlane", "check_plane", "constant_result",
           "content_key", "plane_seed", "prepare_plane"]

log = logging.getLogger("fm2s.denoise")


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
    #: Planes of a stack: SHA-256 of the raw plane's bytes as read (provenance, chunk checks).
    input_sha256: str | None = None


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


def constant_result(prepared: PreparedPlane, seed: int) -> PlaneResult:
    """A constant plane's result: the plane itself (blend 0: all input)."""
    info = None if prepared.info is None else {**prepared.info, "blend": 0.0}
    return PlaneResult(prepared.plane.copy(), 0.0, plane_seed(seed, prepared.key),
                       prepared.key, prepared.scale, info)
