"""Shared training against a network per plane, on FMD stacks and on synthetic time-lapses.

Run by hand (2 CPU threads; rows are appended to the CSV and rows already there skipped, so an
interrupted run resumes):

    nice -n 10 python benchmarks/shared.py quality --threads 2
    python benchmarks/shared.py quality --summary
    python benchmarks/shared.py speed --sizes 128,512 --planes 1,4,16,64 --threads 2

``quality``: each FMD ``test_mix`` configuration's four fields of view (``_1`` to ``_4``) as one
4-plane z-stack (an OME-TIFF in a temporary folder), at the levels given, denoised through the
stack engine (:func:`fm2s.engine.denoise_stack_planes`) with each method, scored per plane
against the ground truth (PSNR, data range 255; SSIM). Methods are ``per-plane``
(``group_size=1``: the paper's network per plane, bitwise the pre-0.4 result) and
``shared-<samples>[-g<size>]`` (one network per group of up to ``<size>`` planes, default
the recipe's, ``group_samples=<samples>``), either with ``-sure`` appended for
``blend="sure"`` (the blend of network and input alone, before 0.5.0), ``-nlm`` for
``blend="sure-nlm"`` with one set of weights per plane (0.5.0's, without the Wiener
refinement) or ``-plane`` for ``sure_tile=0`` (0.6.0's: the weights per plane, not per
tile). ``synthetic``: a 64-plane time-lapse from :func:`fm2s.synthetic.clean_plane` whose
brightness fades to half (bleaching), Poisson-Gaussian noise, clean truth known.

``speed``: seconds per plane, amortised over a stack of N synthetic planes (one clean plane
above a dark level, independent noise), for shared and per-plane training side by side in one
process, and where the time goes: reading, estimation and preparation, training, inference
(with the blend and the plane reads), and how many networks were trained (shared + own).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tifffile
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resumable import appending  # noqa: E402

import fm2s  # noqa: E402
from fm2s.devices import resolve_device, set_threads  # noqa: E402
from fm2s.engine import denoise_stack_planes  # noqa: E402
from fm2s.planeio import read_image  # noqa: E402
from fm2s.stacks import open_stack  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd" / "test_mix"
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ("Confocal_BPAE_B", "Confocal_MICE", "TwoPhoton_BPAE_G", "TwoPhoton_MICE",
           "WideField_BPAE_B")
FIELDS = ["level", "config", "fov", "method", "psnr", "ssim", "seconds"]


def done_rows(path: Path) -> set[tuple[str, str, str, str]]:
    if not path.exists():
        return set()
    with path.open() as handle:
        return {(r["level"], r["config"], r["method"], r["fov"]) for r in csv.DictReader(handle)}


def settings_of(method: str) -> fm2s.Settings:
    """``per-plane`` or ``shared-<samples>[-g<group size>]``, either with ``-sure`` appended
    for ``blend="sure"`` (network and input alone, the blend before 0.5.0), ``-nlm`` for
    ``blend="sure-nlm"`` (the blend of 0.5.0) or ``-plane`` for ``sure_tile=0`` (0.6.0)."""
    extra = {}
    for suffix, variant in (("-sure", {"blend": "sure"}),
                            ("-nlm", {"blend": "sure-nlm", "sure_tile": 0}),
                            ("-plane", {"sure_tile": 0})):
        if method.endswith(suffix):
            method, extra = method.removesuffix(suffix), dict(variant)
    if method == "per-plane":
        return fm2s.make_settings(group_size=1, **extra)
    _, samples, *size = method.split("-")
    if size:
        extra["group_size"] = int(size[0][1:])
    return fm2s.make_settings(group_samples=int(samples), **extra)


def write_stack(path: Path, planes: np.ndarray) -> Path:
    tifffile.imwrite(path, planes[None, None], ome=True, metadata={"axes": "TCZYX"})
    return path


def denoise_file(path: Path, method: str, threads: int) -> tuple[dict, float]:
    set_threads(threads)
    start = time.perf_counter()
    with open_stack(path) as stack:
        out = {key: result.image for key, result in denoise_stack_planes(
            stack, settings_of(method), seed=0, device=resolve_device("cpu"))}
    return out, time.perf_counter() - start


def quality(args) -> None:
    csv_path = RESULTS / "shared-quality.csv"
    done = done_rows(csv_path)
    with appending(csv_path, FIELDS) as (writer, handle), tempfile.TemporaryDirectory() as tmp:

        def write(row):
            writer.writerow(row)
            handle.flush()

        for level in filter(None, args.levels.split(",")):
            for config in CONFIGS:
                names = [f"{config}_{i}.png" for i in range(1, 5)]
                noisy = np.stack([read_image(DATA / level / n) for n in names])
                truth = [read_image(DATA / "gt" / n) for n in names]
                stack = write_stack(Path(tmp) / f"{config}-{level}.ome.tif", noisy)
                for method in args.methods.split(","):
                    if (level, config, method, "1") in done:
                        continue
                    out, seconds = denoise_file(stack, method, args.threads)
                    for z, gt in enumerate(truth):
                        image = out[(0, 0, z)]
                        write({"level": level, "config": config, "fov": z + 1,
                               "method": method,
                               "psnr": peak_signal_noise_ratio(gt, image, data_range=255),
                               "ssim": structural_similarity(gt, image, data_range=255),
                               "seconds": seconds / len(truth)})
                    print(f"{level} {config} {method}: {seconds:.1f} s", flush=True)
        if args.synthetic:
            synthetic_quality(args, write, done, Path(tmp))


def bleaching_stack(count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, truth)``: a uint8 time-lapse of 256 x 256 planes whose brightness fades to half
    (bleaching), Poisson noise of 30 photons at 1.0 plus Gaussian read noise; clean truth."""
    from fm2s.synthetic import clean_plane

    rng = np.random.default_rng(5)
    photons = 30.0
    clean = np.stack([clean_plane((256, 256), seed=7, phase=0.05 * t) * (1 - 0.5 * t / (count - 1))
                      for t in range(count)])
    noisy = rng.poisson(clean * photons) / photons + rng.normal(0, 0.02, clean.shape)
    noisy = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    return noisy, np.clip(np.rint(clean * 255), 0, 255).astype(np.uint8)


