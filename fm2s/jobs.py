"""The Snakemake workflow's jobs as plain functions (see ``docs/workflow.md``): training groups of
planes, denoising a chunk of planes, assembling the chunks into a store, reformatting a store.

A stack's planes, in ``(t, c, z)`` order, are split into chunks of consecutive planes. Each
chunk job reads its planes straight from the source, denoises them and writes one chunk file
(:func:`denoise_chunk`); once every chunk exists, :func:`assemble_chunks` builds the OME-Zarr
store lazily from them. Plane ``(t, c, z)`` always gets the seed
``fm2s.plane_seed(seed, (t, c, z))``, as in :func:`fm2s.pipeline.denoise_stack`, so the
store does not depend on how the stack was split. :func:`reformat_store` rewrites a finished
store with other output options (pyramid levels, NGFF version) from its own full-resolution
level, without denoising again.

How a stack is split into jobs: :class:`JobPlan`. Which inputs of a folder are ready and their
names: :mod:`fm2s.inputs`; a job's device: :func:`fm2s.devices.job_device`; the demo stack:
:func:`fm2s.synthetic.write_synthetic_stack`.

Chunk file format (``.npz``, uncompressed; written under a temporary name, then renamed):

==================  ==================================================================
member              content
==================  ==================================================================
``plane<i>``        denoised plane ``i`` of the chunk, ``(y, x)``, in the input's dtype
``keys``            ``(n, 3)`` int64: the planes' ``(t, c, z)``
``seeds``           ``(n,)`` uint64: each plane's own seed
``seconds``         ``(n,)`` float64: denoising seconds per plane
``input_sha256``    ``(n,)`` str: SHA-256 of each raw input plane's bytes
``info``            JSON string: source, plane range, settings digest, seed, data range,
                    device, host, start and end times, fm2s version, ``noise_references``
                    (``auto``: the channels' reference estimates), ``planes`` (per plane
                    its network and digest; ``auto``: estimate source, blend, settings)
                    and ``input_stamp`` (the input's, when the chunk was denoised)
==================  ==================================================================
"""

from __future__ import annotations

import json
import logging
import os
import socket
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from fm2s import __version__
from fm2s._provenance import (
    describe_device,
    fingerprint_input,
    provenance,
    stack_provenance,
    utc_now,
)
from fm2s.engine import Group, StackModel, apply_model, plan_groups, train_stack
from fm2s.inputs import input_stamp
from fm2s.ome import describe_output, open_ome_zarr, store_axes, write_ome_zarr
from fm2s.outputs import atomic_output
from fm2s.pipeline import stack_job, write_planes
from fm2s.prepare import plane_seed
from fm2s.settings import Settings
from fm2s.stacks import PlaneKey, StackError, StackMetadata, open_stack

__all__ = ["CHUNK_FORMAT", "JobPlan", "assemble_chunks", "chunk_ranges", "denoise_chunk",
           "plan_jobs", "read_chunk_index", "reformat_store", "train_groups"]

logger = logging.getLogger(__name__)


CHUNK_FORMAT = 1


#: Most planes of a workflow training job (whole groups; see JobPlan).
TRAINING_JOB_PLANES = 16


