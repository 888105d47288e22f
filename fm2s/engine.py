"""The stack engine: train the networks of a stack, then apply them to its planes.

One function trains (:func:`train_stack`) and one applies (:func:`apply_model`); the CLI
(``fm2s denoise``, ``fm2s train``), :func:`fm2s.pipeline.denoise_stack` and every workflow
rule go through them, so a stack gives the same pixels whichever way it is run.

Groups
------
The planes of one channel, in ``(t, z)`` order, are cut into groups of
``Settings.group_size`` consecutive planes (:func:`plan_groups`), from the stack's plane
indices alone, never from how planes are split into jobs. With ``auto`` each channel has one
noise model (:class:`fm2s.stack_noise.StackNoise`), split into segments where the noise truly
changes; within a group, the planes of one segment (every plane for the hand-set presets)
share one network, trained on crops drawn from the group's training planes. A group of one
plane, or a segment with one training plane in the group, trains a network of its own,
bitwise as the paper's network per plane (:func:`fm2s.denoise.iter_denoise_planes` with
``(t, c, z)`` keys). ``group_size=1`` is per-plane training throughout. Constant planes are
their own result.

Training planes: a network learns from crops, and 2^24 pixels of planes (64 of 512 x 512) give
it more distinct crops than it ever draws, so a group trains on at most
:data:`TRAINING_PIXELS` pixels of planes, evenly spaced over the group
(:func:`training_keys`); only those are in memory while it trains, and the group's other
planes are read, denoised and let go one by one. Training then costs the same whatever the
group's size or its planes' size, and its share per plane falls as groups grow (256 planes of
the ``fast`` recipe's group; ``--set group_size=N`` for more). A plane outside the training
planes takes its group's network of its noise segment (nearest in plane order where a
segment has several).

Seeds: a plane's own network and its blend use ``plane_seed(seed, (t, c, z))``; a shared
network uses ``plane_seed(seed, ("group", index))``, the network of a later segment in the
same group ``plane_seed(seed, ("group", index, segment))``.

Model files
-----------
:class:`StackModel` holds the networks of some or all groups of a stack, with their settings,
seeds, weight digests and the planes they were trained on, and which network denoises each
plane. :meth:`StackModel.save` writes one ``.npz`` (JSON header and float32 weights, no
pickle); :meth:`StackModel.load` refuses a file of another fm2s version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__
from .devices import inference_batch, pack_size
from .model import FM2SNet
from .neighbours import REACH, apply_with_neighbours, neighbour_axis, neighbour_keys
from .networks import Network, TrainingUnit, apply_network_batch, train_networks, unit_samples
from .outputs import atomic_output
from .prepare import (
    LowRangeWarning,
    PlaneResult,
    PreparedPlane,
    check_plane,
    constant_result,
    plane_seed,
    prepare_plane,
)
from .settings import Settings
from .stack_noise import StackNoise, sample_indices
from .stacks import PlaneKey, StackError

__all__ = ["MODEL_FORMAT", "TRAINING_PIXELS", "Group", "ModelError", "StackModel", "apply_model",
           "denoise_stack_planes", "group_seed", "plan_groups", "plane_sha256", "stack_noise",
           "train_stack", "training_keys"]

log = logging.getLogger(__name__)

#: Most pixels of planes a group's networks train on (they are in memory meanwhile): 64
#: planes of 512 x 512, 4 of 2048 x 2048, evenly spaced over the group (:func:`training_keys`).
TRAINING_PIXELS = 1 << 24
MODEL_FORMAT = "fm2s-model/1"


class ModelError(StackError):
    """A model file that cannot be used: unreadable, another version, other settings."""


@dataclass(frozen=True)
class Group:
    """Consecutive planes of one channel that may share a network."""

    index: int  # position in plan_groups' list
    channel: int
    keys: tuple[PlaneKey, ...]

    @property
    def label(self) -> str:
        return f"group {self.index} (c={self.channel}, {len(self.keys)} planes)"


def plan_groups(keys: Sequence[tuple[int, int, int]], settings: Settings) -> list[Group]:
    """Cut a stack's planes into groups: per channel, runs of consecutive ``(t, z)`` planes.

    Parameters
    ----------
    keys : sequence of (t, c, z)
        Every plane of the stack.
    settings : Settings
        ``group_size`` planes per group (the last of a channel may have fewer), whatever
        the planes' size (their training planes depend on it: :func:`training_keys`).

    Returns
    -------
    list of Group
        Channel by channel, in plane order; every key in exactly one group.
    """
    size = settings.group_size
    by_channel: dict[int, list[PlaneKey]] = {}
    for key in sorted(PlaneKey(*map(int, k)) for k in keys):
        by_channel.setdefault(key.c, []).append(key)
    groups: list[Group] = []
    for channel in sorted(by_channel):
        members = sorted(by_channel[channel], key=lambda k: (k.t, k.z))
        for start in range(0, len(members), size):
            groups.append(Group(len(groups), channel, tuple(members[start:start + size])))
    return groups


def training_keys(group: Group, plane_shape: tuple[int, int]) -> tuple[PlaneKey, ...]:
    """The planes a group's networks train on: all of them, or as many as
    :data:`TRAINING_PIXELS` holds, evenly spaced in plane order (first and last included)."""
    most = max(1, TRAINING_PIXELS // max(1, plane_shape[0] * plane_shape[1]))
    return tuple(group.keys[i] for i in sample_indices(len(group.keys), most))


def stack_noise(stack, settings: Settings, data_range: float | None = None) -> StackNoise:
    """The noise models of a stack's channels (``auto``), refusing planes FM2S cannot denoise."""
    return StackNoise(stack, data_range,
                      check=lambda plane, what: check_plane(plane, settings, what))


