"""Provenance of an fm2s output store: what was run, on what, with what, where.

Stored as JSON in the OME-Zarr group attributes under the key ``"fm2s"``, next
to ``"ome"`` (NGFF 0.5, ``zarr.json``) or next to ``"multiscales"``/``"omero"``
(NGFF 0.4, ``.zattrs``). Schema version 1::

    {
      "schema": 1,
      "fm2s_version": "0.3.0",
      "git_commit": "<sha>" | null,    # HEAD of the checkout fm2s was run from
      "git_dirty": true | false | null,  # tracked files modified in that checkout
      "settings": {...},               # Settings.to_dict(): every effective setting
      "settings_digest": "<sha256>" | null,
      "seed": 0,                       # base seed
      "seed_derivation": "<sentence>", # how per-plane seeds derive from it
      "input": {
        "path": "/abs/path", "format": "imagej-tiff", "series": 0,
        "size_bytes": 1595946, "mtime": "2026-...Z",
        "sha256": "<hex>",             # of the input file's bytes (folders and
                                       # stores: of relative paths and bytes of
                                       # every file, in sorted order)
        "pixels_sha256": "<hex>" | null, # of the raw plane bytes read, in plane order
        "axes": "ZYX", "shape": [25, 137, 147], "dtype": "uint16",
        "shape_tczyx": [1, 1, 25, 137, 147], "metadata": {...}   # StackMetadata
      },
      "output": {"axes": "tczyx", "shape": [...], "dtype": "uint16",
                 "ngff_version": "0.4", "levels": 3},
      "libraries": {"numpy": "2.4.6", "torch": "2.13.0+cpu", ..., "snakemake": null},
      "python": "3.11.7", "platform": "Linux-...",
      "device": "cpu", "host": "node01",
      "started": "2026-...Z", "finished": "2026-...Z", "seconds": 12.3,
      "plane_seconds": {"0,0,0": 0.41, ...},  # keyed "t,c,z"
      "data_range": null,   # intensity mapped to 1.0 (null: the dtype's maximum)
      "networks": {"group-0": {"digest": "<sha256>", "planes": ["0,0,0", ...]}, ...},
                            # which network denoised which plane (fm2s.engine)
      "estimate": {...}     # preset "auto" only: noise estimates per channel and the
                            # settings chosen per plane (fm2s.estimate.provenance_record)
    }

Times are ISO 8601 in UTC. Read it back with :func:`provenance`; print it with
:func:`format_provenance`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import statistics
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from fm2s import __version__
from fm2s._ngff import PROVENANCE_KEY
from fm2s.settings import Settings
from fm2s.stacks import StackError, StackMetadata, StackNotFoundError

__all__ = [
    "PROVENANCE_KEY",
    "SEED_DERIVATION",
    "build_provenance",
    "describe_device",
    "fingerprint_input",
    "format_provenance",
    "git_commit",
    "library_versions",
    "pixels_digest",
    "provenance",
    "stack_provenance",
    "stack_record",
    "utc_now",
]

SCHEMA_VERSION = 1
LIBRARIES = (
    "fm2s", "torch", "numpy", "scipy", "scikit-image", "zarr", "numcodecs", "dask",
    "tifffile", "ome-zarr", "imageio", "tqdm", "snakemake",
)  # fmt: skip


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (``2026-11-21T05:01:02.123456Z``)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of `names` (distribution names), ``None`` when absent.

    fm2s's own is the running code's ``fm2s.__version__``: an editable install's metadata keeps
    the version it was installed with, however the code has changed since.
    """
    out: dict[str, str | None] = {}
    for name in names:
        if name == "fm2s":
            out[name] = _package_version()
            continue
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(package_dir: str | Path | None = None) -> tuple[str | None, bool | None]:
    """HEAD commit and dirty flag of the checkout fm2s runs from, else ``(None, None)``.

    Only a checkout that tracks the package's ``__init__.py`` counts, so an install
    that merely sits inside some other repository reports ``None``.
    """
    package_dir = Path(package_dir or Path(__file__).parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(package_dir), *args],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def fingerprint_input(path: str | Path, *, chunk_size: int = 1 << 20) -> dict[str, Any]:
    """Size, latest mtime and SHA-256 of an input file, folder or Zarr store.

    A file is hashed as its bytes; a folder as the relative POSIX path, a NUL
    byte and the bytes of each file in sorted order. Streams in `chunk_size`
    pieces, so memory stays small whatever the input size.
    """
    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such file or folder"
        raise StackNotFoundError(msg)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    size, mtime = 0, path.stat().st_mtime
    for f in files:
        if f is not path:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        stat = f.stat()
        size, mtime = size + stat.st_size, max(mtime, stat.st_mtime)
        with open(f, "rb") as fh:
            while block := fh.read(chunk_size):
                digest.update(block)
    return {
        "size_bytes": size,
        "mtime": _iso(mtime),
        "sha256": digest.hexdigest(),
        "files": len(files),
    }


