"""One noise model per acquisition: a stack's noise, fitted per channel from many planes.

The noise of a camera or a detector (gain, dark offset, read noise, spatial correlation)
belongs to the acquisition, not to the plane. One plane of a few thousand pixels is not enough
to tell white from correlated noise reliably, and estimates of one channel's planes scatter so
much that a per-plane check cannot tell estimation noise from a real change. So the evidence of
many planes is pooled.

Model
-----
For each channel, up to :data:`SAMPLE_PLANES` planes, evenly spaced in ``(t, z)`` order and
chosen from the stack's plane indices alone (every job of a split stack picks the same ones),
give their level-set energies (:func:`fm2s.plane_noise.plane_evidence`). One Poisson-Gaussian
model with spatial correlation is fitted to all of them at once
(:func:`fm2s.plane_noise.fit_evidence`, in DN, so planes of different scales pool): the model
class (white or correlated, row correlation) is chosen once per channel, and the gain and the
read variance (negative where the camera has a dark offset: ``b = r - a * offset``) hold over
the intensities of every plane, the dark ends of a z-stack included.

Changes
-------
Each fitted plane's level-set energies are compared with the channel model's prediction: the
median log ratio ``L`` (0 where the model holds), with its standard error from the spread over
the plane's level sets. A real change of gain or detector within a channel (a setting switched
mid-acquisition) moves ``L`` of every later plane alike; estimation noise does not. The planes'
``L`` are cut by binary segmentation: a cut is kept where the step between the two sides'
means exceeds both :data:`MIN_SHIFT` (a 30 % change of noise variance) and
:data:`SHIFT_SIGMAS` standard errors, the error taken from the scatter within the sides (never
below the planes' own errors or :data:`JITTER`). Between two sampled planes, the plane where
the change happens is found by bisection (a few more planes read). Each segment gets a model
fitted to its own planes. Brightness alone (bleaching, exposure, the ends of a z-stack) moves
the signal along the model, not the model: it is not a change.

A stack whose channels hold one plane each gets that plane's own estimate
(:func:`fm2s.plane_noise.estimate_noise`), bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._stack_types import PlaneKey
from .intensity import intensity_range, rounding_variance
from .noise import lowfreq_gain, neighbour_corr
from .plane_noise import NoiseEstimate, PlaneEvidence, _chain_gain, fit_evidence, plane_evidence
from .settings import AUTO_FIELDS

__all__ = ["JITTER", "MIN_SHIFT", "SAMPLE_PLANES", "SHIFT_SIGMAS", "ChannelNoise", "Segment",
           "StackNoise", "fit_channel", "provenance_record", "sample_indices"]

#: Most planes per channel whose evidence is pooled (all of them in smaller stacks).
SAMPLE_PLANES = 32
#: Smallest change of the noise variance (natural log of the ratio) taken as a real change:
#: repeated estimates of one noise on small planes scatter by up to about 10-15 %.
MIN_SHIFT = float(np.log(1.3))
#: A change must also exceed this many standard errors of the step.
SHIFT_SIGMAS = 5.0
#: Smallest scatter assumed of one plane's log ratio (texture differs from plane to plane).
JITTER = 0.05
#: Most pixels of one plane whose evidence is measured (a centred crop of larger planes): 32
#: planes of 1024 x 1024 hold far more than the fit needs, and measuring a 2048 x 2048 plane
#: whole costs 1.6 CPU-s.
EVIDENCE_PIXELS = 1 << 20
#: Level sets whose modelled variance is below this fraction of the variance at the channel's
#: mean are not compared: near a dark offset the linear model says little.
INFORMATIVE = 0.2


def sample_indices(count: int, most: int = SAMPLE_PLANES) -> list[int]:
    """Up to `most` evenly spaced indices in ``range(count)``, first and last included."""
    if count <= most:
        return list(range(count))
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, most)})


@dataclass(frozen=True)
class Segment:
    """Consecutive planes of one channel with one noise model.

    Attributes
    ----------
    channel, index : int
        The channel, and the segment's position among the channel's segments (0 first).
    first, last : PlaneKey
        Its first and last planes in ``(t, z)`` order.
    model : NoiseEstimate
        Fitted to the evidence of ``fitted`` planes, on the scale ``model.data_range``;
        ``mean`` is the fitted planes' mean intensity.
    fitted : tuple of PlaneKey
        The planes whose evidence was pooled.
    own : bool
        True where the channel has one plane: ``model`` is that plane's own estimate.
    """

    channel: int
    index: int
    first: PlaneKey
    last: PlaneKey
    model: NoiseEstimate
    fitted: tuple[PlaneKey, ...]
    own: bool = False

    def estimate_for(self, plane: np.ndarray, data_range: float | None = None) -> NoiseEstimate:
        """The model as the estimate of one of the segment's planes, on that plane's scale.

        Gain, read variance (in DN), correlation and row correlation are the segment's;
        ``mean``, ``std`` and the [0, 1] quantities are the plane's.
        """
        scale = intensity_range(plane, data_range)
        mean = float((plane.astype(np.float64) / scale).mean())
        f = self.model.data_range / scale
        a, b = self.model.gain * f, self.model.read_var * f * f
        var = max(a * mean + b, 0.0)
        return NoiseEstimate(
            gain=float(a), read_var=float(b), gain_dn=float(a * scale),
            read_var_dn=float(b * scale**2), corr=self.model.corr,
            neighbour_corr=neighbour_corr(self.model.corr),
            lowfreq_gain=lowfreq_gain(self.model.corr), mean=mean, std=float(np.sqrt(var)),
            std_dn=float(np.sqrt(var) * scale), data_range=float(scale),
            quantization_var=float(rounding_variance(plane, scale)), levels=self.model.levels,
            residual=self.model.residual, line_corr=self.model.line_corr)

    def record(self) -> dict[str, Any]:
        m = self.model
        offset = -m.read_var_dn / m.gain_dn if m.gain_dn > 0 and m.read_var_dn < 0 else 0.0
        return {"first": self.first.label, "last": self.last.label,
                "fitted_planes": len(self.fitted), "own_estimate": self.own,
                "gain_dn": _round(m.gain_dn), "read_var_dn": _round(m.read_var_dn),
                "offset_dn": _round(offset), "corr": _round(m.corr),
                "neighbour_corr": _round(m.neighbour_corr), "line_corr": _round(m.line_corr),
                "std_dn_at_mean": _round(m.std_dn), "levels": m.levels,
                "residual": _round(m.residual)}


@dataclass(frozen=True)
class ChannelNoise:
    """A channel's segments, the changes between them, and how each plane compared."""

    channel: int
    planes: int
    segments: tuple[Segment, ...]
    changes: tuple[dict[str, Any], ...]
    shifts: dict[str, float]  # plane label -> log ratio to the channel's pooled model

    def segment_of(self, key: PlaneKey) -> Segment:
        order = (key.t, key.z)
        for segment in reversed(self.segments):
            if (segment.first.t, segment.first.z) <= order:
                return segment
        return self.segments[0]

    def record(self) -> dict[str, Any]:
        return {"planes": self.planes,
                "sampled": len({k for s in self.segments for k in s.fitted}),
                "segments": [s.record() for s in self.segments],
                "changes": list(self.changes),
                "shifts": {k: _round(v) for k, v in sorted(self.shifts.items())}}


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")