def group_seed(seed: int, group: Group) -> int:
    """Seed of a group's shared network."""
    return plane_seed(seed, ("group", group.index))


def plane_sha256(plane: np.ndarray) -> str:
    """SHA-256 of a raw plane's bytes (identifies the plane a network was trained on)."""
    return hashlib.sha256(np.ascontiguousarray(plane).tobytes()).hexdigest()


# -- the model ----------------------------------------------------------------------------------


@dataclass
class StackModel:
    """Trained networks of (some groups of) a stack, and which network denoises which plane.

    Attributes
    ----------
    settings : Settings
        The settings as given (``auto`` unresolved); each network keeps its resolved ones.
    seed : int
        Base seed.
    data_range : float or None
        Intensity mapped to 1.0 (None: from the dtype).
    source : str
        The stack trained on.
    networks : dict of str to Network
        ``"group-<g>"`` (shared) or ``"plane-<t,c,z>"`` (a plane's own).
    network_info : dict of str to dict
        Per network: ``group``, ``channel``, ``shared``, ``samples``, ``digest`` (SHA-256 of its
        weights) and ``estimate`` (``auto``: the noise estimate its settings come from).
    planes : dict of str to dict
        Per plane ``"t,c,z"``: ``network`` (id, or None for a constant plane), ``group``,
        ``input_sha256`` and ``info`` (``auto``: estimate, source, resolved settings).
    references : dict
        ``auto``: the channels' noise models (:meth:`fm2s.stack_noise.StackNoise.record`).
    """

    settings: Settings
    seed: int
    data_range: float | None
    source: str
    networks: dict[str, Network] = field(default_factory=dict)
    network_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    planes: dict[str, dict[str, Any]] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)

    def check(self, settings: Settings, seed: int, data_range: float | None, what: str) -> None:
        """Raise ModelError unless the model was trained with these settings, seed and range."""
        for name, mine, theirs in (("settings", self.settings.digest(), settings.digest()),
                                   ("seed", self.seed, int(seed)),
                                   ("data_range", self.data_range, data_range)):
            if mine != theirs:
                shown = (self.settings.to_json(), settings.to_json()) if name == "settings" \
                    else (mine, theirs)
                msg = (f"{what}: model trained with {name} {shown[0]}, not {shown[1]}; train it "
                       "again with these, or denoise with the model's")
                raise ModelError(msg)

    def merge(self, other: StackModel, what: str) -> None:
        """Add the networks and planes of another model of the same settings (a group file)."""
        other.check(self.settings, self.seed, self.data_range, what)
        self.networks.update(other.networks)
        self.network_info.update(other.network_info)
        self.planes.update(other.planes)
        self.references.update(other.references)

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as one ``.npz`` under a temporary name, then rename it."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        networks = []
        for name, network in sorted(self.networks.items()):
            for param, value in network.model.state_dict().items():
                arrays[f"{name}/{param}"] = value.detach().cpu().numpy()
            networks.append({
                "id": name, "seed": network.seed, "boost": network.boost,
                "settings": network.settings.to_dict(),
                "trained_on": [PlaneKey(*k).label for k in network.trained_on],
                "seconds": round(network.seconds, 4), "scale": network.scale,
                **self.network_info[name],
            })
        header = {
            "format": MODEL_FORMAT, "fm2s_version": __version__,
            "settings": self.settings.to_dict(), "settings_digest": self.settings.digest(),
            "seed": self.seed, "data_range": self.data_range, "source": self.source,
            "networks": networks, "planes": dict(sorted(self.planes.items())),
            "references": self.references,
        }
        arrays["header"] = np.asarray(json.dumps(header, allow_nan=False))
        with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> StackModel:
        """Read a model file; ModelError if it is not one, or of another fm2s version."""
        path = Path(path)
        if not path.is_file():
            msg = f"{path}: no such model file"
            raise ModelError(msg)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                weights = {name: data[name] for name in data.files if name != "header"}
        except Exception as exc:  # zipfile, KeyError, JSON: all mean "not a model file"
            msg = f"{path}: not an fm2s model file ({type(exc).__name__}: {exc})"
            raise ModelError(msg) from exc
        if header.get("format") != MODEL_FORMAT:
            msg = f"{path}: not an fm2s model file (format {header.get('format')!r})"
            raise ModelError(msg)
        if header.get("fm2s_version") != __version__:
            msg = (f"{path}: model made by fm2s {header.get('fm2s_version')}, this is fm2s "
                   f"{__version__}; train it again (fm2s train)")
            raise ModelError(msg)
        model = cls(Settings.from_dict(header["settings"]), int(header["seed"]),
                    header["data_range"], header["source"], planes=header["planes"],
                    references=header.get("references") or {})
        for entry in header["networks"]:
            settings = Settings.from_dict(entry["settings"])
            net = FM2SNet(settings.channels, settings.kernel_size)
            prefix = f"{entry['id']}/"
            net.load_state_dict({name[len(prefix):]: torch.from_numpy(value)
                                 for name, value in weights.items() if name.startswith(prefix)})
            if network_digest(net) != entry["digest"]:
                msg = f"{path}: network {entry['id']} does not match its digest (corrupt file)"
                raise ModelError(msg)
            trained_on = tuple(PlaneKey.from_label(label) for label in entry["trained_on"])
            scale = entry.get("scale")
            model.networks[entry["id"]] = Network(net, int(entry["seed"]), settings,
                                                  float(entry["boost"]), trained_on,
                                                  float(entry.get("seconds", 0.0)),
                                                  None if scale is None else float(scale))
            model.network_info[entry["id"]] = {
                k: entry[k] for k in ("group", "channel", "shared", "segment", "group_planes",
                                      "samples", "digest", "estimate") if k in entry}
        return model

    @classmethod
    def load_all(cls, paths: Iterable[str | os.PathLike]) -> StackModel:
        """One model from several files of the same settings (the workflow's group files)."""
        paths = list(paths)
        if not paths:
            msg = "no model files given"
            raise ModelError(msg)
        model = cls.load(paths[0])
        for path in paths[1:]:
            model.merge(cls.load(path), str(path))
        return model


