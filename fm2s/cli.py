"""The ``fm2s`` command line: denoise, train, demo, eval, info, report; synth, train-groups,
denoise-chunk, assemble and reformat (the workflow's jobs, each one ``fm2s`` call).

Errors in the input (missing or unreadable files, bad arrays, unknown presets) end with a one-line
message naming the file and the problem, and exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from .outputs import atomic_output, check_writable
from .settings import PRESETS, RECIPES, Settings, make_settings, parse_overrides

# Modules that load torch, SciPy, scikit-image, imageio, tifffile, zarr or dask are imported
# inside the verbs that need them: `fm2s --version` and `fm2s --help` stay at a fraction of a
# CPU-second (tests/test_cli_options.py).

log = logging.getLogger("fm2s")

EXIT_BAD_INPUT = 2
MICROSCOPE_PREFIXES = {"confocal": "confocal", "twophoton": "twophoton", "widefield": "widefield"}


class UsageError(Exception):
    """A problem with the user's input; reported in one line with exit code 2."""


# --- settings from the command line -------------------------------------------------------------

def _add_settings_options(parser: argparse.ArgumentParser, *, preset_help: str | None = None):
    group = parser.add_argument_group("denoising settings")
    hand_set = ", ".join(p for p in PRESETS if p != "auto")
    group.add_argument("--preset", default=None, help=preset_help or (
        f"noise synthesis: auto (default: estimated from each plane), or a microscope's "
        f"hand-set preset: {hand_set}"))
    group.add_argument("--recipe", default=None, choices=sorted(RECIPES), help=(
        "network and training schedule: fast (default, seconds per plane), v2 or v1 "
        "(the published schedules, minutes per plane)"))
    group.add_argument("--per-plane", action="store_true", help=(
        "train a network for every plane (the paper's way; --set group_size=1) instead of "
        "one per group of similar planes of a channel (the default for stacks)"))
    group.add_argument("--seed", type=int, default=None, help="base seed (default 0); plane "
                       "(t, c, z) of a stack is denoised with plane_seed(seed, (t, c, z))")
    group.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help=(
        "override one setting, e.g. --set k_g=150 (repeatable); see fm2s.settings.Settings "
        "for the keys. --set steps=N: every network trains N optimiser steps, a network of "
        "one plane and a group's shared network alike (the fast recipe's defaults: 1,500 for "
        "a plane, 1,500 per plane up to 3,000 for a group); fewer steps are faster and "
        "denoise less well"))
    group.add_argument("--settings", metavar="JSON", type=Path, help=(
        "read complete settings from a JSON file (as written by --save-settings); "
        "--preset, --recipe and --set are then not allowed"))
    group.add_argument("--data-range", type=float, default=None, help=(
        "intensity that maps to 1.0 (default: the dtype's maximum for integers, e.g. 65535 "
        "for uint16; 1 or the plane maximum for floats); e.g. 4095 for 12-bit data"))
    group = parser.add_argument_group("execution")
    group.add_argument("--device", default="auto", help="auto (default: CUDA if available), "
                       "cpu, cuda or cuda:N")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def _settings_given(args) -> bool:
    """Whether the command line names any denoising setting."""
    return bool(args.settings is not None or args.set or args.preset is not None
                or args.recipe is not None or args.per_plane)


def _settings_from_args(args, preset: str | None = None) -> Settings:
    if args.settings is not None:
        if args.set or args.preset is not None or args.recipe is not None:
            raise UsageError("--settings cannot be combined with --preset, --recipe or --set")
        try:
            settings = Settings.from_json(args.settings.read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"{args.settings}: {error}") from error
        return settings.replace(group_size=1) if args.per_plane else settings
    overrides = parse_overrides(args.set)
    if args.per_plane:
        overrides["group_size"] = 1
    try:
        return make_settings(preset or args.preset or "auto", args.recipe or "fast", **overrides)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _seed(args) -> int:
    return 0 if args.seed is None else args.seed


# --- fm2s denoise -------------------------------------------------------------------------------