def _centre(plane: np.ndarray) -> np.ndarray:
    """The plane, or its centred crop of at most :data:`EVIDENCE_PIXELS` pixels (same aspect)."""
    if plane.size <= EVIDENCE_PIXELS:
        return plane
    shrink = np.sqrt(EVIDENCE_PIXELS / plane.size)
    h, w = (max(16, int(side * shrink)) for side in plane.shape)
    top, left = (plane.shape[0] - h) // 2, (plane.shape[1] - w) // 2
    return plane[top:top + h, left:left + w]


def plane_shift(evidence: PlaneEvidence, model: NoiseEstimate) -> tuple[float, float] | None:
    """``(L, error)``: median log ratio of a plane's level-set energies to `model`'s prediction.

    Only level sets that look like noise alone and whose modelled variance is informative
    (:data:`INFORMATIVE`) count; None where fewer than two do.
    """
    evidence = evidence.rescaled(model.data_range)
    a, b, q = model.gain, model.read_var, evidence.quantization_var
    reference = max(a * model.mean + b, 0.0)
    logs = []
    for scale, mean, energy, _, noise_like in evidence.rows:
        pixel = a * mean + b
        if not noise_like or pixel <= 0 or pixel < INFORMATIVE * reference or energy <= 0:
            continue
        predicted = _chain_gain(model.corr, int(scale), model.line_corr) * pixel \
            + _chain_gain(0.0, int(scale)) * q
        logs.append(np.log(energy / predicted))
    if len(logs) < 2:
        return None
    logs = np.asarray(logs)
    centre = float(np.median(logs))
    mad = 1.4826 * float(np.median(np.abs(logs - centre)))
    return centre, 1.2533 * mad / np.sqrt(len(logs))