def network_digest(net: FM2SNet) -> str:
    """SHA-256 of a network's weights (parameter names and float32 bytes, in order)."""
    digest = hashlib.sha256()
    for name, value in net.state_dict().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


# -- training -----------------------------------------------------------------------------------


def train_stack(
    stack,
    settings: Settings,
    *,
    seed: int = 0,
    data_range: float | None = None,
    device: torch.device,
    groups: Sequence[int] | None = None,
    references: Callable | None = None,
    progress: Callable[[Group, StackModel], None] | None = None,
) -> StackModel:
    """Train the networks of a stack's groups.

    Parameters
    ----------
    stack : Stack
        An open stack (:func:`fm2s.stacks.open_stack`).
    settings : Settings
        As given (``auto`` is resolved per plane).
    seed : int
        Base seed.
    data_range : float, optional
        Intensity mapped to 1.0 (default: from the dtype).
    device : torch.device
        Resolved device. On CUDA, the networks of several groups train in one grouped pass.
    groups : sequence of int, optional
        Indices into :func:`plan_groups` to train (default: all).
    references : callable, optional
        ``auto``: the channels' noise models (default: :func:`stack_noise` of `stack`).
    progress : callable, optional
        Called with each group and the model once its networks are trained.

    Returns
    -------
    StackModel
        Its ``planes`` cover exactly the groups trained.

    Raises
    ------
    StackError
        A plane the engine cannot denoise (message naming the stack and the plane).
    """
    model, _ = _train(stack, settings, seed, data_range, device, groups, references, progress)
    return model


