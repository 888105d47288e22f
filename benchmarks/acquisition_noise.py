"""One noise model per acquisition (issue 38): FMD 4-plane stacks, quality per configuration.

Run by hand, once per checkout to compare (the script imports whichever fm2s is first on the
path, so the same file measures main and a branch side by side):

    PYTHONPATH=. nice -n 10 python benchmarks/acquisition_noise.py fmd --out after.csv
    PYTHONPATH=../main-before python benchmarks/acquisition_noise.py fmd --out before.csv
    python benchmarks/acquisition_noise.py summary before.csv after.csv

``fmd``: each FMD ``test_mix`` configuration's four fields of view (``_1`` to ``_4``) as one
4-plane z-stack (an OME-TIFF in a temporary folder), at raw, avg4 and avg16, denoised with the
default settings (``auto``, ``fast``; one shared network per group) through the stack engine
(:func:`fm2s.engine.denoise_stack_planes`), one thread; PSNR (data range 255) and SSIM of each
plane against the ground truth, with the process's CPU seconds per stack.

``stacks``: the real stacks of ``../shared/data`` (a Nikon time-lapse, the MitoCheck movie, four
NEUBIAS TIFF stacks, a Zeiss CZI) through :func:`fm2s.pipeline.denoise_stack` (what
``fm2s denoise`` runs), one thread: planes, channels, networks trained, planes on a shared
network, CPU seconds, the noise model per channel (from the store's provenance), and per frame
the std of input minus output and the ratio of the output's mean to the input's (how alike the
frames of one time-lapse are denoised). One JSON line per stack.

``bleaching``: the synthetic 64-plane time-lapse of ``benchmarks/shared.py`` (brightness fading
to half), default settings: networks trained, per-frame PSNR, its mean and spread.
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

import fm2s
from fm2s.devices import resolve_device, set_threads
from fm2s.engine import denoise_stack_planes
from fm2s.planeio import read_image
from fm2s.stacks import open_stack

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fmd" / "test_mix"
CONFIGS = ("Confocal_BPAE_B", "Confocal_MICE", "TwoPhoton_BPAE_G", "TwoPhoton_MICE",
           "WideField_BPAE_B")
FIELDS = ["version", "level", "config", "seed", "fov", "psnr", "ssim", "networks", "cpu_s",
          "wall_s"]


def fmd(args) -> None:
    set_threads(1)
    runs = [(level, config, int(seed)) for level in args.levels.split(",")
            for config in args.configs.split(",") for seed in args.seeds.split(",")]
    with open(args.out, "w", newline="") as handle, tempfile.TemporaryDirectory() as tmp:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        for level, config, seed in runs:
            names = [f"{config}_{i}.png" for i in range(1, 5)]
            noisy = np.stack([read_image(DATA / level / n) for n in names])
            truth = [read_image(DATA / "gt" / n) for n in names]
            path = Path(tmp) / f"{config}-{level}.ome.tif"
            tifffile.imwrite(path, noisy[None, None], ome=True, metadata={"axes": "TCZYX"})
            cpu, wall = time.process_time(), time.perf_counter()
            with open_stack(path) as stack:
                results = dict(denoise_stack_planes(stack, fm2s.make_settings(), seed=seed,
                                                    device=resolve_device("cpu")))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            networks = len({(r.info or {}).get("network") for r in results.values()})
            for z, gt in enumerate(truth):
                image = results[(0, 0, z)].image
                writer.writerow({
                    "version": fm2s.__version__, "level": level, "config": config, "seed": seed,
                    "fov": z + 1, "psnr": peak_signal_noise_ratio(gt, image, data_range=255),
                    "ssim": structural_similarity(gt, image, data_range=255),
                    "networks": networks, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)})
            handle.flush()
            print(f"{level} {config} seed {seed}: {networks} network(s), {cpu:.1f} CPU-s",
                  flush=True)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STACKS = {
    "nd2-timelapse": "vendor_formats/example-timelapse.nd2",
    "mitocheck": "neubias_training_resources/image_data/mitocheck-movie",
    "dna-conf-wf": "neubias_training_resources/image_data/xyzc_16bit__dna_conf_wf.tif",
    "golgi-z": "neubias_training_resources/image_data/xyz_calibrated_16bit__golgi_bfa.tif",
    "golgi-sum-t": ("neubias_training_resources/image_data/"
                    "xyt_calibrated_16bit__golgi_bfa_sum_projection.tif"),
    "celldivision": "czitools_samples/CellDivision_T3_Z5_CH2_X240_Y170.czi",
    "spots": "neubias_training_resources/image_data/xyzc_16bit__spots.tif",
}


def stacks(args) -> None:
    import json

    from fm2s._provenance import provenance
    from fm2s.ome import open_ome_zarr
    from fm2s.pipeline import denoise_stack

    out = Path(args.stores)
    out.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        for name in args.names.split(","):
            source = SHARED / STACKS[name]
            store = out / f"{name}.ome.zarr"
            cpu, wall = time.process_time(), time.perf_counter()
            denoise_stack(source, store, settings=fm2s.make_settings(), seed=0, device="cpu",
                          threads=1, overwrite=True, progress=False)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            record = provenance(store)
            networks = record.get("networks") or {}
            on_shared = sum(len(e["planes"]) for e in networks.values() if len(e["planes"]) > 1)
            estimate = record.get("estimate") or {}
            output = open_ome_zarr(store)[0][0].compute()
            residual, ratio = [], []
            with open_stack(source) as stack:
                keys = stack.plane_keys()
                for key in keys:
                    plane = stack.read_plane(key).astype(np.float64)
                    denoised = output[tuple(key)].astype(np.float64)
                    residual.append(float((plane - denoised).std()))
                    ratio.append(float(denoised.mean() / max(plane.mean(), 1e-12)))
            row = {"version": fm2s.__version__, "stack": name, "planes": len(keys),
                   "channels": output.shape[1], "networks": len(networks),
                   "planes_on_shared": on_shared, "cpu_s": round(cpu, 1),
                   "wall_s": round(wall, 1),
                   "model": estimate.get("channels") or estimate.get("references"),
                   "residual_std": [round(v, 3) for v in residual],
                   "mean_ratio": [round(v, 5) for v in ratio],
                   "keys": [k.label for k in keys]}
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            print(f"{name}: {len(keys)} planes, {len(networks)} networks, {on_shared} on shared, "
                  f"{cpu:.0f} CPU-s", flush=True)


def bleaching(args) -> None:
    """A 64-plane synthetic time-lapse fading to half its brightness (as in
    ``benchmarks/shared.py``), clean truth known: per-frame PSNR and networks."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from shared import bleaching_stack

    set_threads(1)
    noisy, truth = bleaching_stack()
    count = len(noisy)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bleaching.ome.tif"
        tifffile.imwrite(path, noisy[:, None, None], ome=True, metadata={"axes": "TCZYX"})
        cpu = time.process_time()
        with open_stack(path) as stack:
            results = dict(denoise_stack_planes(stack, fm2s.make_settings(), seed=0,
                                                device=resolve_device("cpu")))
        cpu = time.process_time() - cpu
    psnr = [peak_signal_noise_ratio(truth[t], results[(t, 0, 0)].image, data_range=255)
            for t in range(count)]
    networks = sorted({(r.info or {}).get("network") for r in results.values()})
    row = {"version": fm2s.__version__, "networks": networks, "cpu_s": round(cpu, 1),
           "psnr": [round(v, 3) for v in psnr], "mean": round(float(np.mean(psnr)), 3),
           "std": round(float(np.std(psnr)), 3)}
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(f"{len(networks)} networks, PSNR mean {row['mean']} std {row['std']}, "
          f"{cpu:.0f} CPU-s", flush=True)


