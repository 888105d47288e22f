"""The ``fm2s`` command line: denoise, demo, eval, info, report; synth and denoise-chunk
(workflow).

Errors in the input (missing or unreadable files, bad arrays, unknown presets) end with a one-line
message naming the file and the problem, and exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__
from .denoise import iter_denoise_planes
from .planeio import IMAGE_SUFFIXES, read_image, write_image
from .settings import PRESETS, RECIPES, Settings, make_settings, parse_overrides

log = logging.getLogger("fm2s")

EXIT_BAD_INPUT = 2
MICROSCOPE_PREFIXES = {"confocal": "confocal", "twophoton": "twophoton", "widefield": "widefield"}


class UsageError(Exception):
    """A problem with the user's input; reported in one line with exit code 2."""


# --- settings from the command line -------------------------------------------------------------

def _add_settings_options(parser: argparse.ArgumentParser, *, preset_help: str | None = None):
    group = parser.add_argument_group("denoising settings")
    hand_set = ", ".join(p for p in PRESETS if p != "auto")
    group.add_argument("--preset", default="auto", help=preset_help or (
        f"noise synthesis: auto (default: estimated from each plane), or a microscope's "
        f"hand-set preset: {hand_set}"))
    group.add_argument("--recipe", default="fast", choices=sorted(RECIPES), help=(
        "network and training schedule: fast (default, seconds per plane), v2 or v1 "
        "(the published schedules, minutes per plane)"))
    group.add_argument("--seed", type=int, default=0, help="base seed (default 0); each plane's "
                       "seed derives from it and the plane's content")
    group.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help=(
        "override one setting, e.g. --set k_g=150 --set steps=200 (repeatable); "
        "see fm2s.settings.Settings for the keys"))
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


def _settings_from_args(args, preset: str | None = None) -> Settings:
    if args.settings is not None:
        if args.set:
            raise UsageError("--settings cannot be combined with --set")
        try:
            return Settings.from_json(args.settings.read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"{args.settings}: {error}") from error
    try:
        return make_settings(preset or args.preset, args.recipe, **parse_overrides(args.set))
    except ValueError as error:
        raise UsageError(str(error)) from error


# --- fm2s denoise -------------------------------------------------------------------------------

def _planes_of(image: np.ndarray, path: Path):
    """Split a PNG/TIFF array into 2D planes, and a function that puts results back."""
    if image.ndim == 2:
        return [image], lambda planes: planes[0]
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        # RGB(A) samples: one plane per channel.
        planes = [image[..., s] for s in range(image.shape[-1])]
        return planes, lambda out: np.stack(out, axis=-1)
    if image.ndim >= 3:
        lead = image.shape[:-2]
        flat = image.reshape(-1, *image.shape[-2:])
        return list(flat), lambda out: np.stack(out).reshape(*lead, *image.shape[-2:])
    raise UsageError(f"{path}: expected an image with at least 2 dimensions, got {image.shape}")


def cmd_denoise(args) -> int:
    src, dst = args.input, args.output
    if src.resolve() == dst.resolve():
        raise UsageError(f"{dst}: output would overwrite the input")
    if dst.exists() and not args.overwrite:
        raise UsageError(f"{dst}: output exists (use --overwrite to replace it)")
    settings = _settings_from_args(args)
    if args.save_settings:
        args.save_settings.write_text(settings.to_json() + "\n")
    if _is_stack_job(src, dst):
        return _denoise_stack(args, settings)
    image = read_image(src)
    planes, assemble = _planes_of(image, src)
    log.info("%s: %s %s, %d plane(s), preset %s, recipe %s", src, image.dtype, image.shape,
             len(planes), settings.preset, settings.recipe)
    results = []
    bar = tqdm(total=len(planes), desc=src.name, unit="plane", disable=args.quiet or None)
    try:
        for result in iter_denoise_planes(planes, settings, seed=args.seed, device=args.device,
                                          threads=args.threads, data_range=args.data_range):
            results.append(result.image)
            bar.update()
            log.debug("plane %d: %.2f s", len(results) - 1, result.seconds)
    except ValueError as error:
        raise UsageError(f"{src}: {error}") from error
    finally:
        bar.close()
    write_image(dst, assemble(results), overwrite=args.overwrite)
    log.info("wrote %s", dst)
    return 0