def _train(stack, settings, seed, data_range, device, groups, references, progress,
           reader: _PlaneReader | None = None) -> tuple[StackModel, dict[PlaneKey, _Planned]]:
    """:func:`train_stack`. With a `reader` (:func:`denoise_stack_planes`), also each
    training plane prepared for applying the model to it (so that it is read, hashed and
    prepared once); the groups' other planes are then left for :func:`_plan_plane` to do as
    they are applied. Without, those are read once the networks are trained, to record which
    network denoises each."""
    meta = stack.metadata
    plan = plan_groups(stack.plane_keys(), settings)
    chosen = plan if groups is None else [plan[i] for i in groups]
    if settings.needs_estimate and references is None:
        references = stack_noise(stack, settings, data_range)
    model = StackModel(settings, int(seed), data_range, str(meta.path))
    keep = reader is not None
    reader = reader or _PlaneReader(stack, LowRangeWarning(settings, data_range), references)
    pack = pack_size(device)
    # A batch of groups whose units train in grouped passes (one group at a time on CPU).
    batch: list[tuple[Group, list[TrainingUnit], list[str]]] = []
    prepared: dict[PlaneKey, tuple[PreparedPlane, str]] = {}
    pixels = 0

    def train_batch():
        _train_batch(batch, device, model, progress, None if keep else reader)

    for group in chosen:
        units, names = _group_units(group, seed, reader, model, prepared if keep else None)
        batch.append((group, units, names))
        pixels += sum(p.noisy.size for u in units for p in u.planes)
        if len(batch) >= pack or pixels >= TRAINING_PIXELS * 4:
            train_batch()
            batch, pixels = [], 0
    if batch:
        train_batch()
    if references is not None and hasattr(references, "record"):
        model.references = references.record()
    planned = {}
    for key, (item, digest) in prepared.items():
        name = model.planes[key.label]["network"]
        planned[key] = _Planned(key, name, model.networks.get(name) if name else None, item,
                                digest)
    return model, planned


def _group_units(group: Group, seed: int, reader: _PlaneReader, model: StackModel,
                 kept: dict[PlaneKey, tuple[PreparedPlane, str]] | None):
    """Read and prepare a group's training planes (and keep them in `kept`, unless None);
    its training units and their network ids."""
    prepared: list[PreparedPlane] = []
    for key in training_keys(group, reader.stack.metadata.shape[3:]):
        item, digest = reader.prepare(key, model.settings, model.data_range)
        prepared.append(item)
        if kept is not None:
            kept[key] = item, digest
        model.planes[key.label] = {"network": None, "group": group.index,
                                   "input_sha256": digest, "info": item.info}
    # Planes of one noise model share a network: a group's planes of one segment of its
    # channel (one acquisition setting), or every plane for the hand-set presets.
    parts: dict[int, list[PreparedPlane]] = {}
    own = []
    for p in prepared:
        if p.constant:
            continue
        if p.info is None or p.info.get("source") == "stack":
            parts.setdefault(_segment(p), []).append(p)
        else:
            own.append(p)
    units, names = [], []
    for segment, members in sorted(parts.items()):
        if len(members) == 1:
            own.extend(members)
            continue
        first = segment == min(parts)
        units.append(TrainingUnit(tuple(members), group_seed(seed, group) if first
                                  else plane_seed(seed, ("group", group.index, segment))))
        names.append(f"group-{group.index}" if first else f"group-{group.index}-s{segment}")
    for p in sorted(own, key=lambda p: p.key):
        units.append(TrainingUnit((p,), plane_seed(seed, p.key)))
        names.append(f"plane-{PlaneKey(*p.key).label}")
    for unit, name in zip(units, names, strict=True):
        for p in unit.planes:
            model.planes[PlaneKey(*p.key).label]["network"] = name
        model.network_info[name] = {
            "group": group.index, "channel": group.channel, "shared": len(unit.planes) > 1,
            "segment": _segment(unit.planes[0]), "group_planes": len(group.keys),
            "estimate": (unit.planes[0].info or {}).get("estimate")}
    return units, names