def build_provenance(
    *,
    settings: Settings | Mapping[str, Any],
    seed: int,
    seed_derivation: str,
    input_metadata: StackMetadata,
    input_fingerprint: Mapping[str, Any],
    output: Mapping[str, Any],
    device: str,
    started: str,
    finished: str,
    plane_seconds: Mapping[str, float],
    pixels_sha256: str | None = None,
    estimate: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the provenance dict (schema in the module docstring).

    Parameters
    ----------
    settings : Settings or mapping
        The effective denoise settings; ``Settings`` objects are stored with
        ``to_dict()`` and ``digest()``.
    seed, seed_derivation
        Base seed and a sentence saying how per-plane seeds derive from it.
    input_metadata : StackMetadata
        As read by :func:`fm2s.stacks.open_stack`.
    input_fingerprint : mapping
        From :func:`fingerprint_input`.
    output : mapping
        ``shape``, ``dtype``, ``ngff_version``, ``levels`` of the written store.
    device : str
        The device planes were denoised on (resolved, e.g. ``"cuda:0"``).
    started, finished : str
        ISO 8601 UTC times (see :func:`utc_now`).
    plane_seconds : mapping
        Denoising seconds per plane, keyed ``"t,c,z"``.
    pixels_sha256 : str, optional
        SHA-256 of the raw bytes of the planes read, in plane order.
    estimate : mapping, optional
        For ``preset="auto"``: the noise estimates and per-plane choices
        (:func:`fm2s.estimate.provenance_record`); stored under ``"estimate"``.
    """
    if hasattr(settings, "to_dict"):
        digest = settings.digest() if hasattr(settings, "digest") else None
        settings = settings.to_dict()
    else:
        settings, digest = dict(settings), None
    commit, dirty = git_commit()
    meta = input_metadata
    seconds = (
        datetime.fromisoformat(finished.replace("Z", "+00:00"))
        - datetime.fromisoformat(started.replace("Z", "+00:00"))
    ).total_seconds()
    record = {
        "schema": SCHEMA_VERSION,
        "fm2s_version": _package_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "settings": settings,
        "settings_digest": digest,
        "seed": int(seed),
        "seed_derivation": seed_derivation,
        "input": {
            "path": str(Path(meta.path).resolve()),
            "format": meta.format,
            "series": meta.series,
            **{k: input_fingerprint.get(k) for k in ("size_bytes", "mtime", "sha256", "files")},
            "pixels_sha256": pixels_sha256,
            "axes": meta.axes_found,
            "shape": list(meta.shape_found),
            "dtype": meta.dtype,
            "shape_tczyx": list(meta.shape),
            "metadata": meta.to_dict(),
        },
        "output": {"axes": "tczyx", **dict(output)},
        "libraries": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "host": socket.gethostname(),
        "started": started,
        "finished": finished,
        "seconds": round(seconds, 3),
        "plane_seconds": {str(k): round(float(v), 4) for k, v in plane_seconds.items()},
    }
    if estimate is not None:
        record["estimate"] = dict(estimate)
    if "shape" in record["output"]:
        record["output"]["shape"] = [int(n) for n in record["output"]["shape"]]
    json.dumps(record, allow_nan=False)  # JSON-able, or fail here
    return record


def _package_version() -> str:
    return __version__


#: Subgroup of a store whose attributes hold the per-plane part of the provenance (seconds,
#: estimates and network of every plane), so that the root attributes, which every viewer parses
#: when it opens the store, stay small whatever the number of planes.
PLANES_GROUP = "fm2s-planes"


def split_provenance(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(root, planes)``: a provenance record cut into its bounded and its per-plane parts.

    ``root`` keeps everything but ``plane_seconds`` (summarised in ``plane_seconds_summary``),
    ``estimate.planes`` and each network's ``planes`` (summarised as ``plane_count``, ``first``
    and ``last``), and names the subgroup that holds them (``per_plane``).
    :func:`join_provenance` puts the two back together.
    """
    root, planes = dict(record), {}
    if "plane_seconds" in root:
        seconds = root.pop("plane_seconds")
        planes["plane_seconds"] = seconds
        values = [float(v) for v in seconds.values() if v is not None]
        root["plane_seconds_summary"] = {
            "planes": len(seconds), "total": round(sum(values), 3),
            "median": round(statistics.median(values), 4) if values else None,
            "max": round(max(values), 4) if values else None}
    if isinstance(root.get("estimate"), Mapping) and "planes" in root["estimate"]:
        estimate = dict(root["estimate"])
        planes["estimate_planes"] = estimate.pop("planes")
        root["estimate"] = estimate
    if isinstance(root.get("networks"), Mapping):
        planes["network_planes"] = {}
        networks = {}
        for name, entry in root["networks"].items():
            labels = list(entry.get("planes") or [])
            planes["network_planes"][name] = labels
            networks[name] = {**{k: v for k, v in entry.items() if k != "planes"},
                              "plane_count": len(labels),
                              "first": labels[0] if labels else None,
                              "last": labels[-1] if labels else None}
        root["networks"] = networks
    root["per_plane"] = PLANES_GROUP
    return root, planes


def join_provenance(root: Mapping[str, Any], planes: Mapping[str, Any]) -> dict[str, Any]:
    """The whole record from the two parts of :func:`split_provenance`."""
    record = {k: v for k, v in root.items() if k not in ("per_plane", "plane_seconds_summary")}
    if "plane_seconds" in planes:
        record["plane_seconds"] = planes["plane_seconds"]
    if "estimate_planes" in planes:
        record["estimate"] = {**record.get("estimate", {}), "planes": planes["estimate_planes"]}
    if "network_planes" in planes:
        record["networks"] = {
            name: {**{k: v for k, v in entry.items()
                      if k not in ("plane_count", "first", "last")},
                   "planes": planes["network_planes"].get(name, [])}
            for name, entry in record.get("networks", {}).items()}
    return record


def write_provenance(group, record: Mapping[str, Any]) -> None:
    """Write a record into an open (writable) Zarr group: the root part in its attributes,
    the per-plane part in those of its subgroup :data:`PLANES_GROUP`."""
    json.dumps(record, allow_nan=False)  # fail here, not in a reader
    root, planes = split_provenance(record)
    group.attrs[PROVENANCE_KEY] = root
    group.create_group(PLANES_GROUP, overwrite=True).attrs[PROVENANCE_KEY] = planes


def provenance(path: str | Path) -> dict[str, Any]:
    """Read the fm2s provenance of an OME-Zarr store written by fm2s (the whole record: the
    root attributes joined with the per-plane part in the :data:`PLANES_GROUP` subgroup).

    Raises
    ------
    StackNotFoundError
        If `path` does not exist (also a ``FileNotFoundError``).
    StackError
        If `path` is not a Zarr group or has no ``"fm2s"`` attribute.
    """
    import zarr

    path = Path(path)
    if not path.exists():
        msg = f"{path}: no such store"
        raise StackNotFoundError(msg)
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception as exc:
        msg = f"{path}: not a readable Zarr group ({type(exc).__name__}: {exc})"
        raise StackError(msg) from exc
    if PROVENANCE_KEY not in attrs:
        msg = f"{path}: no fm2s provenance (no {PROVENANCE_KEY!r} key in the group attributes)"
        raise StackError(msg)
    record = attrs[PROVENANCE_KEY]
    if "per_plane" not in record:  # written whole (fm2s 0.8 and earlier)
        return record
    try:
        planes = zarr.open_group(str(path / record["per_plane"]), mode="r").attrs.asdict()
    except Exception as exc:
        msg = (f"{path}: the per-plane provenance ({record['per_plane']}) is unreadable "
               f"({type(exc).__name__}: {exc})")
        raise StackError(msg) from exc
    return join_provenance(record, planes.get(PROVENANCE_KEY, {}))


def read_variance_note(estimate: dict[str, Any]) -> str | None:
    """What a negative read variance of a noise estimate (``NoiseEstimate.as_dict()``) means,
    in words; None when it is not negative."""
    b, a = estimate.get("read_var_dn"), estimate.get("gain_dn")
    if b is None or b >= 0:
        return None
    text = "read variance < 0: the noise grows as if the signal started "
    if a:
        text += f"{-b / a:.4g} DN "
    return text + ("above zero, as with a camera's dark offset or clipped dark pixels; the "
                   "model's variance stays >= 0 over the plane's range. Not an error")


NOISE_MODEL_COLUMNS = ["channel", "planes", "from t,c,z", "to t,c,z", "planes fitted",
                       "gain (DN)", "offset (DN)", "read variance (DN^2)", "std at mean (DN)",
                       "neighbour correlation", "row correlation", "change"]


def noise_model_rows(channels: Mapping[str, Any]) -> list[list[Any]]:
    """One row per segment of each channel's noise model (``StackNoise.record()``).

    Columns: :data:`NOISE_MODEL_COLUMNS`.
    """
    rows = []
    for channel, entry in sorted(channels.items(), key=lambda item: int(item[0])):
        changes = {c["at"]: c for c in entry.get("changes") or []}
        for segment in entry.get("segments") or []:
            change = changes.get(segment.get("first"))
            rows.append([
                channel, entry.get("planes"), segment.get("first"), segment.get("last"),
                segment.get("fitted_planes"), segment.get("gain_dn"), segment.get("offset_dn"),
                segment.get("read_var_dn"), segment.get("std_dn_at_mean"),
                segment.get("neighbour_corr"), segment.get("line_corr"),
                f"variance x{change['variance_ratio']}" if change else "",
            ])
    return rows


def noise_model_lines(channels: Mapping[str, Any]) -> list[str]:
    """``fm2s info``'s lines for the noise models of a store's channels."""
    lines = []
    for row in noise_model_rows(channels):
        channel, planes, first, last, fitted, gain, offset, read, std, corr, line, change = row
        text = (f"noise:     channel {channel} planes {first} .. {last} ({fitted} of {planes} "
                f"fitted): gain {gain} DN, read variance {read} DN^2")
        if offset:
            text += f" (dark offset {offset} DN)"
        text += f", std {std} DN at mean, neighbour correlation {corr}"
        if line:
            text += f", row correlation {line}"
        lines.append(text + (f"; starts with a change: {change}" if change else ""))
    return lines


def format_provenance(path: str | Path) -> str:
    """Provenance of a store as readable text, for ``fm2s info STORE``."""
    p = provenance(path)
    inp, out = p.get("input", {}), p.get("output", {})
    times = list((p.get("plane_seconds") or {}).values())
    commit = p.get("git_commit") or "none (not run from a git checkout)"
    if p.get("git_dirty"):
        commit += " (with uncommitted changes)"
    lines = [
        f"store:     {Path(path)}",
        f"fm2s:      {p.get('fm2s_version')}  commit {commit}",
        f"input:     {inp.get('path')}  [{inp.get('format')}, series {inp.get('series')}]",
        f"           axes {inp.get('axes')} shape {inp.get('shape')} {inp.get('dtype')}, "
        f"{inp.get('size_bytes')} bytes, modified {inp.get('mtime')}",
        f"           sha256 {inp.get('sha256')}",
        f"output:    axes {out.get('axes')} shape {out.get('shape')} {out.get('dtype')}, "
        f"NGFF {out.get('ngff_version')}, {out.get('levels')} levels",
        f"seed:      {p.get('seed')}  ({p.get('seed_derivation')})",
        f"settings:  digest {p.get('settings_digest')}",
    ]
    lines += [f"           {k} = {v!r}" for k, v in sorted((p.get("settings") or {}).items())]
    lines += [
        f"run:       {p.get('started')} -> {p.get('finished')} ({p.get('seconds')} s) "
        f"on {p.get('device')} at {p.get('host')}",
    ]
    estimate = p.get("estimate")
    if estimate:
        lines += noise_model_lines(estimate.get("channels") or {})
        planes = estimate.get("planes") or {}
        own = [k for k, v in planes.items() if v.get("source") == "plane"]
        blends = [v["blend"] for v in planes.values() if v.get("blend") is not None]
        text = (f"           auto: {len(planes)} plane(s), {len(own)} with a plane's own "
                "estimate")
        if blends:
            text += f", blend weight {min(blends):.2f}-{max(blends):.2f}"
        lines.append(text)
    networks = p.get("networks") or {}
    if networks:
        own = sorted(n for n, e in networks.items() if len(e.get("planes") or []) == 1)
        count = sum(len(e.get("planes") or []) for e in networks.values())
        lines.append(f"networks:  {len(networks)} for {count} planes; "
                     f"{len(networks) - len(own)} shared, {len(own)} a plane's own")
        for name, entry in list(networks.items())[:40]:
            labels = entry.get("planes") or []
            lines.append(f"           {name}: {len(labels)} plane(s) {labels[0]} .. {labels[-1]}, "
                         f"digest {str(entry.get('digest'))[:12]}")
        if len(networks) > 40:
            lines.append(f"           ... {len(networks) - 40} more (fm2s.provenance(STORE))")
    if p.get("data_range") is not None:
        lines.append(f"range:     data_range {p['data_range']} (intensity mapped to 1.0)")
    flow = p.get("workflow") or {}
    if flow.get("slurm_jobs"):
        lines.append(f"slurm:     jobs {', '.join(map(str, flow['slurm_jobs']))}")
    if times:
        lines.append(
            f"planes:    {len(times)}, {sum(times):.2f} s denoising "
            f"(mean {sum(times) / len(times):.3f} s, max {max(times):.3f} s)"
        )
    libs = ", ".join(f"{k} {v}" for k, v in (p.get("libraries") or {}).items() if v)
    lines.append(f"libraries: python {p.get('python')}, {libs}")
    return "\n".join(lines)


def describe_device(device) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H200)"`` for a resolved torch device (provenance)."""
    if getattr(device, "type", None) == "cuda":
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


