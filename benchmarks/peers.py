"""fm2s against the denoisers a user would pick instead, on the FMD test_mix images.

Methods, each image scored against its 50-capture ground truth with skimage's PSNR (data
range 255) and SSIM, as in the FM2S paper:

==========  ===================================================================================
noisy       the input itself
median      3 x 3 median filter (``scipy.ndimage.median_filter``, reflect borders)
bm3d        BM3D (``bm3d`` package, default profile) on the generalized Anscombe transform of
            the image (Makitalo & Foi 2013, closed-form unbiased inverse), with the
            Poisson-Gaussian noise fitted blindly on the image itself by fm2s's estimator
            (``fm2s.estimate.estimate_noise``: gain, read variance, the width of a Gaussian
            spatial correlation and the correlation along rows, see docs/noise-estimation.md),
            BM3D being given the PSD of that correlation
bm3d-white  the same BM3D told white noise (its PSD flat: the stabilised noise's unit variance
            only), the variant of the usual BM3D + VST recipes
nlm         non-local means (``skimage.restoration.denoise_nl_means``, fast mode, 5 x 5 patches,
            search distance 6, h = 0.8 sigma: the parameters of skimage's own example) on the
            same transform (white noise of unit variance assumed)
n2v2        Noise2Void 2 from CAREamics 0.3.5 at its documented defaults
            (``create_n2v_config(..., patch_size=[64, 64], batch_size=32, use_n2v2=True)``:
            30 epochs, flips and rotations, 8 validation patches), trained on the image itself
            and predicted on it, on the CPU
fast        ``fm2s.denoise(image, preset=<microscope>, recipe="fast", seed=0)``
auto        the same with ``preset="auto"`` (noise estimated from the image; no microscope given)
auto-sure   ``auto`` with ``blend="sure"``: network and input alone, ``auto`` before version
            0.5.0 (whose SURE blend also weighs non-local means on the same transform,
            ``fm2s.classical.vst_nlm``, with fm2s's own noise model of the image)
auto-nlm    ``auto`` with ``blend="sure-nlm"``, ``sure_tile=0``: ``auto`` of version 0.5.0
            (since 0.6.0 an empirical Wiener filter, ``fm2s.classical.vst_wiener``, refines
            that blend on white-noise planes)
auto-plane  ``auto`` with ``sure_tile=0``, one set of blend weights per plane: ``auto`` of
            version 0.6.0 (since 0.7.0 SURE weighs the blend per 32-pixel tile on white-noise
            planes)
v2          the same with ``recipe="v2"`` (the reference code's schedule)
==========  ===================================================================================

The microscope (and so the fm2s preset) comes from the file-name prefix: Confocal_,
TwoPhoton_, WideField_. Levels: ``raw`` (one capture), ``avg2`` ... ``avg16`` (means of 2-16
captures: less noise).

Measurements. Every method runs in its own worker process (this script with ``--worker``),
with one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``). ``seconds`` is the
wall time of denoising one plane (for bm3d and nlm with the noise fit and the transforms;
for n2v2 training plus prediction), measured inside the worker. ``peak_rss_mb`` is the
worker's peak resident memory after that plane (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``): it includes the interpreter and the method's libraries (torch, about 300 MB,
for fast, v2 and n2v2, and also for nlm and bm3d, whose noise fit imports fm2s). ``load`` is
the 1-minute load average when the plane finished: on a shared machine times are inflated,
and the table says so.

Run (resumable: rows are appended to the CSV as they finish and rows already there are
skipped; images are taken one per configuration in turn, so a partial run covers every
microscope at every level)::

    pip install -e '.[bench]'            # bm3d, in the main environment
    nice -n 10 python benchmarks/peers.py                     # all methods, the subsets below
    python benchmarks/peers.py --summary                      # only print the table

Subsets (``--subset METHOD=LEVELS:N``): the slow methods run on N images per level, taken
one per configuration in turn (the 5 configurations: Confocal_BPAE_B, Confocal_MICE,
TwoPhoton_BPAE_G, TwoPhoton_MICE, WideField_BPAE_B). Defaults: auto-sure and n2v2 on 5
images per level (one per configuration), v2 (about 14 minutes per plane) on 1 raw image
(Confocal_BPAE_B_1); every other method, bm3d and bm3d-white (about 8-13 s per plane here)
and auto included, on all 20 images of every level. The table gives the number of images of
every cell.

CAREamics has its own environment, ``.venv-careamics`` (``--careamics-python``): careamics
0.3.5 pins ``torchvision<=0.26``, which wants torch 2.11, and PyPI's torchvision is a CUDA
build. Install it with careamics itself without dependencies, beside its other dependencies
and the CPU torch of the main environment::

    python3 -m venv .venv-careamics
    .venv-careamics/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    # (here: the local wheel /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl)
    .venv-careamics/bin/pip install --no-deps careamics==0.3.5
    .venv-careamics/bin/pip install "bioimageio-core>=0.9,<=0.11" \\
        "lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3" \\
        matplotlib==3.11.2 "microssim<=0.0.5" numpy==2.4.6 pillow==13.0.0 "psutil<=7.2.2" \\
        "pydantic>=2.11,<=2.14.1" "pyyaml<=6.0.3" scikit-image==0.26.0 tifffile==2026.3.3 \\
        "torchmetrics<1.9" "zarr>=3,<4"
    .venv-careamics/bin/pip install --no-deps torchvision==0.26.0

careamics imports torchvision at import time (for its LVAE models and BioImage Model Zoo
export, not used here); PyPI's torchvision 0.26.0 is built for CUDA and torch 2.11, so its C++
ops do not load (harmless: N2V never calls them), and :func:`_n2v2` defines the one op schema
its import needs. Training and prediction run on the CPU with torch 2.13.0.

Rows of ``benchmarks/results/quality-raw.csv`` (``benchmarks/quality.py``, 2 threads, no
memory measured) are not mixed in: they were measured another way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from resumable import appending, done_rows

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fmd" / "test_mix"
LEVELS = ("raw", "avg2", "avg4", "avg8", "avg16")
METHODS = ("noisy", "median", "nlm", "bm3d", "bm3d-white", "fast", "auto", "auto-plane",
           "auto-nlm", "auto-sure", "n2v2", "v2")
# Cheap methods first, so that a partial round still covers them; BM3D (8-13 s per
# plane here) last.
RUN_ORDER = ("noisy", "median", "nlm", "fast", "auto", "auto-plane", "auto-nlm", "auto-sure",
             "n2v2", "v2", "bm3d", "bm3d-white")
#: Default subsets: method -> (levels, images per level, taken in interleaved order).
SUBSETS = {"auto-sure": (LEVELS, 5), "n2v2": (LEVELS, 5), "v2": (("raw",), 1)}
PRESET = {"Confocal": "confocal", "TwoPhoton": "twophoton", "WideField": "widefield"}
FIELDS = ["level", "image", "group", "method", "psnr", "ssim", "seconds", "peak_rss_mb",
          "load", "note"]  # fmt: skip
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# -- methods (in the worker) ------------------------------------------------------------------


def _vst(denoise_gaussian):
    """A denoiser of unit-variance Gaussian noise (given the noise's correlation width) turned
    into a Poisson-Gaussian one through the generalized Anscombe transform, with the noise
    fitted blindly on the image by :func:`fm2s.estimate.estimate_noise`."""

    def run(noisy: np.ndarray, group: str) -> np.ndarray:
        # The transform and its closed-form unbiased inverse of the sure-nlm blend.
        from fm2s.classical import generalized_anscombe, inverse_generalized_anscombe
        from fm2s.estimate import estimate_noise

        noise = estimate_noise(noisy)
        a, b = max(noise.gain_dn, 1e-3), noise.read_var_dn  # a = 0: Gaussian noise only
        stabilised = generalized_anscombe(noisy.astype(np.float64), a, b)
        return inverse_generalized_anscombe(denoise_gaussian(stabilised, noise), a, b)

    return run


def correlated_psd(shape: tuple[int, int], noise) -> np.ndarray | float:
    """BM3D's noise PSD (its convention: ``sigma**2 * M * N`` for white noise) of unit-variance
    noise with the correlation of the estimate `noise` (1.0 for white noise)."""
    from fm2s.estimate import noise_kernel

    if noise.corr <= 0 and noise.line_corr <= 0:
        return 1.0
    kernel = noise_kernel(noise.corr, noise.line_corr)
    return np.abs(np.fft.fft2(kernel, s=shape)) ** 2 * shape[0] * shape[1]


def _bm3d(d: np.ndarray, noise) -> np.ndarray:
    import bm3d

    if not hasattr(np, "trapz"):  # bm4d 4.2.5, the latest, reads coloured PSDs with it
        np.trapz = np.trapezoid  # noqa: NPY201  (gone in NumPy 2.4; the same function)
    return bm3d.bm3d(d, sigma_psd=correlated_psd(d.shape, noise))


def _bm3d_white(d: np.ndarray, noise) -> np.ndarray:
    import bm3d

    return bm3d.bm3d(d, sigma_psd=1.0)


def _nlm(d: np.ndarray, noise) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    from fm2s.classical import NLM_H, NLM_PATCH_DISTANCE, NLM_PATCH_SIZE

    # NLM has no model of correlated noise: the unit variance is all it is told.
    return denoise_nl_means(d, h=NLM_H, sigma=1.0, fast_mode=True, patch_size=NLM_PATCH_SIZE,
                            patch_distance=NLM_PATCH_DISTANCE)


def _median(noisy: np.ndarray, group: str) -> np.ndarray:
    from scipy import ndimage

    return ndimage.median_filter(noisy, size=3, mode="reflect")


def _fm2s(recipe: str, preset: str | None = None, **overrides):
    """fm2s with the microscope's preset, or with `preset` (e.g. ``"auto"``) for every image."""
    def run(noisy: np.ndarray, group: str) -> np.ndarray:
        from fm2s import denoise

        return denoise(noisy, preset=preset or PRESET[group], recipe=recipe, seed=0,
                       device="cpu", threads=1, **overrides)

    return run


def _n2v2(noisy: np.ndarray, group: str) -> np.ndarray:
    import tempfile

    import torch

    if "torchvision" not in sys.modules:
        # PyPI's torchvision (a CUDA build for torch 2.11) cannot load its C++ ops with this
        # torch, yet registers a fake kernel for torchvision::nms at import: give the op a
        # schema so that the import succeeds (careamics imports torchvision at import time;
        # N2V never calls its ops).
        _library = torch.library.Library("torchvision", "DEF")
        _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(_library)
    from careamics import CAREamist
    from careamics.config.factories import create_n2v_config

    torch.set_num_threads(1)
    config = create_n2v_config(experiment_name="peers", data_type="array", axes="YX",
                               patch_size=[64, 64], batch_size=32, use_n2v2=True)
    image = noisy.astype(np.float32)
    with tempfile.TemporaryDirectory() as work:
        careamist = CAREamist(config, work_dir=work, enable_progress_bar=False)
        careamist.train(train_data=image)
        predictions, _ = careamist.predict(image)
    return np.squeeze(np.asarray(predictions[0], dtype=np.float64))


_KEEP: list = []  # torch.library.Library objects must outlive the import


RUNNERS = {
    "noisy": lambda noisy, group: noisy,
    "median": _median,
    "bm3d": _vst(_bm3d),
    "bm3d-white": _vst(_bm3d_white),
    "nlm": _vst(_nlm),
    "fast": _fm2s("fast"),
    "auto": _fm2s("fast", preset="auto"),
    "auto-plane": _fm2s("fast", preset="auto", sure_tile=0),
    "auto-nlm": _fm2s("fast", preset="auto", blend="sure-nlm", sure_tile=0),
    "auto-sure": _fm2s("fast", preset="auto", blend="sure"),
    "v2": _fm2s("v2"),
    "n2v2": _n2v2,
}


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def score(truth: np.ndarray, result: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM against the ground truth, data range 255, on the result rounded and
    clipped to 8 bits (what a user saves)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    result = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return (peak_signal_noise_ratio(truth, result, data_range=255),
            structural_similarity(truth, result, data_range=255))


def worker(method: str, jobs: list[tuple[str, str]], data: Path) -> None:
    """Denoise ``(level, image)`` jobs with one method; print one JSON row per image."""
    # noisy and median never import torch
    if method in ("fast", "auto", "auto-plane", "auto-nlm", "auto-sure", "v2", "n2v2"):
        import torch

        torch.set_num_threads(1)
    for level, name in jobs:
        noisy, truth = read_png(data / level / name), read_png(data / "gt" / name)
        group = name.split("_")[0]
        start = time.perf_counter()
        result = RUNNERS[method](noisy, group)
        seconds = time.perf_counter() - start
        psnr, ssim = score(truth, result)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        row = {"level": level, "image": name, "group": group, "method": method,
               "psnr": round(psnr, 4), "ssim": round(ssim, 5), "seconds": round(seconds, 3),
               "peak_rss_mb": round(peak, 1), "load": round(os.getloadavg()[0], 2),
               "note": ""}  # fmt: skip
        print("ROW " + json.dumps(row), flush=True)


# -- the driver ---------------------------------------------------------------------------------


def interleaved(names: list[str]) -> list[str]:
    """Capture 1 of every configuration (name without the capture number), then capture 2 of
    each, and so on, as in benchmarks/quality.py."""
    by_config: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        by_config[name.rsplit("_", 1)[0]].append(name)
    return [n for batch in zip(*by_config.values(), strict=False) for n in batch]


def plan(args, done: set) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(method, jobs)`` batches, a round at a time: round r holds capture r of every
    configuration for every method and level, so a partial run covers them all."""
    order = {lv: interleaved([p.name for p in (args.data / lv).glob("*.png")])
             for lv in LEVELS}
    configs = len({n.rsplit("_", 1)[0] for n in order["raw"]})
    batches = []
    for r in range(max(len(v) for v in order.values()) // configs):
        for method in sorted(args.methods, key=RUN_ORDER.index):
            levels, count = args.subsets.get(method, (args.levels, None))
            jobs = [(level, name)
                    for level in levels if level in args.levels
                    for p, name in enumerate(order[level][r * configs:(r + 1) * configs],
                                             start=r * configs)
                    if (count is None or p < count) and (level, name, method) not in done]
            if jobs:
                batches.append((method, jobs))
    return batches


def run_batch(args, method: str, jobs, writer, handle) -> None:
    python = args.careamics_python if method == "n2v2" else sys.executable
    command = [str(python), __file__, "--worker", method, "--data", str(args.data),
               "--jobs", json.dumps(jobs)]  # fmt: skip
    env = {**os.environ, **SINGLE_THREAD, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        for line in process.stdout:
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                writer.writerow(row)
                handle.flush()
                print(f"{row['level']:>5} {row['method']:>6} {row['image']:<26} "
                      f"{row['psnr']:.2f} dB {row['ssim']:.3f} {row['seconds']:.1f} s "
                      f"{row['peak_rss_mb']:.0f} MB (load {row['load']})", flush=True)
    if process.returncode:
        print(f"worker {method} exited with {process.returncode}", file=sys.stderr)


def summary(path: Path) -> str:
    """The Markdown table: mean PSNR / SSIM per microscope, level and method; then median
    seconds per plane and peak memory per method."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    cells: dict[tuple, list] = defaultdict(list)
    for r in rows:
        cells[(r["level"], r["group"], r["method"])].append(r)
    groups = sorted({r["group"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["| level | method | " + " | ".join(groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for level in LEVELS:
        for method in methods:
            entries = []
            for group in groups:
                members = cells.get((level, group, method), [])
                if not members:
                    entries.append("")
                    continue
                psnr = np.mean([float(m["psnr"]) for m in members])
                ssim = np.mean([float(m["ssim"]) for m in members])
                entries.append(f"{psnr:.2f} / {ssim:.3f} ({len(members)})")
            if any(entries):
                lines.append(f"| {level} | {method} | " + " | ".join(entries) + " |")
    lines += ["", *paired(rows, methods)]
    lines += ["", "| method | planes timed | s per plane (median) | peak RSS (MB) | "
              "load average while timed |", "|---|---|---|---|---|"]
    for method in methods:
        members = [r for r in rows if r["method"] == method]
        seconds = [float(m["seconds"]) for m in members]
        loads = [float(m["load"]) for m in members]
        peak = max(float(m["peak_rss_mb"]) for m in members)
        lines.append(f"| {method} | {len(members)} | {np.median(seconds):.2f} | {peak:.0f} | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines)


def paired(rows: list[dict], methods: list[str]) -> list[str]:
    """Mean PSNR of every method on exactly the images of each method run on a subset, per
    level (all microscopes together): the fair comparison for the subsets."""
    score = {(r["level"], r["image"], r["method"]): float(r["psnr"]) for r in rows}
    counts = {m: sum(r["method"] == m for r in rows) for m in methods}
    lines = []
    for subset in (m for m in methods if counts[m] < max(counts.values())):
        lines += [f"PSNR on the images of {subset} only:", "",
                  "| level | images | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for level in LEVELS:
            images = [i for (lv, i, m) in score if lv == level and m == subset]
            if not images:
                continue
            cells = []
            for m in methods:
                values = [score.get((level, i, m)) for i in images]
                cells.append(f"{np.mean(values):.2f}" if None not in values else "")
            lines.append(f"| {level} | {len(images)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma list of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--levels", default=",".join(LEVELS), help="comma list (default: all)")
    parser.add_argument("--subset", action="append", default=[], metavar="METHOD=LEVELS:N",
                        help="run METHOD on N images per level (one per configuration in "
                        "turn) of the comma list LEVELS, e.g. v2=raw:5; N=all for every "
                        "image (default: " + ", ".join(
                            f"{m}={','.join(lv)}:{n}" for m, (lv, n) in SUBSETS.items()) + ")")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks/results/peers.csv")
    parser.add_argument("--careamics-python", type=Path,
                        default=ROOT / ".venv-careamics/bin/python")
    parser.add_argument("--summary", action="store_true", help="only print the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, [tuple(j) for j in json.loads(args.jobs)], args.data)
        return
    for key in ("methods", "levels"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    subsets = dict(SUBSETS)
    for item in args.subset:
        method, _, rest = item.partition("=")
        levels, _, count = rest.partition(":")
        if method not in METHODS or not count:
            parser.error(f"--subset {item!r}: expected METHOD=LEVELS:N")
        subsets[method] = (levels.split(","), None if count == "all" else int(count))
    args.subsets = subsets
    unknown = sorted(set(args.methods) - set(METHODS)) + sorted(set(args.levels) - set(LEVELS))
    if unknown:
        parser.error(f"unknown methods or levels: {', '.join(unknown)}")
    done = done_rows(args.csv)
    if not args.summary:
        with appending(args.csv, FIELDS) as (writer, handle):
            for method, jobs in plan(args, done):
                run_batch(args, method, jobs, writer, handle)
    print(summary(args.csv))


if __name__ == "__main__":
    main()