def cmd_denoise(args) -> int:
    from .pipeline import denoise_stack  # stack I/O pulls in zarr and dask
    from .planeio import IMAGE_SUFFIXES

    src, dst = args.input, args.output
    if src.resolve() == dst.resolve():
        raise UsageError(f"{dst}: output would overwrite the input")
    if dst.exists() and not args.overwrite:
        raise UsageError(f"{dst}: output exists (use --overwrite to replace it)")
    to_store = dst.name.lower().endswith(".zarr")
    if not to_store and (src.is_dir() or src.name.lower().endswith(
            (".zarr", ".ome.tif", ".ome.tiff"))):
        raise UsageError(f"{dst}: stack output must be an OME-Zarr store (name.ome.zarr)")
    if not to_store and dst.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"{dst}: unsupported file type {dst.suffix!r} for the output; expected "
                         ".png, .tif, .tiff or .ome.zarr")
    if args.save_settings:  # the output itself is checked by check_output_path
        check_writable(args.save_settings, what="settings file")
    model, settings, seed, data_range = _model_and_settings(args)
    if args.save_settings:
        with atomic_output(args.save_settings, overwrite=True) as tmp:
            tmp.write_text(settings.to_json() + "\n")
    options = dict(settings=settings, seed=seed, series=args.series, pages_as=args.pages_as,
                   device=args.device, threads=args.threads, overwrite=args.overwrite,
                   progress=not args.quiet, data_range=data_range, model=model)
    denoise_stack(src, dst, levels=args.levels, ngff_version=args.ngff_version,
                  model_path=args.model, **options)
    log.info("wrote %s", dst)
    return 0


def _model_and_settings(args):
    """``(model or None, settings, seed, data_range)`` of ``fm2s denoise``: with ``--model``,
    the model's, which settings given on the command line must match."""
    if args.model is None:
        return None, _settings_from_args(args), _seed(args), args.data_range
    from .engine import StackModel

    model = StackModel.load(args.model)
    settings = _settings_from_args(args) if _settings_given(args) else model.settings
    seed = model.seed if args.seed is None else args.seed
    data_range = model.data_range if args.data_range is None else args.data_range
    model.check(settings, seed, data_range, str(args.model))
    return model, settings, seed, data_range


# --- fm2s train ---------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .jobs import train_groups

    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output}: output exists (use --overwrite to replace it)")
    check_writable(args.output, what="model file")
    started = time.perf_counter()
    train_groups(args.input, args.output, settings=_settings_from_args(args), seed=_seed(args),
                 series=args.series, pages_as=args.pages_as, data_range=args.data_range,
                 device=args.device, threads=args.threads)
    log.info("trained in %.1f s", time.perf_counter() - started)
    return 0


# --- fm2s demo ----------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from .denoise import iter_denoise_planes
    from .planeio import write_image
    from .synthetic import clean_plane, noisy_plane

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    clean = clean_plane((args.size, args.size), seed=_seed(args))
    truth = np.rint(clean * 255).astype(np.uint8)
    noisy = noisy_plane(clean, photons=20.0, read_noise=0.03, seed=_seed(args) + 1)
    write_image(out / "ground_truth.png", truth, overwrite=True)
    write_image(out / "noisy.png", noisy, overwrite=True)
    settings = _settings_from_args(args)
    start = time.perf_counter()
    result = next(iter_denoise_planes([noisy], settings, seed=_seed(args), device=args.device,
                                      threads=args.threads))
    seconds = time.perf_counter() - start
    write_image(out / "denoised.png", result.image, overwrite=True)
    before = psnr(truth, noisy, data_range=255)
    after = psnr(truth, result.image, data_range=255)
    print(f"demo plane {args.size}x{args.size}: PSNR noisy {before:.2f} dB -> denoised "
          f"{after:.2f} dB in {seconds:.1f} s ({settings.recipe} recipe); images in {out}/")
    return 0


# --- fm2s eval ----------------------------------------------------------------------------------

def _preset_for(name: str, choice: str) -> str:
    if choice != "by-name":
        return choice
    prefix = name.split("_")[0].lower()
    if prefix not in MICROSCOPE_PREFIXES:
        raise UsageError(f"{name}: cannot tell the microscope from the name (expected a prefix "
                         f"among {', '.join(MICROSCOPE_PREFIXES)}); pass --preset")
    return MICROSCOPE_PREFIXES[prefix]