def _is_stack_job(src: Path, dst: Path) -> bool:
    """Stacks in OME/ImageJ formats or OME-Zarr output go through fm2s.pipeline."""
    names = (src.name.lower(), dst.name.lower())
    return (src.is_dir() or any(n.endswith((".zarr", ".ome.tif", ".ome.tiff")) for n in names))


def _denoise_stack(args, settings: Settings) -> int:
    from .pipeline import denoise_stack  # stack I/O pulls in zarr and dask

    if not args.output.name.lower().endswith(".zarr"):
        raise UsageError(f"{args.output}: stack output must be an OME-Zarr store (name.ome.zarr)")
    denoise_stack(args.input, args.output, settings=settings, seed=args.seed,
                  series=args.series, pages_as=args.pages_as, levels=args.levels,
                  ngff_version=args.ngff_version, device=args.device, threads=args.threads,
                  overwrite=args.overwrite, progress=not args.quiet,
                  data_range=args.data_range)
    return 0


# --- fm2s demo ----------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from .synthetic import clean_plane, noisy_plane

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    clean = clean_plane((args.size, args.size), seed=args.seed)
    truth = np.rint(clean * 255).astype(np.uint8)
    noisy = noisy_plane(clean, photons=20.0, read_noise=0.03, seed=args.seed + 1)
    write_image(out / "ground_truth.png", truth, overwrite=True)
    write_image(out / "noisy.png", noisy, overwrite=True)
    settings = _settings_from_args(args)
    start = time.perf_counter()
    result = next(iter_denoise_planes([noisy], settings, seed=args.seed, device=args.device,
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
        result = next(iter_denoise_planes([noisy], settings, seed=args.seed, device=args.device,
                                          threads=args.threads, data_range=args.data_range))
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
            f"base seed {args.seed}) and scored against {args.truth_dir}."))
    return 0


# --- fm2s info ----------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from ._provenance import format_provenance

    print(format_provenance(args.store))
    return 0


# --- fm2s report ---------------------------------------------------------------------------------

def cmd_report(args) -> int:
    from .chunks import stack_name
    from .report import write_run_report

    stores = {stack_name(store): store for store in args.stores}
    if len(stores) < len(args.stores):
        raise UsageError("two stores have the same name; give them different names")
    write_run_report(args.output, stores, series=args.series, pages_as=args.pages_as,
                     noise_planes=args.noise_planes, zoom=args.zoom)
    log.info("wrote %s", args.output)
    return 0


# --- fm2s synth, fm2s denoise-chunk (used by the Snakemake workflow) ----------------------------

def cmd_synth(args) -> int:
    from .chunks import write_synthetic_stack

    if args.output.exists() and not args.overwrite:
        raise UsageError(f"{args.output}: output exists (use --overwrite to replace it)")
    write_synthetic_stack(args.output, t=args.t, c=args.c, z=args.z, size=args.size,
                          seed=args.seed, dtype=args.dtype, overwrite=args.overwrite)
    log.info("wrote %s: %d x %d x %d planes of %d x %d %s", args.output, args.t, args.c, args.z,
             args.size, args.size, args.dtype)
    return 0


def cmd_denoise_chunk(args) -> int:
    from .chunks import denoise_chunk, job_device

    start, _, stop = args.planes.partition(":")
    try:
        start, stop = (0, None) if args.planes == "all" else (int(start), int(stop))
    except ValueError:
        raise UsageError(f"--planes {args.planes!r}: expected START:STOP or all") from None
    try:
        settings = Settings.from_json(args.settings_json)
    except ValueError as error:
        raise UsageError(f"--settings-json: {error}") from error
    device = job_device(args.device, gpus=args.gpus)
    denoise_chunk(args.input, args.output, settings=settings, start=start, stop=stop,
                  seed=args.seed, series=args.series, pages_as=args.pages_as,
                  data_range=args.data_range, device=device, threads=args.threads)
    log.info("wrote %s", args.output)
    return 0