def _best_cut(shift: np.ndarray, error: np.ndarray) -> tuple[int, float] | None:
    """``(k, step)``: the strongest cut of `shift` into ``[:k]`` and ``[k:]``, if it is real."""
    n = len(shift)
    if n < 2:
        return None
    floor = max(float(np.median(error)), JITTER)
    best = None
    for k in range(1, n):
        left, right = shift[:k], shift[k:]
        step = float(right.mean() - left.mean())
        residual = np.concatenate([left - left.mean(), right - right.mean()])
        within = float(np.sqrt((residual**2).sum() / (n - 2))) if n > 2 else 0.0
        sigma = max(within, floor) * np.sqrt(1.0 / k + 1.0 / (n - k))
        score = abs(step) / sigma
        if best is None or score > best[0]:
            best = (score, k, step)
    score, k, step = best
    return (k, step) if score >= SHIFT_SIGMAS and abs(step) >= MIN_SHIFT else None


def _cuts(shift: np.ndarray, error: np.ndarray, offset: int = 0) -> list[tuple[int, float]]:
    """Binary segmentation: every kept cut ``(position, step)``, in order."""
    found = _best_cut(shift, error)
    if found is None:
        return []
    k, step = found
    return [*_cuts(shift[:k], error[:k], offset), (offset + k, step),
            *_cuts(shift[k:], error[k:], offset + k)]


def fit_channel(keys: Sequence[PlaneKey], read: Callable[[PlaneKey], np.ndarray], *,
                data_range: float | None = None, sample: int = SAMPLE_PLANES,
                check: Callable[[np.ndarray, str], None] | None = None) -> ChannelNoise:
    """Fit one channel's noise: pooled model, changes, and a model per segment.

    Parameters
    ----------
    keys : sequence of PlaneKey
        Every plane of the channel, in any order (sorted by ``(t, z)`` here).
    read : callable
        ``read(key)`` gives the plane.
    data_range : float, optional
        As in :func:`fm2s.estimate_noise`.
    sample : int
        Most planes pooled (:data:`SAMPLE_PLANES`).
    check : callable, optional
        ``check(plane, what)`` raises ValueError on a plane that cannot be denoised (named by
        `what`, ``"plane t,c,z=..."``), before its noise is measured.

    Returns
    -------
    ChannelNoise

    Raises
    ------
    ValueError
        A plane `check` refuses, or whose noise cannot be measured (message naming it).
    """
    keys = sorted((PlaneKey(*map(int, k)) for k in keys), key=lambda k: (k.t, k.z))
    channel = keys[0].c
    evidence: dict[int, PlaneEvidence] = {}

    alone = len(keys) == 1  # the plane's own estimate: all of it, as estimate_noise measures

    def look(i: int) -> PlaneEvidence:
        if i not in evidence:
            what = f"plane t,c,z={keys[i].label}"
            plane = read(keys[i])
            if check is not None:
                check(plane, what)
            try:
                evidence[i] = plane_evidence(plane if alone else _centre(plane),
                                             data_range=data_range)
            except ValueError as exc:
                msg = f"{what}: {str(exc).removeprefix('estimate_noise: ')}"
                raise ValueError(msg) from exc
        return evidence[i]

    if alone:
        own = fit_evidence([look(0)])
        segment = Segment(channel, 0, keys[0], keys[0], own, (keys[0],), own=True)
        return ChannelNoise(channel, 1, (segment,), (), {})
    sampled = [i for i in sample_indices(len(keys), sample) if not look(i).constant]
    if not sampled:  # every plane constant: nothing to fit, nothing to denoise
        sampled = [0]
    scale = max(evidence[i].data_range for i in sampled)
    pooled = fit_evidence([evidence[i] for i in sampled], data_range=scale)
    shifts = {i: plane_shift(evidence[i], pooled) for i in sampled}
    usable = [i for i in sampled if shifts[i] is not None]
    cuts = _cuts(np.array([shifts[i][0] for i in usable]),
                 np.array([shifts[i][1] for i in usable])) if len(usable) > 1 else []

    starts, changes = [0], []
    for position, step in cuts:
        left, right = usable[position - 1], usable[position]
        before = np.mean([shifts[i][0] for i in usable[:position]])
        after = np.mean([shifts[i][0] for i in usable[position:]])
        while right - left > 1:  # bisect: which plane in between starts the new noise
            middle = (left + right) // 2
            found = None if look(middle).constant else plane_shift(evidence[middle], pooled)
            shifts[middle] = found
            if found is None or abs(found[0] - before) <= abs(found[0] - after):
                left = middle
            else:
                right = middle
        starts.append(right)
        changes.append({"at": keys[right].label, "variance_ratio": _round(np.exp(step))})

    segments = []
    bounds = [*starts, len(keys)]
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        members = [i for i in sorted(evidence) if start <= i < stop and not evidence[i].constant]
        if not members:
            members = [start]
            look(start)
        model = fit_evidence([evidence[i] for i in members], data_range=scale)
        segments.append(Segment(channel, index, keys[start], keys[stop - 1], model,
                                tuple(keys[i] for i in members)))
    return ChannelNoise(channel, len(keys), tuple(segments), tuple(changes),
                        {keys[i].label: s[0] for i, s in shifts.items() if s is not None})


