"""Quality benchmark on the FMD test_mix images: fm2s recipes against a 3x3 median filter.

Run by hand (minutes per image for the faithful recipes):

    python benchmarks/quality.py --methods median,fast,v2 --level raw \
        --csv benchmarks/out/quality.csv

Each image is denoised with its microscope's preset (by file-name prefix) and scored against the
ground truth with skimage's PSNR (data range 255) and SSIM, the FM2S paper's convention. Rows are
appended to the CSV as they finish and rows already there are skipped, so an interrupted run
resumes. Images are taken one per configuration in turn, so a partial run covers every
microscope. ``--summary`` prints the mean per microscope type and method as Markdown.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from resumable import appending, done_rows
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fm2s import denoise
from fm2s.planeio import read_image
from fm2s.settings import parse_overrides

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd" / "test_mix"
PRESET = {"Confocal": "confocal", "TwoPhoton": "twophoton", "WideField": "widefield"}
FIELDS = ["level", "image", "group", "method", "psnr", "ssim", "seconds"]


def interleaved(names: list[str]) -> list[str]:
    """Capture 1 of every configuration, then capture 2 of each, and so on."""
    by_config = defaultdict(list)
    for name in sorted(names):
        by_config[name.rsplit("_", 1)[0]].append(name)
    return [n for batch in zip(*by_config.values(), strict=False) for n in batch]


def run_method(method: str, noisy: np.ndarray, preset: str, threads: int,
               overrides: dict) -> np.ndarray:
    if method == "median":
        return ndimage.median_filter(noisy, size=3, mode="reflect")
    if method == "noisy":
        return noisy
    recipe = method.split("+")[0]
    return denoise(noisy, preset=preset, recipe=recipe, seed=0, device="cpu", threads=threads,
                   **overrides)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="median,fast", help="comma list: noisy, median, "
                        "fast, v2, v1")
    parser.add_argument("--level", default="raw", help="raw, avg2, avg4, avg8 or avg16")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/out/quality.csv"))
    parser.add_argument("--limit", type=int, default=0, help="first N images (interleaved)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summary", action="store_true", help="only print the summary")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="setting override for the fm2s methods, e.g. precision='\"bfloat16\"'"
                        "; name the method RECIPE+TAG (e.g. v2+bf16) to keep its rows apart")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)

    done = done_rows(args.csv)
    if not args.summary:
        names = interleaved([p.name for p in (args.data / args.level).glob("*.png")])
        names = names[: args.limit] if args.limit else names
        with appending(args.csv, FIELDS) as (writer, handle):
            for name in names:
                noisy = read_image(args.data / args.level / name)
                truth = read_image(args.data / "gt" / name)
                group = name.split("_")[0]
                for method in args.methods.split(","):
                    if (args.level, name, method) in done:
                        continue
                    start = time.perf_counter()
                    result = run_method(method, noisy, PRESET[group], args.threads, overrides)
                    seconds = time.perf_counter() - start
                    psnr = peak_signal_noise_ratio(truth, result, data_range=255)
                    ssim = structural_similarity(truth, result, data_range=255)
                    row = dict(level=args.level, image=name, group=group, method=method,
                               psnr=round(psnr, 4), ssim=round(ssim, 5), seconds=round(seconds, 2))
                    writer.writerow(row)
                    handle.flush()
                    print(row, flush=True)
    print_summary(args.csv)


def print_summary(path: Path):
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    table = defaultdict(list)
    for r in rows:
        table[(r["level"], r["group"], r["method"])].append(r)
    print("| level | microscope | method | images | PSNR | SSIM | s/image |")
    print("|---|---|---|---|---|---|---|")
    for (level, group, method), members in sorted(table.items()):
        psnr, ssim, seconds = (np.mean([float(m[k]) for m in members])
                               for k in ("psnr", "ssim", "seconds"))
        print(f"| {level} | {group} | {method} | {len(members)} | {psnr:.2f} | {ssim:.3f} | "
              f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
