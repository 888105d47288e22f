"""Pixel hashes of what the CLI and the workflow write: a restructuring must change no pixel.

Run by hand before and after a move, from the checkout to measure (CPU, one thread, ~2 min):

    PYTHONPATH=. python benchmarks/output_hashes.py > before.txt
    ... move code ...
    PYTHONPATH=. python benchmarks/output_hashes.py > after.txt
    diff before.txt after.txt        # no output: no pixel changed

The inputs are made afresh each run from fixed seeds: an 8-bit plane and a plain 16-bit TIFF of
shape (3, 96, 96), which tifffile stores as 3 samples per pixel and fm2s reads as 3 channels
(each denoised by ``fm2s denoise`` into a TIFF and into an OME-Zarr store), a 2-channel
OME-TIFF z-stack and, where ``../shared/data`` is beside the checkout, a Nikon ND2 z-stack (into
OME-Zarr). The stacks also go through the workflow (``snakemake``, two planes per job, so a chunk
boundary falls inside each stack). A line per
output array: ``<what> <sha256 of its pixels> <shape> <dtype>``. Provenance is not hashed (it
holds times and paths); the pixels are what a restructuring must not change.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr

REPO = Path(__file__).resolve().parents[1]
ND2 = REPO.parent / "shared" / "data" / "vendor_formats" / "example-zstack.nd2"
SETTINGS = ["--set", "steps=150"]  # short training: the hashes test the plumbing, not quality


def digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return f"{hashlib.sha256(array.tobytes()).hexdigest()[:16]} {array.shape} {array.dtype}"


def hash_output(path: Path) -> list[str]:
    if path.suffix in (".tif", ".tiff"):
        return [digest(tifffile.imread(path))]
    root = zarr.open_group(str(path), mode="r")
    return [f"level {name}: {digest(root[name][...])}" for name in sorted(root.array_keys())]


def make_inputs(folder: Path) -> list[Path]:
    from fm2s.synthetic import clean_plane, noisy_plane

    rng = np.random.default_rng(7)
    plane = noisy_plane(clean_plane((96, 96), seed=1, blobs=12), seed=2)
    tifffile.imwrite(folder / "plane.tif", plane)
    clean = clean_plane((96, 96), seed=3, blobs=12).astype(np.float64)
    stack = np.stack([np.stack([rng.poisson(clean * (40 + 10 * z + 30 * c)) + 100
                                for z in range(3)]) for c in range(2)])
    tifffile.imwrite(folder / "stack.ome.tif", stack.astype(np.uint16)[None], ome=True,
                     metadata={"axes": "TCZYX"})
    tifffile.imwrite(folder / "pages.tif", stack[1].astype(np.uint16))  # 3 samples: 3 channels
    inputs = [folder / "plane.tif", folder / "pages.tif", folder / "stack.ome.tif"]
    if ND2.exists():
        os.symlink(ND2, folder / "zstack.nd2")
        inputs.append(folder / "zstack.nd2")
    return inputs


def run(command: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        inputs = make_inputs(tmp / "in")
        fm2s = [sys.executable, "-m", "fm2s"]
        jobs = []  # (what, input, output)
        for path in inputs:
            name = path.name.split(".")[0]
            if path.name in ("plane.tif", "pages.tif"):
                jobs.append((f"cli {name} -> tif", path, tmp / f"{name}-out.tif"))
            jobs.append((f"cli {name} -> ome.zarr", path, tmp / f"{name}-out.ome.zarr"))
        for _, path, out in jobs:
            run(fm2s + ["denoise", "-q", str(path), str(out), "--threads", "1", *SETTINGS], tmp)
        outputs = [(what, out) for what, _, out in jobs]
        config = tmp / "config.yaml"
        listed = ", ".join(f'"{p}"' for p in inputs if p.name != "plane.tif")
        config.write_text(
            f"inputs: [{listed}]\ndemo: {{enabled: false}}\nreport: {{enabled: false}}\n"
            "denoise: {overrides: {steps: 150}, planes_per_job: 2, threads: 1}\n"
            f"output: {{root: {tmp / 'wf'}}}\n")
        run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
             "--directory", str(tmp), "--configfile", str(REPO / "config" / "config.yaml"),
             str(config), "--cores", "1", "--quiet", "all"], tmp)
        for store in sorted((tmp / "wf").rglob("*.ome.zarr")):
            outputs.append((f"workflow {store.name}", store))
        for what, out in outputs:
            for line in hash_output(out):
                print(f"{what}: {line}")


if __name__ == "__main__":
    main()