def summary(args) -> None:
    tables = []
    for path in args.files:
        means = defaultdict(list)
        with open(path) as handle:
            for row in csv.DictReader(handle):
                seed = row.get("seed", "0")
                config = row["config"] + (f" (seed {seed})" if seed != "0" else "")
                means[(row["level"], config)].append(
                    (float(row["psnr"]), float(row["ssim"]), int(row["networks"]),
                     float(row["cpu_s"]), row["version"]))
        tables.append(means)
    print("| level | configuration | " + " | ".join(
        f"{Path(p).stem}: PSNR / SSIM / networks / CPU-s" for p in args.files) + " |")
    print("|---|---|" + "---|" * len(args.files))
    for key in sorted(tables[0]):
        cells = []
        for table in tables:
            rows = table.get(key, [])
            if not rows:
                cells.append("")
                continue
            psnr = np.mean([r[0] for r in rows])
            ssim = np.mean([r[1] for r in rows])
            cells.append(f"{psnr:.2f} / {ssim:.3f} / {rows[0][2]} / {rows[0][3]:.0f}")
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("fmd")
    run.add_argument("--out", required=True)
    run.add_argument("--levels", default="raw,avg4,avg16")
    run.add_argument("--configs", default=",".join(CONFIGS))
    run.add_argument("--seeds", default="0")
    real = sub.add_parser("stacks")
    real.add_argument("--out", required=True)
    real.add_argument("--stores", required=True)
    real.add_argument("--names", default=",".join(STACKS))
    fade = sub.add_parser("bleaching")
    fade.add_argument("--out", required=True)
    show = sub.add_parser("summary")
    show.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    {"fmd": fmd, "stacks": stacks, "bleaching": bleaching, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