SEED_DERIVATION = (
    "each plane is denoised with seed fm2s.plane_seed(seed, (t, c, z)), a SHA-256 "
    "of the base seed and the plane's (t, c, z) tuple of ints, so a plane's result depends "
    "on its position and the base seed only, not on batching or on how a stack is split "
    "into jobs"
)


def pixels_digest(plane_hashes) -> str:
    """SHA-256 over the SHA-256 of every raw plane, in plane order: identifies the pixels
    read, whichever job read which plane."""
    digest = hashlib.sha256()
    for plane_hash in plane_hashes:
        digest.update(bytes.fromhex(plane_hash))
    return digest.hexdigest()


def stack_record(results, keys, *, data_range, model=None, references=None) -> dict[str, Any]:
    """Provenance entries of a stack's planes: ``data_range``, ``networks`` (which network
    denoised which plane, summarised) and, for ``auto``, ``estimate``."""
    from fm2s.stack_noise import provenance_record  # here, so that `fm2s info` needs no torch

    infos = {k.label: results[k]["info"] for k in keys if results[k]["info"]}
    record: dict[str, Any] = {"data_range": data_range, "model_file": None if model is None
                              else str(Path(model).resolve())}
    record["networks"] = network_summary(infos)
    autos = {label: info for label, info in infos.items() if "estimate" in info}
    if autos:
        references = references if references is not None else {}
        record["estimate"] = provenance_record(references, autos)
    return record