class StackNoise:
    """The noise models of a stack's channels, fitted the first time a channel is asked for.

    Call it with a plane's ``(t, c, z)`` to get the :class:`Segment` whose model that plane
    uses (the ``noise_reference`` of :func:`fm2s.prepare.prepare_plane`). The planes pooled
    depend on the stack's plane indices only, so every job of a split stack fits the same
    models.

    Parameters
    ----------
    stack : object with ``plane_keys()`` and ``read_plane(key)``
        An open stack (:func:`fm2s.stacks.open_stack`).
    data_range : float, optional
        As in :func:`fm2s.estimate_noise`.
    check : callable, optional
        As in :func:`fit_channel`.
    """

    def __init__(self, stack, data_range: float | None = None, *,
                 check: Callable[[np.ndarray, str], None] | None = None):
        self._stack = stack
        self._data_range = data_range
        self._check = check
        self._keys: dict[int, list[PlaneKey]] = {}
        for key in stack.plane_keys():
            key = PlaneKey(*map(int, key))
            self._keys.setdefault(key.c, []).append(key)
        self.channels: dict[int, ChannelNoise] = {}

    def channel(self, channel: int) -> ChannelNoise:
        if channel not in self.channels:
            self.channels[channel] = fit_channel(self._keys[channel], self._stack.read_plane,
                                                 data_range=self._data_range, check=self._check)
        return self.channels[channel]

    def __call__(self, key) -> Segment:
        key = PlaneKey(*map(int, key))
        return self.channel(key.c).segment_of(key)

    def record(self) -> dict[str, Any]:
        """JSON-able ``{channel: ChannelNoise.record()}`` of the channels fitted."""
        return {str(c): n.record() for c, n in sorted(self.channels.items())}


def provenance_record(models: dict[str, Any], plane_infos: dict[str, Any]) -> dict[str, Any]:
    """The ``"estimate"`` block of an ``auto`` run's provenance.

    Parameters
    ----------
    models : dict
        :meth:`StackNoise.record` (merged over jobs).
    plane_infos : dict
        ``"t,c,z"`` to the ``info`` of that plane's :class:`fm2s.prepare.PlaneResult`.

    Returns
    -------
    dict
        ``method`` (a sentence), ``rule`` (the change detection's thresholds), ``channels``
        (per channel its segments with their models, the changes found, and each compared
        plane's log ratio to the pooled model), and ``planes``: per plane its ``segment``,
        ``plane_std_dn`` (the model's noise std at the plane's mean), ``blend`` weight (with
        ``sure-nlm`` also ``blend_nlm`` and ``blend_guided_nlm``, and ``sure_tile``; with
        ``sure-nlm-wiener`` also ``wiener``) and the estimated settings fields.
    """
    planes = {}
    for label, info in sorted(plane_infos.items()):
        if not info:
            continue
        settings = info.get("settings", {})
        entry = {"source": info.get("source"), "segment": info.get("segment"),
                 "plane_std_dn": info.get("plane_std_dn"), "blend": info.get("blend"),
                 **{k: settings.get(k, 0.0) for k in AUTO_FIELDS}}
        for field in ("blend_nlm", "blend_guided_nlm", "sure_tile", "wiener",  # sure-nlm blends
                      "neighbours", "neighbour_shifts", "stack_weights"):  # stack mode
            if field in info:
                entry[field] = info[field]
        if info.get("source") == "plane":
            entry["estimate"] = info.get("estimate")
        planes[label] = entry
    return {
        "method": ("one Poisson-Gaussian model per channel, fitted to the pooled level-set "
                   f"energies of up to {SAMPLE_PLANES} evenly spaced planes "
                   "(fm2s.stack_noise.fit_channel); a change of the noise within a channel is "
                   "found by binary segmentation of the planes' log ratios to that model, and "
                   "each segment gets its own model"),
        "rule": {"sample_planes": SAMPLE_PLANES, "min_variance_ratio": _round(np.exp(MIN_SHIFT)),
                 "sigmas": SHIFT_SIGMAS, "jitter": JITTER},
        "channels": models,
        "planes": planes,
    }