def _data_range(truth: np.ndarray) -> float:
    if truth.dtype.kind in "ui":
        return float(np.iinfo(truth.dtype).max)
    return float(truth.max() - truth.min())


def evaluate_folder(noisy_dir: Path, truth_dir: Path, args,
                    crops: list | None = None) -> list[dict]:
    """Denoise every image of ``noisy_dir`` with a same-named image in ``truth_dir``.

    With a list as `crops`, append ``(name, noisy, denoised, truth)`` crops of each image (the
    window of :func:`fm2s.report.pick_region` on the ground truth) for ``--html``.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from tqdm import tqdm

    from .denoise import iter_denoise_planes
    from .planeio import IMAGE_SUFFIXES, read_image, write_image

    names = sorted(p.name for p in noisy_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and (truth_dir / p.name).is_file())
    if args.limit:
        names = names[: args.limit]
    if not names:
        raise UsageError(f"{noisy_dir}: no images with a same-named ground truth in {truth_dir}")
    rows = []
    for name in tqdm(names, desc="eval", unit="image", disable=args.quiet or None):
        noisy, truth = read_image(noisy_dir / name), read_image(truth_dir / name)
        if noisy.shape != truth.shape:
            raise UsageError(f"{noisy_dir / name}: shape {noisy.shape} differs from ground truth "
                             f"{truth.shape}")
        settings = _settings_from_args(args, preset=_preset_for(name, args.preset))
        start = time.perf_counter()
        result = next(iter_denoise_planes([noisy], settings, seed=_seed(args),
                                          device=args.device, threads=args.threads,
                                          data_range=args.data_range))
        seconds = time.perf_counter() - start
        span = _data_range(truth)
        row = {
            "image": name, "group": name.split("_")[0], "preset": settings.preset,
            "recipe": settings.recipe,
            "psnr_noisy": peak_signal_noise_ratio(truth, noisy, data_range=span),
            "psnr": peak_signal_noise_ratio(truth, result.image, data_range=span),
            "ssim_noisy": structural_similarity(truth, noisy, data_range=span),
            "ssim": structural_similarity(truth, result.image, data_range=span),
            "seconds": seconds,
        }
        rows.append(row)
        log.info("%s: PSNR %.2f dB (noisy %.2f), SSIM %.3f, %.1f s", name, row["psnr"],
                 row["psnr_noisy"], row["ssim"], seconds)
        if args.save_dir:
            write_image(args.save_dir / name, result.image, overwrite=True)
        if crops is not None:
            from .report import pick_region

            window = pick_region(truth, EVAL_CROP)
            crops.append((name, noisy[window], result.image[window], truth[window]))
    return rows


METRICS = ("psnr_noisy", "psnr", "ssim_noisy", "ssim", "seconds")
EVAL_CROP = 128  # side of the crops of the --html page, in pixels


def summarise(rows: list[dict]) -> list[dict]:
    """Mean of each metric per group, then over all images."""
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    groups["all"] = rows
    return [{"group": g, "images": len(members),
             **{m: float(np.mean([r[m] for r in members])) for m in METRICS}}
            for g, members in groups.items()]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1.5 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def cmd_eval(args) -> int:
    for folder in (args.noisy_dir, args.truth_dir):
        if not folder.is_dir():
            raise UsageError(f"{folder}: no such directory")
    crops = [] if args.html else None
    rows = evaluate_folder(args.noisy_dir, args.truth_dir, args, crops)
    summary = summarise(rows)
    image_cols = ["image", "preset", "recipe", *METRICS]
    group_cols = ["group", "images", *METRICS]
    text = (markdown_table(rows, image_cols) + "\n\n" + markdown_table(summary, group_cols) + "\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["image", "group", "preset", "recipe", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
        args.csv.write_text(buffer.getvalue())
    if args.html:
        from .report import write_eval_report

        write_eval_report(args.html, rows, summary, crops, description=(
            f"{len(rows)} images of {args.noisy_dir} denoised (recipe {rows[0]['recipe']}, "
            f"base seed {_seed(args)}) and scored against {args.truth_dir}."))
    return 0


# --- fm2s info ----------------------------------------------------------------------------------

#: JSON Schema (draft 2020-12) of ``fm2s info --json``: what fm2s reads from the input (as
#: the text form's lines below "as read:") and, for a store written by fm2s, its provenance
#: (fm2s.provenance(STORE), null otherwise). Non-finite numbers are written as null.
INFO_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fm2s info --json",
    "type": "object",
    "required": ["fm2s_version", "path", "series", "input", "provenance"],
    "additionalProperties": False,
    "properties": {
        "fm2s_version": {"type": "string", "description": "version of the fm2s that read it"},
        "path": {"type": "string"},
        "series": {"type": "integer", "minimum": 0},
        "input": {
            "type": "object",
            "description": "fm2s._stack_types.StackMetadata.to_dict()",
            "required": ["path", "format", "axes_found", "shape", "dtype", "shape_found",
                         "pixel_sizes", "units", "time_step", "time_unit", "channel_names",
                         "channel_colors", "series", "n_series"],
            "properties": {
                "path": {"type": "string"},
                "format": {"type": "string"},
                "axes_found": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                          "minItems": 5, "maxItems": 5, "description": "t, c, z, y, x"},
                "dtype": {"type": "string"},
                "shape_found": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "pixel_sizes": {"type": "object",
                                "additionalProperties": {"type": ["number", "null"]}},
                "units": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                "time_step": {"type": ["number", "null"]},
                "time_unit": {"type": ["string", "null"]},
                "channel_names": {"type": ["array", "null"], "items": {"type": "string"}},
                "channel_colors": {"type": ["array", "null"],
                                   "items": {"type": ["string", "null"],
                                             "pattern": "^[0-9A-Fa-f]{6}$"}},
                "channel_windows": {"type": ["array", "null"],
                                    "items": {"type": ["array", "null"],
                                              "items": {"type": "number"},
                                              "minItems": 2, "maxItems": 2}},
                "series": {"type": "integer", "minimum": 0},
                "n_series": {"type": "integer", "minimum": 1},
            },
        },
        "provenance": {
            "type": ["object", "null"],
            "description": "fm2s.provenance(STORE) of a store written by fm2s",
            "required": ["fm2s_version", "settings", "seed"],
        },
    },
}


def _jsonable(value):
    """`value` as strict JSON types: tuples as lists, NumPy scalars as numbers, NaN and
    infinities as None (``json.dumps`` would write them as bare NaN, which is not JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def cmd_info(args) -> int:
    from ._ngff import PROVENANCE_KEY
    from ._provenance import format_provenance
    from .stacks import open_stack

    with open_stack(args.store, series=args.series) as stack:
        meta = stack.metadata
        ours = meta.format == "ome-zarr" and _has_attribute(args.store, PROVENANCE_KEY)
    if args.json:
        from ._provenance import provenance

        info = {"fm2s_version": __version__, "path": str(args.store), "series": args.series,
                "input": meta.to_dict(), "provenance": provenance(args.store) if ours else None}
        print(json.dumps(_jsonable(info), indent=2, allow_nan=False))
        return 0
    if ours:
        print(format_provenance(args.store))
        print("\n".join(["as read:"] + [f"  {line}" for line in meta.describe()]))
    else:
        print("\n".join([f"input:     {args.store}", *meta.describe()]))
    return 0


def _has_attribute(store: Path, key: str) -> bool:
    import zarr

    return key in zarr.open_group(str(store), mode="r").attrs


# --- fm2s report ---------------------------------------------------------------------------------

def cmd_report(args) -> int:
    from .inputs import stack_name
    from .report import write_run_report

    names = args.names or [stack_name(store) for store in args.stores]
    if len(names) != len(args.stores) or (args.sources and len(args.sources) != len(names)):
        raise UsageError("give one --names and one --sources entry per store")
    stores = dict(zip(names, args.stores, strict=True))
    if len(stores) < len(args.stores):
        raise UsageError("two stores have the same name; give them different names")
    sources = dict(zip(names, args.sources, strict=True)) if args.sources else None
    write_run_report(args.output, stores, sources=sources, series=args.series,
                     pages_as=args.pages_as, noise_planes=args.noise_planes, zoom=args.zoom,
                     job_benchmarks=args.benchmarks_json)
    log.info("wrote %s", args.output)
    return 0


# --- fm2s synth, fm2s denoise-chunk (used by the Snakemake workflow) ----------------------------

def cmd_synth(args) -> int:
    from .synthetic import write_synthetic_stack

    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output}: output exists (use --overwrite to replace it)")
    write_synthetic_stack(args.output, t=args.t, c=args.c, z=args.z, size=args.size,
                          seed=args.seed, dtype=args.dtype, overwrite=args.overwrite)
    log.info("wrote %s: %d x %d x %d planes of %d x %d %s", args.output, args.t, args.c, args.z,
             args.size, args.size, args.dtype)
    return 0


