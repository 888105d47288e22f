"""``preset="auto"`` against the per-microscope presets on all five FMD noise levels.

Run by hand (about 10-20 s per image and method on 2 CPU cores):

    nice -n 10 python benchmarks/auto_levels.py --methods noisy,preset,auto --threads 1

For every image of ``test_mix/{raw,avg2,avg4,avg8,avg16}`` (ground truth in ``test_mix/gt``, same
file names) it scores, with skimage's PSNR (data range 255) and SSIM:

* ``noisy``: the noisy input itself;
* ``preset``: fm2s with its microscope's avg1 preset (``confocal``/``twophoton``/``widefield``,
  chosen by the file-name prefix), default ``fast`` recipe, seed 0;
* ``confocal``: fm2s with the ``confocal`` preset on every image, what a user who picks no
  preset got before version 0.3.0 (``fast`` recipe, seed 0);
* ``auto``: fm2s with ``preset="auto"``, default ``fast`` recipe, seed 0; it is told neither the
  microscope nor the level. Its noise estimate and chosen parameters go into the ``params``
  column (JSON).
* ``auto-sure``: ``auto`` with ``blend="sure"``, the blend of network and input alone (``auto``
  before version 0.5.0, whose blend also weighs non-local means: ``blend="sure-nlm"``).
* ``auto-nlm``: ``auto`` with ``blend="sure-nlm"`` and ``sure_tile=0``, ``auto`` of version
  0.5.0 (since 0.6.0 the blend is refined by an empirical Wiener filter on white-noise planes:
  ``sure-nlm-wiener``).
* ``auto-plane``: ``auto`` with ``sure_tile=0``, one set of blend weights per plane: ``auto`` of
  version 0.6.0 (since 0.7.0 the weights are chosen per 32-pixel tile on white-noise planes).
* ``auto-12bit``: the same on the image stored as a 12-bit camera stores into uint16 (x 16, no
  ``data_range``), the result divided by 16 and rounded back to 8 bits before scoring.

The ``params`` of ``auto`` rows hold the blend weights: ``blend`` of the network's output,
``blend_nlm`` of non-local means' and ``blend_guided_nlm`` of non-local means guided by the
network's output, and ``wiener``: whether the Wiener filter refined the blend.

Rows are appended to the CSV as they finish and rows already there are skipped, so an
interrupted run resumes (the pattern of ``benchmarks/quality.py``, whose helpers it reuses).
Images are taken one configuration at a time across all levels, so a partial run covers every
microscope and level. ``--summary`` only prints the Markdown tables (and writes ``--markdown``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DATA, PRESET, interleaved  # noqa: E402
from resumable import appending, done_rows  # noqa: E402

import fm2s  # noqa: E402
from fm2s.planeio import read_image  # noqa: E402

LEVELS = ("raw", "avg2", "avg4", "avg8", "avg16")
METHODS = ("noisy", "preset", "confocal", "auto", "auto-sure", "auto-nlm", "auto-plane",
           "auto-12bit")
#: The settings of each ``auto`` variant that differ from the default.
VARIANTS = {"auto-sure": {"blend": "sure"}, "auto-nlm": {"blend": "sure-nlm", "sure_tile": 0},
            "auto-plane": {"sure_tile": 0}}
FIELDS = ["level", "image", "group", "method", "psnr", "ssim", "seconds", "params"]
#: Mean PSNR of the hand-tuned "FM2S*" per level (arXiv 2412.10031), for reference in the table.
FM2S_STAR = {"raw": 33.28, "avg2": 34.60, "avg4": 36.57, "avg8": 38.24, "avg16": 40.75}


def run_method(method: str, noisy: np.ndarray, group: str, threads: int):
    """The method's output for one image, and a JSON-able dict of how it was made."""
    if method == "noisy":
        return noisy, {}
    if method == "preset":
        out = fm2s.denoise(noisy, preset=PRESET[group], seed=0, device="cpu", threads=threads)
        return out, {"preset": PRESET[group]}
    if method == "confocal":
        out = fm2s.denoise(noisy, preset="confocal", seed=0, device="cpu", threads=threads)
        return out, {"preset": "confocal"}
    if method in ("auto", "auto-12bit", *VARIANTS):
        stored = noisy if method != "auto-12bit" else noisy.astype(np.uint16) * 16
        result = fm2s.denoise_result(stored, preset="auto", seed=0, device="cpu",
                                     threads=threads, **VARIANTS.get(method, {}))
        info = result.info
        settings = info["settings"]
        params = {k: settings[k] for k in ("median_size", "channels", "k_g", "k_p", "lam_p")}
        params.update(blend=info.get("blend"), blend_nlm=info.get("blend_nlm"),
                      blend_guided_nlm=info.get("blend_guided_nlm"), wiener=info.get("wiener"),
                      sure_tile=info.get("sure_tile"),
                      estimate=info["estimate"])
        if method != "auto-12bit":
            return result.image, params
        return np.clip(np.rint(result.image / 16), 0, 255).astype(np.uint8), params
    msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
    raise ValueError(msg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="noisy,preset,auto",
                        help="comma list of: " + ", ".join(METHODS))
    parser.add_argument("--levels", default=",".join(LEVELS), help="comma list of levels")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/auto-levels.csv"))
    parser.add_argument("--markdown", type=Path,
                        default=Path("benchmarks/results/auto-levels.md"))
    parser.add_argument("--per-config", type=int, default=0,
                        help="only the first N captures of each configuration (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", action="store_true", help="only print the summary")
    args = parser.parse_args()
    methods = args.methods.split(",")
    levels = args.levels.split(",")

    if not args.summary:
        done = done_rows(args.csv)
        names = interleaved([p.name for p in (args.data / "gt").glob("*.png")])
        if args.per_config:
            names = [n for n in names if int(n.rsplit("_", 1)[1][:-4]) <= args.per_config]
        with appending(args.csv, FIELDS) as (writer, handle):
            for name in names:
                truth = read_image(args.data / "gt" / name)
                group = name.split("_")[0]
                for level in levels:
                    todo = [m for m in methods if (level, name, m) not in done]
                    if not todo:
                        continue
                    noisy = read_image(args.data / level / name)
                    for method in todo:
                        start = time.perf_counter()
                        result, params = run_method(method, noisy, group, args.threads)
                        seconds = time.perf_counter() - start
                        psnr = peak_signal_noise_ratio(truth, result, data_range=255)
                        ssim = structural_similarity(truth, result, data_range=255)
                        row = dict(level=level, image=name, group=group, method=method,
                                   psnr=round(float(psnr), 4), ssim=round(float(ssim), 5),
                                   seconds=round(seconds, 2),
                                   params=json.dumps(params, sort_keys=True))
                        writer.writerow(row)
                        handle.flush()
                        print({k: row[k] for k in FIELDS[:-1]}, flush=True)
    text = summary(args.csv)
    print(text)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)