def chunk_ranges(n_planes: int, planes_per_job: int) -> list[tuple[int, int]]:
    """``[start, stop)`` plane ranges of consecutive chunks of `planes_per_job` planes.

    Examples
    --------
    >>> chunk_ranges(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if planes_per_job < 1:
        msg = f"planes_per_job must be >= 1, got {planes_per_job!r}"
        raise ValueError(msg)
    return [(i, min(i + planes_per_job, n_planes)) for i in range(0, n_planes, planes_per_job)]


@dataclass(frozen=True)
class JobPlan:
    """How the workflow splits a stack into jobs.

    Training jobs each train consecutive groups (:func:`fm2s.engine.plan_groups`) of at most
    :data:`TRAINING_JOB_PLANES` planes in all (at least one group: a shared group of the
    ``fast`` recipe is a job of its own; per-plane training packs 16 planes a job), into one
    model file; denoise jobs each apply the models to a chunk of `planes_per_job`
    consecutive planes in ``(t, c, z)`` order. Neither split changes a result (a group's
    networks do not depend on their companions), and `planes_per_job` never retrains.
    An input whose headers cannot be read (:meth:`unreadable`) gets one training job and
    one chunk of all planes, which fail with the reader's error.
    """

    groups: list[Group]
    trainings: list[list[int]]  # per training job, its groups
    chunks: list[tuple[int, int]]  # [start, stop) in (t, c, z) order
    chunk_trainings: list[list[int]]  # per chunk, the training jobs of its planes

    @classmethod
    def of(cls, keys: Sequence[tuple[int, int, int]], settings: Settings,
           planes_per_job: int) -> JobPlan:
        keys = [PlaneKey(*k) for k in keys]
        groups = plan_groups(keys, settings)
        trainings: list[list[int]] = []
        planes = TRAINING_JOB_PLANES
        for group in groups:
            if planes + len(group.keys) > TRAINING_JOB_PLANES:
                trainings.append([])
                planes = 0
            trainings[-1].append(group.index)
            planes += len(group.keys)
        job_of = {key: job for job, members in enumerate(trainings) for g in members
                  for key in groups[g].keys}
        chunks = chunk_ranges(len(keys), planes_per_job)
        needs = [sorted({job_of[k] for k in keys[a:b]}) for a, b in chunks]
        return cls(groups, trainings, chunks, needs)

    @classmethod
    def unreadable(cls) -> JobPlan:
        return cls([], [[0]], [(0, 0)], [[0]])

    @property
    def readable(self) -> bool:
        return bool(self.groups)


def plan_jobs(path: str | os.PathLike, settings: Settings, planes_per_job: int, *, series: int = 0,
              pages_as: str = "z") -> JobPlan:
    """The :class:`JobPlan` of a stack, from its headers only (no pixel reads)."""
    with open_stack(path, series=series, pages_as=pages_as) as stack:
        return JobPlan.of(stack.plane_keys(), settings, planes_per_job)


def train_groups(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: Settings,
    groups: Sequence[int] | None = None,
    seed: int = 0,
    series: int = 0,
    pages_as: str = "z",
    data_range: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Train the networks of some groups of a stack (default: all; the workflow's training
    jobs, and ``fm2s train``) into one model file (:meth:`fm2s.engine.StackModel.save`):
    :func:`fm2s.engine.train_stack`, on a GPU in grouped passes."""
    with stack_job(source, series=series, pages_as=pages_as, device=device,
                   threads=threads) as job:
        plan = plan_groups(job.stack.plane_keys(), settings)
        groups = range(len(plan)) if groups is None else groups
        if not groups or not all(0 <= g < len(plan) for g in groups):
            msg = (f"{source}: groups {list(groups)} out of range; the stack has {len(plan)} "
                   "groups (did it change after the workflow listed them?)")
            raise StackError(msg)
        logger.info("%s: training groups %s (%d planes) on %s (SLURM job %s, "
                    "CUDA_VISIBLE_DEVICES=%s)", source, ",".join(map(str, groups)),
                    sum(len(plan[g].keys) for g in groups), job.device,
                    os.environ.get("SLURM_JOB_ID", "none"),
                    os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        model = train_stack(job.stack, settings, seed=seed, data_range=data_range,
                            device=job.device, groups=list(groups))
        job.check_unchanged()
    path = model.save(output)
    shared = sum(1 for info in model.network_info.values() if info["shared"])
    logger.info("wrote %s: %d network(s) (%d shared) for %d planes", path, len(model.networks),
                shared, len(model.planes))
    return path


def denoise_chunk(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: Settings,
    models: Sequence[str | os.PathLike],
    start: int = 0,
    stop: int | None = None,
    seed: int = 0,
    series: int = 0,
    pages_as: str = "z",
    data_range: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Denoise planes ``start:stop`` (in ``(t, c, z)`` order) of a stack into one chunk file,
    with trained networks (inference and blend only: :func:`fm2s.engine.apply_model`).

    Parameters
    ----------
    source : path
        Any input :func:`fm2s.stacks.open_stack` reads; only the chunk's planes are read.
    output : path
        The chunk file (``.npz``, format in the module docstring), written atomically.
    settings : Settings
        Effective denoise settings; the models must have been trained with them.
    models : sequence of path
        Model files (:func:`train_groups`) holding the networks of the chunk's planes.
    start, stop : int
        Plane range; ``stop=None`` means to the last plane.
    seed, data_range
        Base seed and intensity range; the models must have been trained with them.
    series, pages_as
        Passed to :func:`fm2s.stacks.open_stack`.
    device, threads
        Torch device (resolve ``"auto"`` with :func:`job_device` first) and CPU threads.

    Raises
    ------
    StackError
        Unreadable input or models, a plane range outside the stack, models of other
        settings, or a plane the engine refuses.
    """
    model = StackModel.load_all(models)
    model.check(settings, seed, data_range, str(source))
    with stack_job(source, series=series, pages_as=pages_as, device=device,
                   threads=threads) as job:
        every = job.stack.plane_keys()
        stop = len(every) if stop is None else stop
        if not 0 <= start < stop <= len(every):
            msg = (f"{source}: planes {start}:{stop} out of range; the stack has {len(every)} "
                   f"planes (did it change after the workflow listed them?)")
            raise StackError(msg)
        keys = every[start:stop]
        # Which scheduler job and GPU ran the chunk: the first questions when a result looks off.
        slurm_job = os.environ.get("SLURM_JOB_ID")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        logger.info("%s: denoising planes %d:%d of %d on %s (SLURM job %s, "
                    "CUDA_VISIBLE_DEVICES=%s)", source, start, stop, len(every), job.device,
                    slurm_job or "none", "unset" if visible is None else visible)
        info = {
            "format": CHUNK_FORMAT, "source": str(job.path.resolve()), "start": start,
            "stop": stop, "settings_digest": settings.digest(), "seed": int(seed),
            "data_range": data_range, "series": series, "pages_as": pages_as,
            "device": describe_device(job.device), "host": socket.gethostname(),
            "started": job.started, "fm2s_version": __version__, "slurm_job": slurm_job,
            "cuda_visible_devices": visible, "noise_references": model.references or {},
            "input_stamp": job.stamp,
        }  # fmt: skip
        try:
            with ChunkWriter(output, keys) as writer:
                results = zip(keys, apply_model(job.stack, model, keys, device=job.device),
                              strict=True)
                records = write_planes(writer, results, total=len(keys),
                                       name=job.path.name, progress=False)
                job.check_unchanged()  # a changed input publishes nothing
                return writer.commit({**info, "finished": utc_now(), "planes": records})
        except ValueError as exc:
            if isinstance(exc, StackError):
                raise
            msg = f"{source}: cannot denoise: {exc}"
            raise StackError(msg) from exc


class ChunkWriter:
    """A workflow chunk file (format in the module docstring), written plane by plane under a
    temporary name and renamed at :meth:`commit` (:class:`fm2s.outputs.PlaneWriter`)."""

    keeps_provenance = True

    def __init__(self, path: str | os.PathLike, keys: Sequence[PlaneKey]) -> None:
        self.path, self.keys = Path(path), list(keys)
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._written: set[PlaneKey] = set()

    def __enter__(self) -> ChunkWriter:
        self._output = ExitStack()
        tmp = self._output.enter_context(atomic_output(self.path, overwrite=True))
        self._archive = self._output.enter_context(
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._archive is not None:  # not committed: the temporary is removed
            error = RuntimeError(f"{self.path}: chunk not committed")
            self._output.__exit__(RuntimeError, error, None)

    def _member(self, name: str, array: np.ndarray) -> None:
        with self._archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)

    def write_plane(self, key: tuple[int, int, int], plane: np.ndarray) -> None:
        key = PlaneKey(*key)
        self._member(f"plane{self._index[key]}", plane)
        self._written.add(key)

    def commit(self, record: Mapping[str, Any] | None = None) -> Path:
        """Store the planes' seeds, seconds and input hashes (``record["planes"]``, per key)
        and the rest of `record` as the chunk's ``info``; rename into place."""
        if self._written != set(self.keys):
            msg = f"{self.path}: {len(self.keys) - len(self._written)} planes were not written"
            raise RuntimeError(msg)
        record = dict(record or {})
        planes = record.pop("planes")
        record["planes"] = {k.label: planes[k]["info"] for k in self.keys if planes[k]["info"]}
        self._member("keys", np.asarray([tuple(k) for k in self.keys],
                                        dtype=np.int64).reshape(-1, 3))
        self._member("seeds", np.asarray([planes[k]["seed"] for k in self.keys], np.uint64))
        self._member("seconds", np.asarray([planes[k]["seconds"] for k in self.keys],
                                           np.float64))
        self._member("input_sha256", np.asarray([planes[k]["input_sha256"] for k in self.keys],
                                                dtype="<U64"))
        self._member("info", np.asarray(json.dumps(record)))
        self._archive = None
        self._output.close()  # the archive is closed, then renamed into place
        return self.path


def read_chunk_index(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a chunk file except the planes: ``keys`` (list of PlaneKey), ``seeds``,
    ``seconds``, ``input_sha256`` (lists) and ``info`` (dict)."""
    with np.load(path, allow_pickle=False) as data:
        return {
            "keys": [PlaneKey(*map(int, k)) for k in data["keys"]],
            "seeds": [int(s) for s in data["seeds"]],
            "seconds": [float(s) for s in data["seconds"]],
            "input_sha256": [str(h) for h in data["input_sha256"]],
            "info": json.loads(str(data["info"])),
        }


def _load_plane(path: str, index: int) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data[f"plane{index}"]


def assemble_chunks(
    source: str | os.PathLike,
    chunks: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    settings: Settings,
    seed: int = 0,
    series: int = 0,
    pages_as: str = "z",
    data_range: float | None = None,
    levels: int = 3,
    ngff_version: str = "0.4",
    tile: int = 2048,
    workflow: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Build the OME-Zarr store of a stack from its chunk files.

    Every plane must be in exactly one chunk, denoised with its own seed
    ``plane_seed(seed, (t, c, z))``, the same settings and data range. The image is a lazy
    dask array of the chunks' planes in the input's ``(t, c, z)`` order,
    written one plane at a time by :func:`fm2s.ome.write_ome_zarr` (pyramid, metadata from the
    input) with provenance (:func:`fm2s._provenance.build_provenance`) plus a ``"workflow"``
    entry (`workflow`, e.g. the config, and the output options), and the per-plane entries of
    :func:`fm2s.pipeline.stack_record` (which network denoised which plane), as
    :func:`fm2s.pipeline.denoise_stack` records them. Before writing, every plane of the input
    is read once to check that it is still the plane that was denoised.

    Raises
    ------
    StackError
        A plane missing or duplicated among the chunks, chunks made with other settings, seed
        or data range, or an input that changed since its chunks were denoised.
    """
    source, output = Path(source), Path(output)
    where: dict[PlaneKey, tuple[str, int]] = {}
    index: dict[PlaneKey, tuple[str, float, int]] = {}
    stamps: dict[str, str | None] = {}  # chunk -> the input's stamp when it was denoised
    infos = []
    for path in map(str, chunks):
        chunk = read_chunk_index(path)
        info = chunk["info"]
        expected = {"settings_digest": settings.digest(), "seed": int(seed),
                    "data_range": data_range}
        for name, value in expected.items():
            if info.get(name) != value:
                msg = (f"{path}: chunk made with {name} {info.get(name)!r}, expected {value!r}; "
                       "delete it and rerun")
                raise StackError(msg)
        infos.append(info)
        for i, key in enumerate(chunk["keys"]):
            if key in where:
                msg = f"{path}: plane t,c,z={key.label} also in {where[key][0]}"
                raise StackError(msg)
            if chunk["seeds"][i] != plane_seed(seed, tuple(key)):
                msg = f"{path}: plane t,c,z={key.label} was not denoised with its own seed"
                raise StackError(msg)
            where[key] = (path, i)
            index[key] = (chunk["input_sha256"][i], chunk["seconds"][i], chunk["seeds"][i])
        stamps[path] = info.get("input_stamp")
    with open_stack(source, series=series, pages_as=pages_as) as stack:
        meta, keys = stack.metadata, stack.plane_keys()
    missing = [k.label for k in keys if k not in where]
    extra = [k.label for k in where if k not in set(keys)]
    if missing or extra:
        msg = (f"{source}: chunks do not match the stack's {len(keys)} planes "
               f"(missing t,c,z {missing[:5]}, unknown {extra[:5]})")
        raise StackError(msg)
    stamp = input_stamp(source)
    for path, denoised in stamps.items():  # no pixel is read again: the stamps tell
        if denoised != stamp:
            msg = (f"{source}: changed since chunk {path} was denoised; rerun the workflow once "
                   "the input is complete")
            raise StackError(msg)
    fingerprint = fingerprint_input(source)
    references, plane_infos = {}, {}
    for i in infos:
        references.update(i.get("noise_references") or {})
        plane_infos.update(i.get("planes") or {})
    planes = [
        da.from_delayed(dask.delayed(_load_plane)(*where[key]), shape=meta.shape[3:],
                        dtype=meta.dtype)
        for key in keys
    ]  # fmt: skip
    data = da.stack(planes).reshape(meta.shape)
    record = stack_provenance(
        settings=settings, seed=seed, metadata=meta, fingerprint=fingerprint,
        output=describe_output(meta.shape, meta.dtype, ngff_version=ngff_version, levels=levels,
                               axes=store_axes(meta.shape, meta)),
        device=", ".join(sorted({i["device"] for i in infos})),
        started=min(i["started"] for i in infos), keys=keys,
        planes={key: {"seconds": index[key][1], "input_sha256": index[key][0],
                      "info": plane_infos.get(key.label)} for key in keys},
        data_range=data_range, references=dict(sorted(references.items())))
    record["workflow"] = {
        **dict(workflow or {}),
        "chunks": len(infos),
        "hosts": sorted({i["host"] for i in infos}),
        "slurm_jobs": sorted({i["slurm_job"] for i in infos if i.get("slurm_job")}),
        "cuda_visible_devices": sorted({i["cuda_visible_devices"] for i in infos
                                        if i.get("cuda_visible_devices") is not None}),
        "tile": tile,
    }
    logger.info("assembling %s from %d chunk(s) into %s", source, len(infos), output)
    return write_ome_zarr(output, data, meta, levels=levels, ngff_version=ngff_version,
                          provenance=record, overwrite=overwrite, tile=tile)


def reformat_store(
    store: str | os.PathLike,
    *,
    levels: int = 3,
    ngff_version: str = "0.4",
    tile: int = 2048,
    workflow: Mapping[str, Any] | None = None,
) -> bool:
    """Rewrite an fm2s store with other output options, from its own full-resolution level.

    Nothing is denoised: level 0 is copied plane by plane into a new store (pyramid rebuilt,
    NGFF `ngff_version`), which then replaces the old one atomically; provenance is kept, with
    its ``output`` updated and ``workflow.reformatted`` added.

    Returns
    -------
    bool
        False (and nothing written) when the store already has these options.
    """
    store = Path(store)
    record = provenance(store)
    out, flow = record.get("output", {}), dict(record.get("workflow") or {})
    before = {"levels": out.get("levels"), "ngff_version": out.get("ngff_version"),
              "tile": flow.get("tile", 2048)}
    wanted = {"levels": levels, "ngff_version": ngff_version, "tile": tile}
    if before == wanted:
        return False
    arrays, _ = open_ome_zarr(store)
    fields = dict(record["input"]["metadata"])
    fields["shape"], fields["shape_found"] = tuple(fields["shape"]), tuple(fields["shape_found"])
    meta = StackMetadata(**fields)
    record["output"] = {**out, **describe_output(
        arrays[0].shape, out["dtype"], ngff_version=ngff_version, levels=levels,
        axes=store_axes(arrays[0].shape, meta))}
    record["workflow"] = {**flow, **dict(workflow or {}), "tile": tile,
                          "reformatted": {"at": utc_now(), "from": before}}
    logger.info("rewriting %s: %s -> %s", store, before, wanted)
    write_ome_zarr(store, arrays[0], meta, levels=levels, ngff_version=ngff_version,
                   provenance=record, overwrite=True, tile=tile)
    return True