def _workflow_settings(args) -> Settings:
    try:
        return Settings.from_json(args.settings_json)
    except ValueError as error:
        raise UsageError(f"--settings-json: {error}") from error


def cmd_train_groups(args) -> int:
    from .devices import job_device
    from .jobs import train_groups

    device = job_device(args.device, gpus=args.gpus)
    train_groups(args.input, args.output, settings=_workflow_settings(args), groups=args.groups,
                seed=args.seed, series=args.series, pages_as=args.pages_as,
                data_range=args.data_range, device=device, threads=args.threads)
    log.info("wrote %s", args.output)
    return 0


def cmd_denoise_chunk(args) -> int:
    from .devices import job_device
    from .jobs import denoise_chunk

    start, _, stop = args.planes.partition(":")
    try:
        start, stop = (0, None) if args.planes == "all" else (int(start), int(stop))
    except ValueError:
        raise UsageError(f"--planes {args.planes!r}: expected START:STOP or all") from None
    device = job_device(args.device, gpus=args.gpus)
    denoise_chunk(args.input, args.output, settings=_workflow_settings(args), models=args.models,
                  start=start, stop=stop, seed=args.seed, series=args.series,
                  pages_as=args.pages_as, data_range=args.data_range, device=device,
                  threads=args.threads)
    log.info("wrote %s", args.output)
    return 0