def _segment(plane: PreparedPlane) -> int:
    """The noise segment of a prepared plane's channel that it belongs to (0: the only one)."""
    return (plane.info or {}).get("segment", 0)


def _train_batch(batch, device, model: StackModel, progress, reader: _PlaneReader | None) -> None:
    """Train a batch's units; with a `reader`, then record the network of each of its groups'
    other planes (:func:`_plan_plane`)."""
    units = [u for _, group_units, _ in batch for u in group_units]
    names = [n for _, _, group_names in batch for n in group_names]
    networks = train_networks(units, device)
    for name, unit, network in zip(names, units, networks, strict=True):
        model.networks[name] = network
        model.network_info[name].update(
            samples=unit_samples(unit.planes[0].settings, len(unit.planes)),
            digest=network_digest(network.model))
    for group, _, group_names in batch:
        log.info("%s: %s trained: %s", Path(model.source).name, group.label,
                 ", ".join(f"{n} on {len(model.networks[n].trained_on)} plane(s) in "
                           f"{model.networks[n].seconds:.1f} s" for n in group_names) or
                 "nothing to train (constant planes)")
        if reader is not None:
            for key in group.keys:
                if key.label not in model.planes:
                    _plan_plane(reader, model, group, key, device)
        if progress is not None:
            progress(group, model)


def _plan_plane(reader: _PlaneReader, model: StackModel, group: Group, key: PlaneKey,
                device) -> _Planned:
    """Read and prepare a plane of a trained group that was not one of its training planes,
    and record the network that denoises it in `model`: its group's network of the plane's
    noise segment, the shared one first, else the nearest in plane order. Where the group
    has none (its training planes of that segment were all constant), the plane trains a
    network of its own, as a group's only plane of a segment does."""
    item, digest = reader.prepare(key, model.settings, model.data_range)
    name = None
    if not item.constant:
        segment = _segment(item)
        candidates = [(not info["shared"], _distance(model.networks[n], key), n)
                      for n, info in model.network_info.items()
                      if info["group"] == group.index and info.get("segment", 0) == segment]
        if candidates:
            name = min(candidates)[2]
        else:
            name = f"plane-{key.label}"
            unit = TrainingUnit((item,), plane_seed(model.seed, tuple(key)))
            model.network_info[name] = {
                "group": group.index, "channel": group.channel, "shared": False,
                "segment": segment, "group_planes": len(group.keys),
                "estimate": (item.info or {}).get("estimate")}
            _train_batch([(group, [unit], [name])], device, model, None, None)
    model.planes[key.label] = {"network": name, "group": group.index, "input_sha256": digest,
                               "info": item.info}
    return _Planned(key, name, model.networks.get(name) if name else None, item, digest)


def _distance(network: Network, key: PlaneKey) -> int:
    """Planes between `key` and the nearest plane `network` was trained on."""
    return min(max(abs(k[0] - key.t), abs(k[2] - key.z)) for k in network.trained_on)


class _PlaneReader:
    """A stack's planes as the engine reads them: each read, checked, hashed and prepared in
    one place, the last few raw planes kept (stack mode's neighbours are read ahead of their
    turn) and a group's training planes held while the group is applied, so that a plane is
    read about once."""

    def __init__(self, stack, warn: LowRangeWarning | None = None, references=None):
        self.stack, self.warn, self.references = stack, warn, references
        self.held: dict[PlaneKey, np.ndarray] = {}
        self._recent: dict[PlaneKey, np.ndarray] = {}

    def read(self, key: PlaneKey) -> np.ndarray:
        if key in self.held:
            return self.held[key]
        if key not in self._recent:
            self._recent[key] = self.stack.read_plane(key)
            self._trim()
        return self._recent[key]

    def release(self, key: PlaneKey) -> None:
        """A held plane is done with: keep it only as one of the last few read."""
        if key in self.held:
            self._recent[key] = self.held.pop(key)
            self._trim()

    def _trim(self) -> None:
        while len(self._recent) > 4 * REACH + 2:
            del self._recent[next(iter(self._recent))]

    def prepare(self, key: PlaneKey, settings: Settings, data_range: float | None
                ) -> tuple[PreparedPlane, str]:
        """The plane read and prepared (its ``auto`` settings from the stack's noise model),
        and the SHA-256 of its bytes."""
        plane = self.read(key)
        return self.prepared(plane, key, settings, data_range, self.references), \
            plane_sha256(plane)

    def prepared(self, plane: np.ndarray, key: PlaneKey, settings: Settings,
                 data_range: float | None, references=None) -> PreparedPlane:
        """:func:`fm2s.prepare.prepare_plane`, its errors naming the stack."""
        try:
            return prepare_plane(plane, settings, tuple(key), data_range=data_range,
                                 noise_reference=references, what=f"plane t,c,z={key.label}",
                                 warn=self.warn)
        except ValueError as exc:
            msg = f"{self.stack.metadata.path}: cannot denoise: {exc}"
            raise StackError(msg) from exc