# --- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fm2s", description="Zero-shot denoising of fluorescence microscopy with FM2S.")
    parser.add_argument("--version", action="version", version=f"fm2s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every plane")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("denoise", help="denoise a plane, a TIFF stack or an OME stack",
                       description="Denoise IN into OUT. PNG/TIFF planes and simple TIFF stacks "
                       "(every plane denoised) give the same format back, with the input's dtype "
                       "and shape; OME-TIFF, ImageJ, OME-Zarr or a folder of TIFFs as IN, or an "
                       "OUT ending in .ome.zarr, give an OME-Zarr store with provenance.")
    p.add_argument("input", type=Path, help="input image, stack, OME-Zarr store or folder")
    p.add_argument("output", type=Path, help="output file (.png/.tif/.tiff) or store (.ome.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--save-settings", type=Path, metavar="JSON",
                   help="also write the effective settings as JSON")
    stack = p.add_argument_group("stack input and OME-Zarr output")
    stack.add_argument("--series", type=int, default=0, help="series of a multi-series file")
    stack.add_argument("--pages-as", choices=("z", "t"), default="z",
                       help="axis of the pages of a plain multi-page TIFF (default z)")
    stack.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    stack.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.4",
                       help="OME-Zarr version to write (default 0.4, read by most viewers)")
    _add_settings_options(p)
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("demo", help="denoise a synthetic plane and report PSNR",
                       description="Make a synthetic fluorescence-like plane with known "
                       "Poisson-Gaussian noise, denoise it and print PSNR before and after.")
    p.add_argument("output_dir", type=Path, nargs="?", default=Path("fm2s-demo"),
                   help="folder for noisy.png, denoised.png, ground_truth.png (default fm2s-demo)")
    p.add_argument("--size", type=int, default=256, help="plane side in pixels (default 256)")
    _add_settings_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="score denoising against ground truth",
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

    p = sub.add_parser("info", help="print the provenance of an fm2s OME-Zarr store")
    p.add_argument("store", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", help="write the QC page of denoised OME-Zarr stores",
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
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("synth", help="write a synthetic noisy time-lapse z-stack (OME-TIFF)",
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

    p = sub.add_parser("denoise-chunk", help="denoise a range of a stack's planes (workflow job)",
                       description="Denoise planes START:STOP, in (t, c, z) order, of a stack into "
                       "one chunk file (.npz) for the Snakemake workflow; each plane's seed is "
                       "plane_seed(seed, (t, c, z)), as in fm2s denoise.")
    p.add_argument("input", type=Path, help="input stack (any format fm2s denoise reads)")
    p.add_argument("output", type=Path, help="chunk file to write (.npz)")
    p.add_argument("--planes", default="all", help="plane range START:STOP, or all (default)")
    p.add_argument("--settings-json", required=True, metavar="JSON",
                   help="complete settings as JSON text (Settings.to_json())")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--series", type=int, default=0, help="series of a multi-series file")
    p.add_argument("--pages-as", choices=("z", "t"), default="z",
                   help="axis of the pages of a plain multi-page TIFF (default z)")
    p.add_argument("--data-range", type=float, default=None, help="intensity that maps to 1.0")
    p.add_argument("--device", default="auto", help="auto (default: CUDA only when the job was "
                   "given a GPU, see fm2s.chunks.job_device), cpu, cuda or cuda:N")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the job was given (its gpu "
                   "resource; 0: CPU only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(func=cmd_denoise_chunk)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UsageError as error:
        print(f"fm2s: error: {error}", file=sys.stderr)
    except FileNotFoundError as error:
        print(f"fm2s: error: {error}", file=sys.stderr)
    except ValueError as error:  # ImageFileError, StackError and other input errors
        print(f"fm2s: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