def summary(path: Path) -> str:
    """Markdown: mean PSNR per level (all images, and per microscope type) and method."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    psnr = defaultdict(dict)  # (level, method) -> image -> PSNR
    ssim = defaultdict(dict)
    groups = {}
    for r in rows:
        psnr[(r["level"], r["method"])][r["image"]] = float(r["psnr"])
        ssim[(r["level"], r["method"])][r["image"]] = float(r["ssim"])
        groups[r["image"]] = r["group"]
    methods = [m for m in METHODS if any(k[1] == m for k in psnr)]
    levels = [lv for lv in LEVELS if any(k[0] == lv for k in psnr)]
    lines = ["Mean PSNR (dB, data range 255) over the images scored by every method at that "
             "level; fm2s `fast` recipe, seed 0. FM2S* is the paper's hand-tuned mean over its "
             "48 test_mix images (not these 20).", "",
             "| level | images | " + " | ".join(methods) + " | FM2S* (paper) |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    common_by_level = {}
    for level in levels:
        sets = [set(psnr[(level, m)]) for m in methods if (level, m) in psnr]
        common = sorted(set.intersection(*sets)) if sets else []
        common_by_level[level] = common
        cells = [f"{np.mean([psnr[(level, m)][i] for i in common]):.2f}"
                 if common and psnr[(level, m)] else "-" for m in methods]
        lines.append(f"| {level} | {len(common)} | " + " | ".join(cells)
                     + f" | {FM2S_STAR[level]:.2f} |")
    lines += ["", "Per microscope type (mean PSNR in dB / mean SSIM):", "",
              "| level | microscope | images | " + " | ".join(methods) + " |",
              "|---|---|---|" + "---|" * len(methods)]
    for level in levels:
        for group in sorted(set(groups.values())):
            members = [i for i in common_by_level[level] if groups[i] == group]
            if not members:
                continue
            cells = [f"{np.mean([psnr[(level, m)][i] for i in members]):.2f} / "
                     f"{np.mean([ssim[(level, m)][i] for i in members]):.4f}"
                     if psnr[(level, m)] else "-" for m in methods]
            lines.append(f"| {level} | {group} | {len(members)} | " + " | ".join(cells) + " |")
    for method in [m for m in ("auto", "auto-plane", "auto-nlm", "auto-sure")
                   if {"noisy", m} <= set(methods)]:
        lines += ["", f"Per image, `{method}` minus the noisy input (dB):", "",
                  "| level | images below noisy | smallest gain | on |", "|---|---|---|---|"]
        for level in levels:
            gains = {i: psnr[(level, method)][i] - psnr[(level, "noisy")][i]
                     for i in common_by_level[level]}
            if gains:
                worst = min(gains, key=gains.get)
                below = sum(g < 0 for g in gains.values())
                lines.append(f"| {level} | {below} | {gains[worst]:+.2f} | {worst} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
