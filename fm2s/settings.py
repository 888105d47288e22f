"""Denoising settings: one validated, serialisable object.

A :class:`Settings` combines two things that the FM2S reference code mixes up:

* a **preset**: how to synthesise noise for a kind of microscope (``k_g``, ``k_p``, ``lam_p``,
  channel amplification ``channels``, region size ``region_size``, median window
  ``median_size``); values from the reference implementation (Danielement321/FM2S, v2);
* a **recipe**: the network and the training schedule (``v1`` and ``v2`` as published, or our
  ``fast`` default).

Every field is plain data, so a settings object round-trips through ``to_dict``/``from_dict``
and JSON, and :meth:`Settings.digest` gives a stable hash the workflow uses to name results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AUTO_FIELDS", "NOISE_MODELS", "PRESETS", "RECIPES", "Settings", "make_settings",
           "parse_overrides"]

#: Fields that ``preset="auto"`` chooses from each plane's noise estimate.
AUTO_FIELDS = ("median_size", "gain", "read_var", "noise_corr", "noise_line_corr")

# Noise synthesis per microscope (reference code v2; "v1" is the single preset of paper v1).
PRESETS: dict[str, dict[str, Any]] = {
    "confocal": dict(channels=2, region_size=75, median_size=3, k_g=200.0, k_p=30.0, lam_p=70.0),
    "twophoton": dict(channels=2, region_size=75, median_size=3, k_g=175.0, k_p=30.0, lam_p=60.0),
    "widefield": dict(
        channels=1, region_size=75, median_size=11, k_g=220.0, k_p=45.0, lam_p=2000.0
    ),
    "base": dict(channels=6, region_size=5, median_size=3, k_g=60.0, k_p=40.0, lam_p=125.0),
    "v1": dict(channels=2, region_size=75, median_size=3, k_g=200.0, k_p=30.0, lam_p=60.0),
    # Chosen per plane from its own noise estimate (fm2s.estimate): a Poisson-Gaussian model with
    # the plane's gain, read variance and spatial correlation, a median window that averages
    # as many independent noise samples as a 3 x 3 window does on white noise, and a SURE-chosen
    # blend of the network's output, non-local means on the variance-stabilised plane
    # (classical, and guided by the network's output) and, where the noise is white, the input
    # (docs/noise-estimation.md).
    # One channel: with n copies, each with its own noise draw, the network learns to average
    # the copies, which removes nothing at inference, where every copy is the same real plane
    # (+0.56 dB on FMD raw images against n = 2). The values of AUTO_FIELDS here are
    # placeholders until resolved.
    "auto": dict(channels=1, region_size=75, median_size=3, k_g=0.0, k_p=30.0, lam_p=70.0,
                 noise_model="poisson-gaussian", gain=0.0, read_var=0.0, noise_corr=0.0,
                 blend="sure-nlm-wiener", sure_tile=32, auto_fields=AUTO_FIELDS),
}
NOISE_MODELS = ("fm2s", "poisson-gaussian")
_BLENDS = ("none", "sure", "sure-nlm", "sure-nlm-wiener")
# Fields added after the first release: written by to_dict only when they differ from their
# defaults, so the digests (and workflow result names) of existing settings do not change.
_OPTIONAL = {"noise_model": "fm2s", "gain": 0.0, "read_var": 0.0, "noise_corr": 0.0,
             "noise_line_corr": 0.0,
             "blend": "none", "auto_fields": (), "turn_average": False,
             "group_size": 1, "group_samples": 0, "sure_tile": 0, "neighbours": "off"}
#: Values of ``Settings.neighbours`` (fm2s.neighbours).
NEIGHBOURS = ("off", "auto")

# Shared training of the fast recipe (fm2s.engine): consecutive planes of one channel whose
# noise agrees share a network of up to GROUP_SIZE planes, trained for `samples` per plane up
# to GROUP_SAMPLES in all (benchmarks/shared.py; README "One network for many planes").
GROUP_SIZE = 256
GROUP_SAMPLES = 3000

# Network and schedule. Step counts are optimiser steps; a "sample" is one fresh noise draw.
RECIPES: dict[str, dict[str, Any]] = {
    # Paper v1: 3x3 kernels, 25 samples x 150 steps, lr x0.25 at steps 1500 and 3000.
    "v1": dict(
        kernel_size=3, mean_clamp=(0.01, 0.20), warmup_steps=0, samples=25, steps_per_sample=150,
        lr=1e-3, lr_schedule="step", lr_milestones=(1500, 3000), lr_gamma=0.25,
        crop_size=0, batch_size=1, precision="float32",
    ),
    # Paper v2: 5x5 outer kernels, 5 warm-up steps on the real plane, 450 samples x 5 steps.
    "v2": dict(
        kernel_size=5, mean_clamp=(1e-5, 0.15), warmup_steps=5, samples=450, steps_per_sample=5,
        lr=1e-3, lr_schedule="constant", lr_milestones=(), lr_gamma=1.0,
        crop_size=0, batch_size=1, precision="float32",
    ),
    # Ours: the v2 network and noise, trained on mini-batches of seven random 48 x 48 crops with
    # a fresh noise draw per step, a one-cycle learning rate and bfloat16 where the hardware has
    # it: about 24x fewer pixel-updates than v2 (see README for the measurements). Its output
    # is averaged with that of the plane turned by 180 degrees.
    "fast": dict(
        kernel_size=5, mean_clamp=(1e-5, 0.15), warmup_steps=0, samples=1500, steps_per_sample=1,
        lr=4e-3, lr_schedule="onecycle", lr_milestones=(), lr_gamma=1.0,
        crop_size=48, batch_size=7, precision="auto", turn_average=True,
        group_size=GROUP_SIZE, group_samples=GROUP_SAMPLES, neighbours="auto",
    ),
}

_LR_SCHEDULES = ("constant", "step", "onecycle")
_PRECISIONS = ("float32", "bfloat16", "auto")


def _choices(names) -> str:
    return ", ".join(repr(n) for n in sorted(names))


@dataclass(frozen=True)
class Settings:
    """Everything that determines FM2S's output for a plane, apart from the seed.

    Intensities are on the algorithm's [0, 1] scale (see :func:`fm2s.denoise.denoise`).

    Attributes
    ----------
    preset, recipe : str
        Names the values came from (recorded for provenance; the fields below are what counts).
    channels : int
        Channel amplification ``n``: the plane is repeated ``n`` times, each copy with its own
        noise draw during training; the output is the mean over the ``n`` outputs.
    region_size : int
        Side ``s`` in pixels of the square tiles over which the mean intensity ``M`` is taken.
    median_size : int
        Side in pixels of the median filter that makes the pseudo-clean target (odd).
    k_g : float
        Regional Gaussian noise: standard deviation ``k_g * M / 255``.
    k_p : float
        Regional Poisson noise: ``Poisson(c * k_p / M) * M / k_p``, variance ``c * M / k_p``.
    lam_p : float
        Global Poisson noise: ``Poisson(y * lam_p) / lam_p`` (photons at intensity 1.0).
    mean_clamp : (float, float)
        Range that each tile mean ``M`` is clamped to.
    kernel_size : int
        Kernel size of the first and last convolutions (3 in v1, 5 in v2; the middle is 3x3).
    warmup_steps : int
        Steps trained on the real noisy plane before synthetic samples (v2's "stage 1").
    samples, steps_per_sample : int
        Number of fresh noise draws, and optimiser steps taken on each.
    lr : float
        Adam learning rate (peak rate for ``onecycle``).
    lr_schedule : {'constant', 'step', 'onecycle'}
        ``step`` multiplies by ``lr_gamma`` at each of ``lr_milestones`` (step indices counted
        after warm-up); ``onecycle`` warms up over the first 10 % and decays by cosine to 1 %.
    crop_size : int
        Side of the random square crops trained on; 0 trains on the full frame.
    batch_size : int
        Crops per optimiser step (1 with full frames).
    precision : {'float32', 'bfloat16', 'auto'}
        Arithmetic of the training forward pass. ``bfloat16`` is autocast mixed precision, about
        2x faster on CPUs with AVX-512 and on recent GPUs; ``auto`` uses it where the device
        supports it natively and float32 elsewhere. Inference always runs in float32.
    turn_average : bool
        Output the mean of the network applied to the plane and to the plane turned by 180
        degrees (turned back). Averages away some of the network's own error at the cost of a
        second inference. A half turn keeps the orientation of every line-like structure (scan
        lines, elongated point spread functions) that the network may have learned from the
        plane; mirroring and quarter turns do not, and cost up to 0.4 dB on FMD two-photon
        images.
    noise_model : {'fm2s', 'poisson-gaussian'}
        ``fm2s``: the paper's three stages with ``k_g``, ``k_p``, ``lam_p`` (every preset but
        ``auto``). ``poisson-gaussian``: noise of variance ``gain * c + read_var`` (floored at
        0) correlated by ``noise_corr``; ``k_g``, ``k_p``, ``lam_p`` and the region means are
        then unused.
    gain : float
        Poisson-Gaussian gain ``a`` on the [0, 1] scale (intensity of one photon).
    read_var : float
        Poisson-Gaussian signal-independent variance ``b``, [0, 1]^2 units; may be negative
        (dark offset or clipping), the variance is floored at 0 per pixel.
    noise_corr : float
        Std (pixels) of the Gaussian kernel, normalised to unit energy, that spatially
        correlates the ``poisson-gaussian`` noise; 0 is white noise.
    noise_line_corr : float
        Lag-1 correlation, in [0, 0.5), that a two-tap moving average along rows adds to the
        ``poisson-gaussian`` noise (the scan lines of point-scanning microscopes); 0: none.
    blend : {'none', 'sure', 'sure-nlm', 'sure-nlm-wiener'}
        ``sure``: output ``w * net + (1 - w) * input`` with the weight ``w`` in [0, 1] that
        minimises Stein's unbiased risk estimate under the Poisson-Gaussian model above (needs
        ``gain``/``read_var``); keeps low-noise planes from being over-smoothed.
        ``sure-nlm``: the same risk estimate also weighs two estimates by non-local means on
        the variance-stabilised plane (:func:`fm2s.classical.vst_nlm`), classical and with the
        patch similarities of the network's output:
        ``input + w1 (net - input) + w2 (nlm - input) + w3 (guided nlm - input)``, weights
        ``>= 0`` summing to at most 1, and to exactly 1 (none of the input) on correlated
        noise (``noise_corr`` > 0), whose model misses the broad part of the noise.
        ``sure-nlm-wiener``: that blend, then, on planes whose noise is white
        (``noise_corr`` 0), the empirical Wiener filter of the plane with the blend's spectrum
        (:func:`fm2s.classical.vst_wiener`).
    sure_tile : int
        Side, in pixels, of the tiles over which the ``sure-nlm`` and ``sure-nlm-wiener``
        blends choose their weights on planes whose noise is white (``noise_corr`` 0): SURE
        per tile, the weights interpolated between tile centres
        (:func:`fm2s.blend.sure_weight_maps`). 0: one set of weights per plane, as always
        on correlated noise.
    neighbours : {'off', 'auto'}
        Stack mode (:mod:`fm2s.neighbours`): ``auto`` blends each plane of a stack, after
        plane mode, with estimates from up to two raw neighbouring planes on each side (along
        z in a z-stack, t in a time-lapse), per ``sure_tile`` tile by the same risk estimate,
        so that tiles where the neighbours show other structures keep the plane-mode result.
        Needs a ``sure-nlm`` or ``sure-nlm-wiener`` blend. Single planes, and stacks of one
        plane per channel, are never affected. ``off``: plane mode.
    group_size : int
        In a stack, planes per shared network (:mod:`fm2s.engine`): consecutive planes of one
        channel whose noise agrees train one network together. 1: a network per plane (the
        paper's). Single planes always train their own.
    group_samples : int
        Synthetic samples of a shared network of ``P`` planes: ``P * samples``, at most this
        (at least ``samples``). Normalised to 0 when ``group_size`` is 1. The ``steps``
        override of :func:`make_settings` sets it to ``samples``: then every network, shared
        or not, trains ``steps`` steps.
    auto_fields : tuple of str
        Fields still to be chosen from each plane's noise estimate (see :data:`AUTO_FIELDS`);
        non-empty only for unresolved ``preset="auto"`` settings.
    """

    # No defaults: every value comes from a preset and a recipe (make_settings) or a stored
    # dict (from_dict), so PRESETS and RECIPES stay the one place that sets them.
    preset: str
    recipe: str
    channels: int
    region_size: int
    median_size: int
    k_g: float
    k_p: float
    lam_p: float
    mean_clamp: tuple[float, float]
    kernel_size: int
    warmup_steps: int
    samples: int
    steps_per_sample: int
    lr: float
    lr_schedule: str
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    crop_size: int
    batch_size: int
    precision: str
    # Added after the first release; their defaults (= _OPTIONAL) read old dicts back as
    # they were written.
    noise_model: str = _OPTIONAL["noise_model"]
    gain: float = _OPTIONAL["gain"]
    read_var: float = _OPTIONAL["read_var"]
    noise_corr: float = _OPTIONAL["noise_corr"]
    noise_line_corr: float = _OPTIONAL["noise_line_corr"]
    blend: str = _OPTIONAL["blend"]
    auto_fields: tuple[str, ...] = _OPTIONAL["auto_fields"]
    turn_average: bool = _OPTIONAL["turn_average"]
    group_size: int = _OPTIONAL["group_size"]
    group_samples: int = _OPTIONAL["group_samples"]
    sure_tile: int = _OPTIONAL["sure_tile"]
    neighbours: str = _OPTIONAL["neighbours"]

    def __post_init__(self):
        # Normalise sequences read back from JSON to tuples, so equality and hashing hold.
        object.__setattr__(self, "mean_clamp", tuple(float(v) for v in self.mean_clamp))
        object.__setattr__(self, "lr_milestones", tuple(int(v) for v in self.lr_milestones))
        object.__setattr__(self, "auto_fields", tuple(str(v) for v in self.auto_fields))
        if self.group_size == 1:
            # Meaningless for a network per plane: per-plane settings keep one digest.
            object.__setattr__(self, "group_samples", 0)
        self._validate()

    @property
    def per_plane(self) -> bool:
        """True when every plane trains a network of its own (``group_size == 1``)."""
        return self.group_size == 1

    @property
    def needs_estimate(self) -> bool:
        """True for ``auto`` settings whose noise parameters are still to be estimated."""
        return bool(self.auto_fields)

    def _validate(self):
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                msg = f"settings: {name} must be an integer >= {minimum}, got {value!r}"
                raise ValueError(msg)

        for name in ("channels", "region_size", "median_size", "kernel_size", "samples",
                     "steps_per_sample", "batch_size"):
            positive_int(name)
        positive_int("warmup_steps", 0)
        positive_int("crop_size", 0)
        positive_int("group_size")
        positive_int("group_samples", 0)
        positive_int("sure_tile", 0)
        if self.median_size % 2 == 0 or self.kernel_size % 2 == 0:
            msg = (f"settings: median_size and kernel_size must be odd, got "
                   f"{self.median_size} and {self.kernel_size}")
            raise ValueError(msg)
        for name in ("k_g", "k_p", "lam_p", "lr", "lr_gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                msg = f"settings: {name} must be a number >= 0, got {value!r}"
                raise ValueError(msg)
        if self.k_p <= 0 or self.lam_p <= 0 or self.lr <= 0:
            msg = (f"settings: k_p, lam_p and lr must be > 0, got {self.k_p}, {self.lam_p}, "
                   f"{self.lr}")
            raise ValueError(msg)
        low, high = self.mean_clamp if len(self.mean_clamp) == 2 else (None, None)
        if low is None or not 0 < low <= high <= 1:
            msg = ("settings: mean_clamp must be (low, high) with 0 < low <= high <= 1, "
                   f"got {self.mean_clamp!r}")
            raise ValueError(msg)
        if self.lr_schedule not in _LR_SCHEDULES:
            msg = (f"settings: unknown lr_schedule {self.lr_schedule!r}; expected one of "
                   f"{_choices(_LR_SCHEDULES)}")
            raise ValueError(msg)
        if self.precision not in _PRECISIONS:
            msg = (f"settings: unknown precision {self.precision!r}; expected one of "
                   f"{_choices(_PRECISIONS)}")
            raise ValueError(msg)
        if self.crop_size == 0 and self.batch_size != 1:
            msg = "settings: full-frame training (crop_size=0) needs batch_size=1"
            raise ValueError(msg)
        if self.noise_model not in NOISE_MODELS:
            msg = (f"settings: unknown noise_model {self.noise_model!r}; expected one of "
                   f"{_choices(NOISE_MODELS)}")
            raise ValueError(msg)
        if not isinstance(self.turn_average, bool):
            msg = f"settings: turn_average must be true or false, got {self.turn_average!r}"
            raise ValueError(msg)
        if self.neighbours not in NEIGHBOURS:
            msg = (f"settings: unknown neighbours {self.neighbours!r}; expected one of "
                   f"{_choices(NEIGHBOURS)}")
            raise ValueError(msg)
        if self.blend not in _BLENDS:
            msg = f"settings: unknown blend {self.blend!r}; expected one of {_choices(_BLENDS)}"
            raise ValueError(msg)
        for name in ("gain", "read_var", "noise_corr", "noise_line_corr"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not np.isfinite(value)):
                msg = f"settings: {name} must be a finite number, got {value!r}"
                raise ValueError(msg)
        if (self.gain < 0 or not 0 <= self.noise_corr <= 5
                or not 0 <= self.noise_line_corr < 0.5):
            msg = (f"settings: gain must be >= 0, noise_corr in [0, 5] and noise_line_corr in "
                   f"[0, 0.5), got {self.gain}, {self.noise_corr}, {self.noise_line_corr}")
            raise ValueError(msg)
        unknown = set(self.auto_fields) - set(AUTO_FIELDS)
        if unknown:
            msg = (f"settings: auto_fields {_choices(unknown)} cannot be estimated; expected "
                   f"some of {_choices(AUTO_FIELDS)}")
            raise ValueError(msg)

    @property
    def total_steps(self) -> int:
        """Optimiser steps on synthetic samples (warm-up steps excluded)."""
        return self.samples * self.steps_per_sample

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dictionary of every field."""
        data = dataclasses.asdict(self)
        data["mean_clamp"] = list(self.mean_clamp)
        data["lr_milestones"] = list(self.lr_milestones)
        data["auto_fields"] = list(self.auto_fields)
        for name, default in _OPTIONAL.items():
            if getattr(self, name) == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            msg = f"settings: unknown keys {_choices(unknown)}"
            raise ValueError(msg)
        missing = fields - set(data) - set(_OPTIONAL)
        if missing:
            msg = f"settings: missing keys {_choices(missing)}"
            raise ValueError(msg)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form; equal settings give equal digests."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (validated like any other)."""
        return make_settings(self.preset, self.recipe, _base=self, **changes)


def parse_overrides(items) -> dict[str, Any]:
    """Setting overrides from ``KEY=VALUE`` strings (as given to ``--set``).

    Each value is read as JSON (``150``, ``true``, ``[0.01, 0.2]``, ``"bfloat16"``) and, where
    that fails, kept as the plain string (``precision=bfloat16``). Later items win.

    Raises
    ------
    ValueError
        An item without ``=``.
    """
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            msg = f"--set {item!r}: expected KEY=VALUE"
            raise ValueError(msg)
        try:
            overrides[key.strip()] = json.loads(text.strip())
        except json.JSONDecodeError:
            overrides[key.strip()] = text.strip()
    return overrides


# Friendly override name: ``steps`` means "this many optimiser steps for every network", a
# network of one plane or one shared by a group of planes alike. Without group_samples, a
# shared network would train `steps` per plane up to the recipe's GROUP_SAMPLES (3,000 for a
# group of 50+ planes whatever `steps` said), so `steps` sets it too unless it is given.
def _expand_steps(overrides: dict[str, Any]) -> dict[str, Any]:
    if "steps" in overrides:
        steps = overrides.pop("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            msg = f"settings: steps must be an integer >= 1, got {steps!r}"
            raise ValueError(msg)
        overrides.setdefault("samples", steps)
        overrides.setdefault("steps_per_sample", 1)
        if overrides["samples"] * overrides["steps_per_sample"] != steps:
            msg = "settings: steps conflicts with samples x steps_per_sample"
            raise ValueError(msg)
        overrides.setdefault("group_samples", overrides["samples"])
    return overrides


def make_settings(preset: str = "auto", recipe: str = "fast", *, _base: Settings | None = None,
                  **overrides) -> Settings:
    """Build validated settings from a preset, a recipe and explicit overrides.

    Parameters
    ----------
    preset : str
        ``auto`` (default), or one of ``confocal``, ``twophoton``, ``widefield``, ``base``,
        ``v1``. With ``auto`` the noise parameters (:data:`AUTO_FIELDS`) are estimated from
        each plane when it is denoised (see :func:`fm2s.estimate.resolve_settings`); any of
        them given as an override is kept as given.
    recipe : str
        One of ``fast`` (default), ``v2``, ``v1``.
    **overrides
        Any :class:`Settings` field, or ``steps``: the optimiser steps of every network, one
        per sample, for a network of one plane and a group's shared network alike (it sets
        ``samples``, ``steps_per_sample=1`` and, unless given, ``group_samples``).

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        Unknown preset, recipe or field name, or an invalid value. Never a silent fallback.

    Examples
    --------
    >>> make_settings("widefield", recipe="v2").median_size
    11
    """
    if preset not in PRESETS:
        msg = f"unknown preset {preset!r}; expected one of {_choices(PRESETS)}"
        raise ValueError(msg)
    if recipe not in RECIPES:
        msg = f"unknown recipe {recipe!r}; expected one of {_choices(RECIPES)}"
        raise ValueError(msg)
    overrides = _expand_steps(dict(overrides))
    names = {f.name for f in dataclasses.fields(Settings)} - {"preset", "recipe"}
    unknown = set(overrides) - names
    if unknown:
        msg = f"unknown setting {_choices(unknown)}; expected one of {_choices(names | {'steps'})}"
        raise ValueError(msg)
    if _base is not None:
        values = {f.name: getattr(_base, f.name) for f in dataclasses.fields(Settings)}
    else:
        values = {**RECIPES[recipe], **PRESETS[preset]}
    values.update(overrides, preset=preset, recipe=recipe)
    if "auto_fields" not in overrides:
        # An explicit override of an estimated field pins it.
        pinned = values.get("auto_fields", ())
        values["auto_fields"] = tuple(f for f in pinned if f not in overrides)
    return Settings(**values)