# -- applying ---------------------------------------------------------------------------------


def apply_model(
    stack,
    model: StackModel,
    keys: Sequence[tuple[int, int, int]] | None = None,
    *,
    device: torch.device,
) -> Iterator[PlaneResult]:
    """Denoise planes of a stack with a model's networks (inference and blend only).

    A plane the model was trained on (same ``t,c,z`` and bytes) gets the network recorded for
    it. Any other plane (another acquisition with the same microscope and settings) gets the
    shared network of its channel nearest in plane order, or its channel's nearest own
    network where there is no shared one; ``info["model_source"]`` then says so.

    On CUDA, the planes read together (:func:`fm2s.devices.inference_batch`: 16 planes of up
    to 1024 x 1024, fewer of larger ones) that share a network are applied in one forward
    pass; on a CPU, one plane at a time. Either way each plane gets the result it gets alone.

    Parameters
    ----------
    stack : Stack
    model : StackModel
    keys : sequence of (t, c, z), optional
        Planes to denoise, in this order (default: all).
    device : torch.device

    Yields
    ------
    PlaneResult
        ``seconds``: the plane's inference plus its share of its network's training;
        ``info``: the plane's ``auto`` info plus ``network`` and ``network_digest``;
        ``input_sha256``: the raw plane's.
    """
    keys = [PlaneKey(*map(int, k)) for k in (stack.plane_keys() if keys is None else keys)]
    reader = _PlaneReader(stack, LowRangeWarning(model.settings, model.data_range))
    batch = inference_batch(device, stack.metadata.shape[3:])
    near = stack_neighbours(stack, model.settings, reader.read)
    for start in range(0, len(keys), batch):
        planes = [_prepare_for(reader, model, key) for key in keys[start:start + batch]]
        yield from _apply_batch(planes, model, device, batch, near)


class _Planned(NamedTuple):
    """A plane read and prepared, and the network that denoises it (None: constant)."""

    key: PlaneKey
    name: str | None
    network: Network | None
    prepared: PreparedPlane
    input_sha256: str  # of the raw plane


def _prepare_for(reader: _PlaneReader, model: StackModel, key: PlaneKey) -> _Planned:
    """Read a plane and find its network."""
    plane = reader.read(key)
    digest = plane_sha256(plane)
    entry = model.planes.get(key.label)
    exact = entry is not None and entry["input_sha256"] == digest
    name = entry["network"] if exact else _nearest_network(model, key, reader.stack.metadata.path)
    network = model.networks.get(name) if name is not None else None
    prepared = reader.prepared(plane, key, network.settings if network else model.settings,
                               model.data_range)
    prepared.info = entry["info"] if exact else _reuse_info(model, name, network)
    return _Planned(key, name, network, prepared, digest)


def stack_neighbours(stack, settings: Settings, read: Callable[[PlaneKey], np.ndarray] | None = None
                     ) -> Callable[[PlaneKey], list] | None:
    """Stack mode (``settings.neighbours``): a function giving a plane's raw neighbouring
    planes (:func:`fm2s.neighbours.neighbour_keys`), from `read` (default: the stack's planes,
    the last few kept); None in plane mode, for a stack of one plane per channel, and for
    blends without a risk estimate per candidate (the hand-set presets)."""
    shape = stack.metadata.shape
    if (settings.neighbours == "off" or neighbour_axis(shape) is None
            or settings.blend not in ("sure-nlm", "sure-nlm-wiener")):
        return None
    read = read or _PlaneReader(stack).read
    return lambda key: [read(k) for k in map(PlaneKey._make, neighbour_keys(key, shape))]


