"""The Snakemake workflow's per-chunk work, as plain functions (see ``docs/workflow.md``).

A stack's planes, in ``(t, c, z)`` order, are split into chunks of consecutive planes. Each
chunk job reads its planes straight from the source, denoises them and writes one chunk file
(:func:`denoise_chunk`); once every chunk exists, :func:`assemble_chunks` builds the OME-Zarr
store lazily from them. Plane ``(t, c, z)`` always gets the seed
``fm2s.denoise.plane_seed(seed, (t, c, z))``, as in :func:`fm2s.pipeline.denoise_stack`, so the
store does not depend on how the stack was split. :func:`reformat_store` rewrites a finished
store with other output options (pyramid levels, NGFF version) from its own full-resolution
level, without denoising again.

Also here: finding the inputs of an acquisition folder that are complete
(:func:`scan_folder`), their output names (:func:`stack_name`) and change stamps
(:func:`input_stamp`), the device of a job (:func:`job_device`), and the workflow's synthetic
demo stack (:func:`write_synthetic_stack`).

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
                    (``auto``: the channels' reference estimates) and ``planes`` (per plane
                    its network and digest; ``auto``: estimate source, blend, settings)
==================  ==================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fm2s._provenance import (
    build_provenance,
    describe_device,
    describe_output,
    fingerprint_input,
    utc_now,
)
from fm2s.outputs import atomic_output
from fm2s.stacks import PlaneKey, StackError, StackMetadata, open_stack

__all__ = [
    "CHUNK_FORMAT",
    "STACK_SUFFIXES",
    "assemble_chunks",
    "JobPlan",
    "chunk_ranges",
    "denoise_chunk",
    "input_stamp",
    "job_device",
    "plan_jobs",
    "read_chunk_index",
    "reformat_store",
    "scan_folder",
    "stack_name",
    "synthetic_stack",
    "train_groups",
    "write_synthetic_stack",
]

logger = logging.getLogger(__name__)

CHUNK_FORMAT = 1
#: Most planes of a workflow training job (whole groups; see JobPlan).
TRAINING_JOB_PLANES = 16
#: Name endings that :func:`stack_name` strips, longest first.
STACK_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".png", ".czi",
                  ".nd2", ".lif", ".oib", ".oif")
_NO_GPU = ("", "-1", "none", "nodevfiles")
_gpu_locks: list = []  # open lock files of the GPUs this process claimed (see job_device)


# -- inputs ----------------------------------------------------------------------------------


def stack_name(path: str | os.PathLike) -> str:
    """Output name of an input: its file or folder name without a stack suffix.

    Examples
    --------
    >>> stack_name("/data/day1/embryo_03.ome.tif"), stack_name("cells.zarr")
    ('embryo_03', 'cells')
    """
    name = Path(path).name
    for suffix in STACK_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _files(path: Path) -> list[Path]:
    return [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]


def _latest_change(path: Path) -> tuple[int, int, int]:
    """Latest mtime (ns), total size and number of files of a file, folder or store."""
    stats = [f.stat() for f in _files(path)] or [path.stat()]
    return max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats), len(stats)


def input_stamp(path: str | os.PathLike) -> str:
    """A string that changes whenever an input's content may have changed.

    Latest modification time (ns), total size and number of files, over every file of a
    folder or Zarr store (Snakemake itself only sees a folder's own mtime); ``"missing"``
    when `path` does not exist.
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    mtime, size, count = _latest_change(path)
    return f"{mtime}-{size}-{count}"


def check_unchanged(path: str | os.PathLike, stamp: str) -> None:
    """Refuse to publish results of an input that changed while it was read.

    Raises
    ------
    StackError
        `path`'s :func:`input_stamp` is no longer `stamp` (written to, replaced or removed).
    """
    if input_stamp(path) != stamp:
        msg = (f"{path}: changed while being read (written to, replaced or removed); nothing "
               "was written: run again once it is complete")
        raise StackError(msg)


def scan_folder(
    folder: str | os.PathLike,
    patterns: Sequence[str],
    *,
    quiet_seconds: float = 120.0,
    settle_seconds: float = 1.0,
    now: float | None = None,
) -> tuple[dict[str, Path], dict[Path, str]]:
    """Find the inputs of an acquisition folder that are complete.

    Parameters
    ----------
    folder : path
        The acquisition folder.
    patterns : sequence of str
        Glob patterns relative to `folder` (``"*.tif"``, ``"**/*.ome.zarr"``). Hidden names
        (starting with ``.``) and matches inside another match are ignored.
    quiet_seconds : float
        An input modified less than this long ago (any file of it, for a folder or store) is
        left for the next run.
    settle_seconds : float
        Stat the remaining inputs again after this many seconds; one that changed (still
        growing) is left for the next run. 0 skips this check.
    now : float, optional
        The current time (``time.time()``); for tests.

    Returns
    -------
    ready : dict of str to Path
        Output name (the path relative to `folder` without its stack suffix, e.g.
        ``"day1/embryo_03"``) to input path, sorted by name.
    waiting : dict of Path to str
        Inputs left for the next run, with the reason.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"{folder}: acquisition folder does not exist or is not a folder"
        raise FileNotFoundError(msg)
    found: set[Path] = set()
    for pattern in patterns:
        for path in folder.glob(pattern):
            rel = path.relative_to(folder)
            if not any(part.startswith(".") for part in rel.parts):
                found.add(path)
    matches = sorted(p for p in found if not any(q in p.parents for q in found))
    now = time.time() if now is None else now
    waiting: dict[Path, str] = {}
    first: dict[Path, tuple[int, int, int]] = {}
    for path in matches:
        first[path] = _latest_change(path)
        age = now - first[path][0] / 1e9
        if age < quiet_seconds:
            waiting[path] = f"modified {age:.0f} s ago (quiet period {quiet_seconds:g} s)"
    candidates = [p for p in matches if p not in waiting]
    if settle_seconds > 0 and candidates:
        time.sleep(settle_seconds)
        for path in candidates:
            if not path.exists() or _latest_change(path) != first[path]:
                waiting[path] = f"still being written (changed within {settle_seconds:g} s)"
    ready = {}
    for path in matches:
        if path not in waiting:
            rel = path.relative_to(folder)
            ready[(rel.parent / stack_name(rel)).as_posix()] = path
    return dict(sorted(ready.items())), waiting


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


# -- devices ---------------------------------------------------------------------------------


def job_device(
    device: str = "auto",
    *,
    gpus: int = 1,
    environ: Mapping[str, str] | None = None,
    lock_dir: str | os.PathLike | None = None,
) -> str:
    """The torch device of a workflow job.

    ``"auto"`` gives CUDA only when the job was given a GPU: `gpus` >= 1 (its ``gpu``
    resource), torch sees a CUDA device, and ``CUDA_VISIBLE_DEVICES`` does not hide them (in a
    SLURM job it must be set, as SLURM does for jobs that got a GPU). Otherwise ``"cpu"``.
    Outside SLURM with several GPUs visible, concurrent jobs claim different GPUs through lock
    files in `lock_dir` (default: ``$TMPDIR/fm2s-gpu-locks``), held until the process ends, so
    ``snakemake --resources gpu=K`` spreads K jobs over K GPUs. Any other value of `device`
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``) is returned as it is.
    """
    if device != "auto":
        return device
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    in_slurm = "SLURM_JOB_ID" in environ
    if gpus < 1 or (visible is None and in_slurm):
        return "cpu"
    if visible is not None and visible.strip().lower() in _NO_GPU:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if visible is not None:  # the scheduler gave this job a GPU
            why = ("this torch has no CUDA support (a CPU build)" if torch.version.cuda is None
                   else "torch sees no CUDA device (driver or CUDA_VISIBLE_DEVICES)")
            logger.warning("the job was given a GPU (CUDA_VISIBLE_DEVICES=%s) but runs on the "
                           "CPU: %s", visible, why)
        return "cpu"
    count = torch.cuda.device_count()
    if count == 1 or in_slurm:
        return "cuda:0"
    ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / "fm2s-gpu-locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    import fcntl

    for index, ident in enumerate(ids[:count]):
        handle = open(lock_dir / f"gpu-{ident.replace('/', '_')}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _gpu_locks.append(handle)  # held until the process ends
        return f"cuda:{index}"
    logger.warning("all %d visible GPUs are claimed by other fm2s jobs; sharing cuda:0", count)
    return "cuda:0"


# -- denoise one chunk -----------------------------------------------------------------------


def _sha256(plane: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(plane).tobytes()).hexdigest()


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

    groups: list[Any]  # fm2s.engine.Group
    trainings: list[list[int]]  # per training job, its groups
    chunks: list[tuple[int, int]]  # [start, stop) in (t, c, z) order
    chunk_trainings: list[list[int]]  # per chunk, the training jobs of its planes

    @classmethod
    def of(cls, keys: Sequence[tuple[int, int, int]], plane_shape: tuple[int, int],
           settings: Any, planes_per_job: int) -> JobPlan:
        from fm2s.engine import plan_groups

        keys = [PlaneKey(*k) for k in keys]
        groups = plan_groups(keys, settings, plane_shape)
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


def plan_jobs(path: str | os.PathLike, settings: Any, planes_per_job: int, *, series: int = 0,
              pages_as: str = "z") -> JobPlan:
    """The :class:`JobPlan` of a stack, from its headers only (no pixel reads)."""
    with open_stack(path, series=series, pages_as=pages_as) as stack:
        shape = stack.metadata.shape
        return JobPlan.of(stack.plane_keys(), shape[3:], settings, planes_per_job)


def train_groups(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: Any,
    groups: Sequence[int],
    seed: int = 0,
    series: int = 0,
    pages_as: str = "z",
    data_range: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Train the networks of some groups of a stack (:func:`fm2s.engine.train_stack`; on a
    GPU in grouped passes) into one model file (:meth:`fm2s.engine.StackModel.save`)."""
    from fm2s.denoise import resolve_device, set_threads
    from fm2s.engine import plan_groups, train_stack

    source, output = Path(source), Path(output)
    set_threads(threads)
    device = resolve_device(device)
    stamp = input_stamp(source)
    with open_stack(source, series=series, pages_as=pages_as) as stack:
        plan = plan_groups(stack.plane_keys(), settings, stack.metadata.shape[3:])
        if not groups or not all(0 <= g < len(plan) for g in groups):
            msg = (f"{source}: groups {list(groups)} out of range; the stack has {len(plan)} "
                   "groups (did it change after the workflow listed them?)")
            raise StackError(msg)
        logger.info("%s: training groups %s (%d planes) on %s (SLURM job %s, "
                    "CUDA_VISIBLE_DEVICES=%s)", source, ",".join(map(str, groups)),
                    sum(len(plan[g].keys) for g in groups), device,
                    os.environ.get("SLURM_JOB_ID", "none"),
                    os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        model = train_stack(stack, settings, seed=seed, data_range=data_range, device=device,
                            groups=list(groups))
    check_unchanged(source, stamp)
    return model.save(output)


def denoise_chunk(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: Any,
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
    from fm2s import __version__
    from fm2s.denoise import resolve_device, set_threads
    from fm2s.engine import StackModel, apply_model

    source, output = Path(source), Path(output)
    set_threads(threads)
    device = resolve_device(device)
    started = utc_now()
    model = StackModel.load_all(models)
    model.check(settings, seed, data_range, str(source))
    stamp = input_stamp(source)
    with open_stack(source, series=series, pages_as=pages_as) as stack:
        every = stack.plane_keys()
        stop = len(every) if stop is None else stop
        if not 0 <= start < stop <= len(every):
            msg = (f"{source}: planes {start}:{stop} out of range; the stack has {len(every)} "
                   f"planes (did it change after the workflow listed them?)")
            raise StackError(msg)
        keys = every[start:stop]
        hashes: list[str] = []
        results = apply_model(stack, model, keys, device=device,
                              on_plane=lambda _, plane: hashes.append(_sha256(plane)))
        # Which scheduler job and GPU ran the chunk: the first questions when a result looks off.
        slurm_job = os.environ.get("SLURM_JOB_ID")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        logger.info("%s: denoising planes %d:%d of %d on %s (SLURM job %s, "
                    "CUDA_VISIBLE_DEVICES=%s)", source, start, stop, len(every), device,
                    slurm_job or "none", "unset" if visible is None else visible)
        info = {
            "format": CHUNK_FORMAT, "source": str(source.resolve()), "start": start,
            "stop": stop, "settings_digest": settings.digest(), "seed": int(seed),
            "data_range": data_range, "series": series, "pages_as": pages_as,
            "device": describe_device(device), "host": socket.gethostname(), "started": started,
            "fm2s_version": __version__, "slurm_job": slurm_job, "cuda_visible_devices": visible,
        }  # fmt: skip
        try:
            return _write_chunk(output, keys, results, hashes, info, source, model.references,
                                stamp=stamp)
        except ValueError as exc:
            if isinstance(exc, StackError):
                raise
            msg = f"{source}: cannot denoise: {exc}"
            raise StackError(msg) from exc


def _write_chunk(output: Path, keys, results, hashes, info, source, references=None, *,
                 stamp: str | None = None) -> Path:
    # references: StackNoise.record() of the models (auto), or None
    """Stream the results into ``output`` (npz) under a temporary name, then rename it."""
    seeds, seconds, plane_infos = [], [], {}
    with atomic_output(output, overwrite=True) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:

            def member(name: str, array: np.ndarray) -> None:
                with archive.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)

            for i, (key, result) in enumerate(zip(keys, results, strict=True)):
                member(f"plane{i}", result.image)
                seeds.append(result.seed)
                seconds.append(result.seconds)
                if result.info is not None:
                    plane_infos[key.label] = result.info
                logger.info("%s: plane t,c,z=%s denoised in %.2f s", source.name, key.label,
                            result.seconds)
            info = {**info, "finished": utc_now()}
            info["noise_references"] = references or {}
            info["planes"] = plane_infos
            member("keys", np.asarray([tuple(k) for k in keys], dtype=np.int64).reshape(-1, 3))
            member("seeds", np.asarray(seeds, dtype=np.uint64))
            member("seconds", np.asarray(seconds, dtype=np.float64))
            member("input_sha256", np.asarray(hashes, dtype="<U64"))
            member("info", np.asarray(json.dumps(info)))
        if stamp is not None:  # before the rename: a changed input publishes nothing
            check_unchanged(source, stamp)
    return output


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


# -- assemble and reformat -------------------------------------------------------------------


def assemble_chunks(
    source: str | os.PathLike,
    chunks: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    *,
    settings: Any,
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
    import dask
    import dask.array as da

    from fm2s.denoise import plane_seed
    from fm2s.ome import write_ome_zarr
    from fm2s.pipeline import SEED_DERIVATION, pixels_digest, stack_record

    source, output = Path(source), Path(output)
    where: dict[PlaneKey, tuple[str, int]] = {}
    index: dict[PlaneKey, tuple[str, float, int]] = {}
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
    with open_stack(source, series=series, pages_as=pages_as) as stack:
        meta, keys = stack.metadata, stack.plane_keys()
        missing = [k.label for k in keys if k not in where]
        extra = [k.label for k in where if k not in set(keys)]
        if missing or extra:
            msg = (f"{source}: chunks do not match the stack's {len(keys)} planes "
                   f"(missing t,c,z {missing[:5]}, unknown {extra[:5]})")
            raise StackError(msg)
        for key in keys:
            if _sha256(stack.read_plane(key)) != index[key][0]:
                msg = (f"{source}: plane t,c,z={key.label} changed since it was denoised (chunk "
                       f"{where[key][0]}); rerun the workflow once the input is complete")
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
    record = build_provenance(
        settings=settings,
        seed=seed,
        seed_derivation=SEED_DERIVATION,
        input_metadata=meta,
        input_fingerprint=fingerprint,
        output=describe_output(meta.shape, meta.dtype, ngff_version=ngff_version,
                               levels=levels),
        device=", ".join(sorted({i["device"] for i in infos})),
        started=min(i["started"] for i in infos),
        finished=utc_now(),
        plane_seconds={key.label: index[key][1] for key in keys},
        pixels_sha256=pixels_digest(index[key][0] for key in keys),
    )
    results = {key: {"info": plane_infos.get(key.label)} for key in keys}
    record.update(stack_record(results, keys, data_range=data_range,
                               references=dict(sorted(references.items()))))
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
    from fm2s._provenance import provenance
    from fm2s.ome import open_ome_zarr, write_ome_zarr

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
    record["output"] = {**out, **describe_output(arrays[0].shape, out["dtype"],
                                                 ngff_version=ngff_version, levels=levels)}
    record["workflow"] = {**flow, **dict(workflow or {}), "tile": tile,
                          "reformatted": {"at": utc_now(), "from": before}}
    logger.info("rewriting %s: %s -> %s", store, before, wanted)
    write_ome_zarr(store, arrays[0], meta, levels=levels, ngff_version=ngff_version,
                   provenance=record, overwrite=True, tile=tile)
    return True


# -- the demo stack --------------------------------------------------------------------------


def synthetic_stack(
    t: int = 3, c: int = 2, z: int = 4, size: int = 128, *, seed: int = 0,
    photons: float = 30.0, read_noise: float = 0.02, dark: float = 0.05,
    dtype: Any = np.uint16,
) -> np.ndarray:
    """A deterministic fluorescence-like ``(t, c, z, y, x)`` stack with Poisson-Gaussian noise.

    Channel 0 looks like nuclei, channel 1 like filaments (then alternating); structures drift
    smoothly over t and z. Built from :func:`fm2s.synthetic.clean_plane` and
    :func:`fm2s.synthetic.noisy_plane`; every plane's noise has its own seed. Intensities sit
    on a dark level of `dark` (fraction of the range), as a camera's offset does: without one,
    a sixth of the pixels clip at 0.

    Examples
    --------
    >>> synthetic_stack(2, 1, 3, 32).shape
    (2, 1, 3, 32, 32)
    """
    from fm2s.synthetic import clean_plane, noisy_plane

    out = np.empty((t, c, z, size, size), dtype=dtype)
    scale = max(size / 256, 0.25) ** 2
    for ci in range(c):
        blobs, filaments = (40, 4) if ci % 2 == 0 else (6, 16)
        for ti in range(t):
            for zi in range(z):
                clean = clean_plane(
                    (size, size), seed=seed * 1000 + ci, phase=0.4 * ti + 0.25 * zi,
                    blobs=max(1, round(blobs * scale)),
                    filaments=max(1, round(filaments * max(scale, 0.5))),
                )  # fmt: skip
                noise_seed = int(np.random.SeedSequence([seed, ti, ci, zi]).generate_state(1)[0])
                out[ti, ci, zi] = noisy_plane(dark + (1 - dark) * clean, photons=photons,
                                              read_noise=read_noise, seed=noise_seed,
                                              dtype=dtype)
    return out


def write_synthetic_stack(
    path: str | os.PathLike, *, t: int = 3, c: int = 2, z: int = 4, size: int = 128,
    seed: int = 0, dtype: Any = np.uint16, overwrite: bool = False,
) -> Path:
    """Write :func:`synthetic_stack` as an OME-TIFF (axes TCZYX, 0.2 um pixels, 0.5 um z steps,
    60 s frames), under a temporary name first, then renamed."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path}: output exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    data = synthetic_stack(t, c, z, size, seed=seed, dtype=dtype)
    names = [("nuclei", "filaments")[i % 2] + (f"-{i}" if i > 1 else "") for i in range(c)]
    with atomic_output(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(
            tmp, data, ome=True, photometric="minisblack",
            metadata={
                "axes": "TCZYX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 0.5,
                "PhysicalSizeZUnit": "µm", "TimeIncrement": 60.0, "TimeIncrementUnit": "s",
                "Channel": {"Name": names},
            },
        )  # fmt: skip
    return path