def synthetic_quality(args, write, done, tmp: Path) -> None:
    """A 64-plane bleaching time-lapse (brightness fading to half), clean truth known."""
    noisy, truth = bleaching_stack()
    count = len(noisy)
    path = tmp / "bleaching.ome.tif"
    tifffile.imwrite(path, noisy[:, None, None], ome=True, metadata={"axes": "TCZYX"})
    for method in args.methods.split(","):
        if ("synthetic", "bleaching-64", method, "1") in done:
            continue
        set_threads(args.threads)
        start = time.perf_counter()
        with open_stack(path) as stack:
            out = {key: r.image for key, r in denoise_stack_planes(
                stack, settings_of(method), seed=0, device=resolve_device("cpu"))}
        seconds = time.perf_counter() - start
        for t in range(count):
            write({"level": "synthetic", "config": "bleaching-64", "fov": t + 1,
                   "method": method,
                   "psnr": peak_signal_noise_ratio(truth[t], out[(t, 0, 0)], data_range=255),
                   "ssim": structural_similarity(truth[t], out[(t, 0, 0)], data_range=255),
                   "seconds": seconds / count})
        print(f"synthetic {method}: {seconds:.1f} s", flush=True)


def summary(args) -> None:
    rows = list(csv.DictReader(open(RESULTS / "shared-quality.csv")))
    table: dict = defaultdict(list)
    for r in rows:
        table[(r["level"], r["config"], r["method"])].append(float(r["psnr"]))
        table[(r["level"], "seconds", r["method"])].append(float(r["seconds"]))
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "per-plane", m))
    print("| level | configuration | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for level in sorted({r["level"] for r in rows}, key=lambda x: (x == "synthetic", x)):
        configs = sorted({r["config"] for r in rows if r["level"] == level})
        for config in [*configs, "seconds"]:
            cells = [f"{np.mean(table[(level, config, m)]):.2f}" if table[(level, config, m)]
                     else "" for m in methods]
            print(f"| {level} | {config} | " + " | ".join(cells) + " |")


def timed_parts(path: Path, method: str, threads: int, device: str = "cpu") -> dict:
    """Seconds of one stack's denoising, in parts: reading, estimation and preparation,
    training, inference (apply_model, its reads included); and the networks trained."""
    from fm2s.engine import apply_model, train_stack

    set_threads(threads)
    device = resolve_device(device)
    start = time.perf_counter()
    with open_stack(path) as stack:
        keys = stack.plane_keys()
        for key in keys:
            stack.read_plane(key)
        read = time.perf_counter() - start
        model = train_stack(stack, settings_of(method), seed=0, data_range=None, device=device)
        trained = time.perf_counter() - start - read
        for _ in apply_model(stack, model, keys, device=device):
            pass
    total = time.perf_counter() - start
    training = sum(n.seconds for n in model.networks.values())
    shared = sum(1 for i in model.network_info.values() if i["shared"])
    return {"total": total - read, "read": read, "estimate": trained - training,
            "train": training, "apply": total - read - trained,
            "networks": f"{shared}+{len(model.networks) - shared}"}


def speed(args) -> None:
    """Seconds per plane over stacks of N planes, shared and per-plane, side by side."""
    from fm2s.synthetic import clean_plane, noisy_plane

    print(f"device {args.device}, {args.threads} CPU threads")
    print("| size | planes | method | s/plane | planes/s | read | estimate+prepare | train "
          "| apply | networks (shared+own) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in map(int, args.sizes.split(",")):
            clean = args.offset + (1 - args.offset) * clean_plane((size, size), seed=3)
            for count in map(int, args.planes.split(",")):
                planes = np.stack([noisy_plane(clean, photons=args.photons, read_noise=0.02,
                                               seed=i, dtype=np.uint16) for i in range(count)])
                path = write_stack(Path(tmp) / f"s{size}-{count}.ome.tif", planes)
                for method in args.methods.split(","):
                    if method == "per-plane" and count > args.per_plane_max:
                        continue
                    t = timed_parts(path, method, args.threads, args.device)
                    cells = " | ".join(f"{t[k] / count:.3f}" for k in
                                       ("total", "read", "estimate", "train", "apply"))
                    cells = cells.replace(" | ", f" | {count / t['total']:.2f} | ", 1)
                    print(f"| {size} | {count} | {method} | {cells} | {t['networks']} |",
                          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--levels", default="raw,avg4,avg16", help="FMD levels ('' for none)")
    q.add_argument("--methods", default="per-plane,shared-1500,shared-3000")
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--synthetic", action="store_true", help="also the 64-plane bleaching stack")
    q.add_argument("--summary", action="store_true")
    s = sub.add_parser("speed")
    s.add_argument("--sizes", default="128,512")
    s.add_argument("--planes", default="1,4,16,64,256")
    s.add_argument("--methods", default="shared-3000,per-plane")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (planes/s on a GPU: "
                   "--device cuda --sizes 512,2048 --planes 64,256)")
    s.add_argument("--photons", type=float, default=30.0, help="photons at intensity 1.0")
    s.add_argument("--offset", type=float, default=0.05,
                   help="dark level (fraction of the range): without one, 18 %% of a 512 x 512 "
                   "plane's pixels clip at 0, which makes noise estimates vary by ~15 %% and "
                   "many planes fail the check against their channel's reference")
    s.add_argument("--per-plane-max", type=int, default=16,
                   help="largest stack timed per plane (its cost per plane is constant)")
    s.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "quality":
        (summary if args.summary else quality)(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