def _apply_batch(planes: list[_Planned], model: StackModel, device,
                 batch: int, near: Callable | None = None) -> list[PlaneResult]:
    """Results of prepared planes, in order; the planes of one network in one pass (in stack
    mode, with `near` giving a plane's neighbours, one plane at a time)."""
    results: list[PlaneResult | None] = [None] * len(planes)
    by_network: dict[str, list[int]] = {}
    for i, item in enumerate(planes):
        if item.network is None or item.prepared.constant:
            results[i] = constant_result(item.prepared, model.seed)
        else:
            by_network.setdefault(item.name, []).append(i)
    for name, members in by_network.items():
        network = model.networks[name]
        seeds = [plane_seed(model.seed, tuple(planes[i].key)) for i in members]
        if near is not None:
            outputs = [apply_with_neighbours(network, planes[i].prepared, s, device,
                                             near(planes[i].key))
                       for i, s in zip(members, seeds, strict=True)]
        else:
            outputs = apply_network_batch(network, [planes[i].prepared for i in members],
                                          seeds, device, batch)
        for i, result in zip(members, outputs, strict=True):
            # its share of the training, among the planes of the group it denoises
            served = (model.network_info[name].get("group_planes", 1)
                      if model.network_info[name]["shared"] else len(network.trained_on))
            result.seconds += network.seconds / max(1, served)
            results[i] = result
    for item, result in zip(planes, results, strict=True):
        result.input_sha256 = item.input_sha256
        if item.name is not None:
            result.info = {**(result.info or {}), "network": item.name,
                           "network_digest": model.network_info[item.name]["digest"]}
    return results


def _nearest_network(model: StackModel, key: PlaneKey, path: str) -> str:
    """The network of another stack's plane: its channel's nearest shared network."""
    candidates = []
    for name, info in model.network_info.items():
        if info["channel"] != key.c:
            continue
        distance = min((abs(k[0] - key.t), abs(k[2] - key.z))
                       for k in model.networks[name].trained_on)
        candidates.append((not info["shared"], distance, name))
    if not candidates:
        msg = (f"{path}: plane t,c,z={key.label}: the model ({model.source}) has no network for "
               f"channel {key.c}")
        raise ModelError(msg)
    return min(candidates)[2]


def _reuse_info(model: StackModel, name: str, network: Network | None) -> dict | None:
    if network is None:
        return None
    info = {"source": "model", "settings": network.settings.to_dict(),
            "model_source": model.source}
    estimate = model.network_info[name].get("estimate")
    if estimate is not None:
        info["estimate"] = estimate
    return info if model.settings.needs_estimate or network.settings.blend != "none" else None


def denoise_stack_planes(
    stack,
    settings: Settings,
    *,
    seed: int = 0,
    data_range: float | None = None,
    device: torch.device,
    model: StackModel | None = None,
    references: Callable | None = None,
) -> Iterator[tuple[PlaneKey, PlaneResult]]:
    """Denoise every plane of a stack: train group after group and apply each at once, or
    apply a given `model` (whose settings, seed and range must be these).

    The results are those of :func:`train_stack` over all groups followed by
    :func:`apply_model`, with only one group's planes in memory at a time (a few groups' on
    a GPU), each read, hashed and prepared once.

    Yields
    ------
    (PlaneKey, PlaneResult)
        Group by group (channel by channel), not in ``(t, c, z)`` order.
    """
    if model is not None:
        model.check(settings, seed, data_range, str(stack.metadata.path))
        keys = stack.plane_keys()
        yield from zip(keys, apply_model(stack, model, keys, device=device), strict=True)
        return
    plan = plan_groups(stack.plane_keys(), settings)
    if settings.needs_estimate and references is None:
        references = stack_noise(stack, settings, data_range)
    pack = pack_size(device)
    batch = inference_batch(device, stack.metadata.shape[3:])
    reader = _PlaneReader(stack, LowRangeWarning(settings, data_range), references)
    near = stack_neighbours(stack, settings, reader.read)
    for start in range(0, len(plan), pack):
        groups = plan[start:start + pack]
        part, planned = _train(stack, settings, seed, data_range, device,
                               [g.index for g in groups], references, None, reader)
        reader.held = {key: item.prepared.plane for key, item in planned.items()}
        group_of = {key: group for group in groups for key in group.keys}
        keys = list(group_of)
        for first in range(0, len(keys), batch):
            chunk = keys[first:first + batch]
            items = [planned.pop(k) if k in planned else
                     _plan_plane(reader, part, group_of[k], k, device) for k in chunk]
            yield from zip(chunk, _apply_batch(items, part, device, batch, near), strict=True)
            for key in chunk:
                reader.release(key)