def cmd_assemble(args) -> int:
    from .jobs import assemble_chunks

    assemble_chunks(args.input, args.chunks, args.output, settings=_workflow_settings(args),
                    seed=args.seed, series=args.series, pages_as=args.pages_as,
                    data_range=args.data_range, levels=args.levels,
                    ngff_version=args.ngff_version, tile=args.tile, workflow=args.workflow_json)
    log.info("wrote %s", args.output)
    return 0


def cmd_reformat(args) -> int:
    from .jobs import reformat_store

    rewritten = reformat_store(args.store, levels=args.levels, ngff_version=args.ngff_version,
                               tile=args.tile, workflow=args.workflow_json)
    log.info("%s: %s", args.store, "rewritten" if rewritten else "already so, left as it is")
    return 0


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    """Options of the workflow's job verbs that say what a stack's result was made with."""
    p.add_argument("--settings-json", required=True, metavar="JSON",
                   help="complete settings as JSON text (Settings.to_json())")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--series", type=int, default=0, help="series of a multi-series file")
    p.add_argument("--pages-as", choices=("z", "t"), default="z",
                   help="axis of the pages of a plain multi-page TIFF (default z)")
    p.add_argument("--data-range", type=float, default=None, help="intensity that maps to 1.0")


def _add_store_options(p: argparse.ArgumentParser) -> None:
    """Output options of the workflow's store verbs (assemble, reformat)."""
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    p.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                   help="OME-Zarr version to write (default 0.4)")
    p.add_argument("--tile", type=int, default=2048, help="largest chunk side (default 2048)")
    p.add_argument("--workflow-json", type=json.loads, default=None, metavar="JSON",
                   help="what the workflow records in the provenance (its config)")


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the workflow's job verbs that denoise (train-groups, denoise-chunk)."""
    _add_stack_options(p)
    p.add_argument("--device", default="auto", help="auto (default: CUDA only when the job was "
                   "given a GPU, see fm2s.devices.job_device), cpu, cuda or cuda:N")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the job was given (its gpu "
                   "resource; 0: CPU only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


# --- entry point --------------------------------------------------------------------------------

def _add_output_options(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log every plane, and training progress every 10%% of its steps")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress bars or logs, only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm2s", description="Zero-shot denoising of fluorescence microscopy with FM2S.")
    parser.add_argument("--version", action="version", version=f"fm2s {__version__}")
    _add_output_options(parser, default=False)
    # -q and -v after the verb too (fm2s denoise IN OUT -q); given there, they win.
    common = argparse.ArgumentParser(add_help=False)
    _add_output_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_verb(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add_verb("denoise", help="denoise a plane, a TIFF stack or an OME stack",
                       description="Denoise IN into OUT. PNG/TIFF planes and simple TIFF stacks "
                       "(every plane denoised) give the same format back, with the input's dtype "
                       "and shape; OME-TIFF, ImageJ, OME-Zarr or a folder of TIFFs as IN, or an "
                       "OUT ending in .ome.zarr, give an OME-Zarr store with provenance.")
    p.add_argument("input", type=Path, help="input image, stack, OME-Zarr store or folder")
    p.add_argument("output", type=Path, help="output file (.png/.tif/.tiff) or store (.ome.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--save-settings", type=Path, metavar="JSON",
                   help="also write the effective settings as JSON")
    p.add_argument("--model", type=Path, metavar="MODEL", help="apply the networks of a model "
                   "file (fm2s train) instead of training; settings, seed and data range are "
                   "the model's (any given must match)")
    stack = p.add_argument_group("stack input and OME-Zarr output")
    stack.add_argument("--series", type=int, default=0, help="series of a multi-series file")
    stack.add_argument("--pages-as", choices=("z", "t"), default="z",
                       help="axis of the pages of a plain multi-page TIFF (default z)")
    stack.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    stack.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                       help="OME-Zarr version to write (default 0.4, read by most viewers)")
    _add_settings_options(p)
    p.set_defaults(func=cmd_denoise)

    p = add_verb("train", help="train the networks of a stack into a model file",
                       description="Train the networks of STACK (one per group of similar "
                       "planes of a channel, or per plane) and write them, with their settings, "
                       "seeds, digests and the planes they were trained on, to MODEL; apply "
                       "them with fm2s denoise STACK OUT --model MODEL.")
    p.add_argument("input", type=Path, metavar="STACK", help="input image, stack, OME-Zarr "
                   "store or folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL",
                   help="model file to write (.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.add_argument("--series", type=int, default=0, help="series of a multi-series file")
    p.add_argument("--pages-as", choices=("z", "t"), default="z",
                   help="axis of the pages of a plain multi-page TIFF (default z)")
    _add_settings_options(p)
    p.set_defaults(func=cmd_train)

    p = add_verb("demo", help="denoise a synthetic plane and report PSNR",
                       description="Make a synthetic fluorescence-like plane with known "
                       "Poisson-Gaussian noise, denoise it and print PSNR before and after.")
    p.add_argument("output_dir", type=Path, nargs="?", default=Path("fm2s-demo"),
                   help="folder for noisy.png, denoised.png, ground_truth.png (default fm2s-demo)")
    p.add_argument("--size", type=int, default=256, help="plane side in pixels (default 256)")
    _add_settings_options(p)
    p.set_defaults(func=cmd_demo)

    p = add_verb("eval", help="score denoising against ground truth",
                       description="Denoise every image in NOISY_DIR that has a same-named image "
                       "in GT_DIR; print PSNR and SSIM (skimage.metrics; data range 255 for "
                       "8-bit) per image and per name prefix (e.g. Confocal), and seconds.")
    p.add_argument("noisy_dir", type=Path)
    p.add_argument("truth_dir", type=Path, metavar="gt_dir")
    p.add_argument("--csv", type=Path, help="write the per-image table as CSV")
    p.add_argument("--markdown", type=Path, help="write both tables as Markdown")
    p.add_argument("--html", type=Path, metavar="PAGE", help="write a self-contained HTML page: "
                   "both tables and noisy / denoised / ground-truth crops of every image")
    p.add_argument("--save-dir", type=Path, help="also save the denoised images here")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (by name)")
    _add_settings_options(p, preset_help="a preset name, or by-name (default): the preset of "
                          "the microscope named by the file's prefix (Confocal_, TwoPhoton_, "
                          "WideField_)")
    p.set_defaults(func=cmd_eval, preset="by-name")

    p = add_verb("info", help="print the provenance of an fm2s OME-Zarr store, or what "
                       "fm2s reads from any input (format, axes, channels, pixel sizes)")
    p.add_argument("store", type=Path, metavar="PATH")
    p.add_argument("--series", type=int, default=0, help="series to describe (default 0)")
    p.add_argument("--json", action="store_true", help="print it as one JSON object instead "
                   "(schema: fm2s.cli.INFO_JSON_SCHEMA): fm2s_version, path, series, input "
                   "(what fm2s reads) and provenance (null for a store not written by fm2s)")
    p.set_defaults(func=cmd_info)

    p = add_verb("report", help="write the QC page of denoised OME-Zarr stores",
                       description="Write one self-contained HTML page: for each STORE (written "
                       "by fm2s, with provenance) and the input recorded in it, raw and denoised "
                       "images, an intensity profile, the noise per plane before and after, the "
                       "seconds per plane, the settings and provenance (fm2s.report).")
    p.add_argument("stores", type=Path, nargs="+", metavar="STORE")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PAGE",
                   help="the HTML file to write")
    p.add_argument("--series", type=int, default=0, help="series of the inputs (default 0)")
    p.add_argument("--pages-as", choices=("z", "t"), default="z",
                   help="axis of the pages of plain multi-page TIFF inputs (default z)")
    p.add_argument("--noise-planes", type=int, default=48, help="planes per stack whose noise "
                   "is estimated, at most (default 48)")
    p.add_argument("--zoom", type=int, default=64, help="side of the zoomed crop (default 64)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="one name per store (default: "
                   "the store's file name without its suffixes)")
    p.add_argument("--sources", nargs="+", type=Path, metavar="INPUT", help="one input per "
                   "store (default: the input its provenance records)")
    p.add_argument("--benchmarks-json", type=json.loads, default=None, metavar="JSON",
                   help="per store name, the Snakemake benchmark files of its jobs (the page "
                   "adds their times)")
    p.set_defaults(func=cmd_report)

    p = add_verb("synth", help="write a synthetic noisy time-lapse z-stack (OME-TIFF)",
                       description="Write a deterministic fluorescence-like (t, c, z, y, x) stack "
                       "with Poisson-Gaussian noise as an OME-TIFF: the workflow's demo input.")
    p.add_argument("output", type=Path, help="output file, e.g. demo.ome.tif")
    for axis, default in (("t", 3), ("c", 2), ("z", 4)):
        p.add_argument(f"--{axis}", type=int, default=default,
                       help=f"{axis} size (default {default})")
    p.add_argument("--size", type=int, default=128, help="plane side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="structure and noise seed (default 0)")
    p.add_argument("--dtype", choices=("uint8", "uint16"), default="uint16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_synth)

    p = add_verb("train-groups", help="train some groups' networks (workflow job)",
                       description="Train the networks of groups GROUP... of a stack (fm2s."
                       "engine.plan_groups) into one model file for the Snakemake workflow.")
    p.add_argument("input", type=Path, help="input stack (any format fm2s denoise reads)")
    p.add_argument("output", type=Path, help="model file to write (.npz)")
    p.add_argument("--groups", type=int, nargs="+", required=True, metavar="GROUP",
                   help="group indices")
    _add_job_options(p)
    p.set_defaults(func=cmd_train_groups)

    p = add_verb("denoise-chunk", help="denoise a range of a stack's planes (workflow job)",
                       description="Denoise planes START:STOP, in (t, c, z) order, of a stack into "
                       "one chunk file (.npz) for the Snakemake workflow, with the networks of "
                       "the model files (inference only); as fm2s denoise does.")
    p.add_argument("input", type=Path, help="input stack (any format fm2s denoise reads)")
    p.add_argument("output", type=Path, help="chunk file to write (.npz)")
    p.add_argument("--planes", default="all", help="plane range START:STOP, or all (default)")
    p.add_argument("--models", type=Path, nargs="+", required=True, metavar="MODEL",
                   help="model files of the groups of these planes (fm2s train-groups)")
    _add_job_options(p)
    p.set_defaults(func=cmd_denoise_chunk)

    p = add_verb("assemble", help="build a stack's OME-Zarr store from its chunks (workflow job)",
                       description="Build the OME-Zarr store of SOURCE from the chunk files of "
                       "fm2s denoise-chunk (lazily, with provenance); every plane must be in one "
                       "chunk, denoised with these settings, seed and data range.")
    p.add_argument("input", type=Path, metavar="SOURCE", help="the input stack")
    p.add_argument("output", type=Path, metavar="STORE", help="the store to write (.ome.zarr)")
    p.add_argument("--chunks", type=Path, nargs="+", required=True, metavar="CHUNK",
                   help="chunk files (fm2s denoise-chunk)")
    _add_stack_options(p)
    _add_store_options(p)
    p.set_defaults(func=cmd_assemble)

    p = add_verb("reformat", help="rewrite a store with other output options (workflow job)",
                       description="Rewrite an fm2s store with these pyramid levels, NGFF "
                       "version and tile from its own full-resolution level (nothing is "
                       "denoised); a store that has them already is left as it is.")
    p.add_argument("store", type=Path, metavar="STORE")
    _add_store_options(p)
    p.set_defaults(func=cmd_reformat)
    return parser


# Verbs that train networks, and so report training progress (fm2s.train.training_progress).
TRAINING_VERBS = ("denoise", "train", "demo", "eval", "train-groups")
PROGRESS_LOG_SECONDS = 30.0  # without -v, a log line of training progress at most this often


def training_reporter(verbose: bool, terminal: bool | None = None):
    """A callback for :func:`fm2s.train.training_progress`: steps done, of all, and time left.

    On a terminal (stderr a TTY, or `terminal` true) a tqdm bar per training pass, which tqdm
    updates at most 10 times a second; elsewhere (a log file, a workflow job) log lines: with
    `verbose`, at every tenth of the steps (DEBUG), otherwise at most every
    ``PROGRESS_LOG_SECONDS`` (INFO), so that a long training is never silent.
    """
    if terminal is None:
        terminal = sys.stderr.isatty()
    state = {}

    def report(done: int, total: int, networks: int) -> None:
        now = time.perf_counter()
        what = f"training {networks} network{'s' if networks > 1 else ''}"
        if done == 0:
            if state.get("bar") is not None:
                state["bar"].close()
            state.update(started=now, logged=now, next=max(1, total // 10), bar=None)
            if terminal:
                from tqdm import tqdm

                state["bar"] = tqdm(total=total, desc=what, unit="step", leave=False)
            log.debug("%s: %d steps", what, total)
            return
        if state["bar"] is not None:
            state["bar"].update(done - state["bar"].n)
            if done == total:
                state["bar"].close()
                state["bar"] = None
            return
        elapsed = now - state["started"]
        due = (done >= state["next"] if verbose
               else now - state["logged"] >= PROGRESS_LOG_SECONDS) or done == total
        if not due:
            return
        state["logged"] = now
        state["next"] = done + max(1, total // 10)
        left = elapsed / done * (total - done)
        log.log(logging.DEBUG if verbose or done == total else logging.INFO,
                "%s: step %d of %d, %.1f s, about %.1f s left", what, done, total, elapsed, left)

    return report


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or scancel), raised where the process is, so that
    temporaries are removed as on Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _where(error: OSError, args) -> str:
    """The file an OSError is about: the verb's output when the error names none or names a
    file inside the output's hidden temporary (a path the user never gave)."""
    output = getattr(args, "output", None) or getattr(args, "store", None)
    name = error.filename
    if name is None or (output is not None and "/." in f"/{name}" and ".tmp-" in str(name)):
        return str(output)
    return str(name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if args.quiet or args.command not in TRAINING_VERBS:
            return args.func(args)
        from .train import training_progress

        with training_progress(training_reporter(args.verbose)):
            return args.func(args)
    except (UsageError, FileNotFoundError, ValueError) as error:
        # ValueError: ImageFileError, StackError, OutputError and other input errors
        print(f"fm2s: error: {error}", file=sys.stderr)
    except BrokenPipeError:  # e.g. fm2s info STORE | head
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except OSError as error:  # a full disk, a folder made read-only while running
        print(f"fm2s: error: {_where(error, args)}: {error.strerror or error}", file=sys.stderr)
    except Terminated:
        print("fm2s: stopped by SIGTERM; no partial output was left", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("fm2s: interrupted; no partial output was left", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