def network_summary(infos: dict[str, dict]) -> dict[str, Any]:
    """Per network: its digest and the planes it denoised (as ``"t,c,z"`` labels)."""
    networks: dict[str, dict[str, Any]] = {}
    for label, info in infos.items():
        name = info.get("network")
        if name is None:
            continue
        entry = networks.setdefault(name, {"digest": info.get("network_digest"), "planes": []})
        entry["planes"].append(label)
    return dict(sorted(networks.items()))


def stack_provenance(*, settings, seed: int, metadata: StackMetadata,
                     fingerprint: Mapping[str, Any], output: Mapping[str, Any], device: str,
                     started: str, keys, planes: Mapping[Any, Mapping[str, Any]],
                     data_range: float | None, model=None, references=None) -> dict[str, Any]:
    """The provenance record of a denoised stack: :func:`build_provenance` and the planes'
    entries of :func:`stack_record`, whichever jobs denoised which planes.

    `planes` maps each key of `keys` (PlaneKey, in order) to its ``seconds``,
    ``input_sha256`` and ``info``; `model` is the model file applied (None: trained here),
    `references` the noise models' record (``auto``).
    """
    record = build_provenance(
        settings=settings,
        seed=seed,
        seed_derivation=SEED_DERIVATION,
        input_metadata=metadata,
        input_fingerprint=fingerprint,
        output=output,
        device=device,
        started=started,
        finished=utc_now(),
        plane_seconds={key.label: planes[key]["seconds"] for key in keys},
        pixels_sha256=pixels_digest(planes[key]["input_sha256"] for key in keys),
    )
    record.update(stack_record(planes, keys, data_range=data_range, model=model,
                               references=references))
    return record
