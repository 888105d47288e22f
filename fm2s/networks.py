"""Training networks and applying them: a :class:`TrainingUnit` (the planes that share one
network) becomes a :class:`Network`, which denoises prepared planes, in batches or, for very large
planes, in overlapping regions, with the blend its settings ask for.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .blend import SURE_EPS, nlm_blend, sure_probe, sure_variance, sure_weight
from .devices import pack_size
from .intensity import rounding_variance, to_dtype, training_boost
from .model import FM2SNet
from .noise import median_target, region_means
from .prepare import PlaneResult, PreparedPlane, plane_seed
from .settings import Settings
from .train import TrainingSet, extract_model, fit, group_key, predict_batch

__all__ = ["REGION_PIXELS", "Network", "TrainingUnit", "apply_network", "apply_network_batch",
           "train_networks", "unit_boost", "unit_samples", "unit_scale"]

log = logging.getLogger("fm2s.denoise")


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


@dataclass
class RiskTerms:
    """What a plane's SURE blend was weighed with (stack mode weighs more candidates with it):
    on the network's boosted scale, the probe, the probed plane, the noise variance per pixel,
    the rounding variance, and the plane-mode blend of the estimates on the probed plane."""

    probe: np.ndarray
    probed: np.ndarray  # float32
    variance: np.ndarray
    quant: float
    blend_on_probe: np.ndarray


def _denoise_works(network: Network, works: np.ndarray, quants: Sequence[float],
                   seeds: Sequence[int], infos: Sequence[dict | None], device: torch.device,
                   batch: int | None, terms: list[RiskTerms] | None = None
                   ) -> tuple[np.ndarray, list[dict | None]]:
    """The network's output on planes on its boosted scale (`works`, stacked, with the
    variance of their rounding `quants`), blended as its settings say; float64, that scale.
    Returns the outputs and each plane's info (`infos`, with the blend's weights added); with
    a `terms` list (``sure-nlm`` blends), each plane's :class:`RiskTerms` are appended to it."""
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
            blend, recorded, on_probe = nlm_blend(
                works[i], cleans[i], probes[i], probed[i], moved[i], variances[i], quants[i],
                settings, device, on_probe=terms is not None)
            infos[i] = {**info, **recorded}
            cleans[i] = blend
            if terms is not None:
                terms.append(RiskTerms(probes[i], probed[i], variances[i], quants[i], on_probe))
    return cleans, infos
