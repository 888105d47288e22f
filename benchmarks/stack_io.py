"""Stack I/O measurements on the real data under ../shared/data (run by hand).

1. Every input format opened with the real files: shape and axes as read, and the
   time to list planes from headers (median of repeated calls in one process,
   plus the first call). OME-Zarr inputs (NGFF 0.4 and 0.5) are made from the
   Golgi z-stack, since the shared data holds none; CZI files are tried too.
2. Peak RSS of denoising the 25-slice Golgi z-stack to OME-Zarr in a child
   process, against a child that imports everything and opens the stack but
   denoises nothing, and against the size of the stack in memory; the schedule
   is shortened (``--steps``), and a few planes are also run with the recipe's
   own schedule to show that its memory is the same.
3. Peak RSS of the same pipeline on a large synthetic stack with the engine
   replaced by the identity (the I/O path alone), to show that memory does not
   grow with the number of planes.

Usage::

    python benchmarks/stack_io.py                  # fast recipe, 20 steps per plane
    python benchmarks/stack_io.py --steps 0        # the recipe's own schedule (slow on CPU)
    python benchmarks/stack_io.py --big-planes 0   # skip part 3
    python benchmarks/stack_io.py --recipe-planes 0  # skip the one-plane full-schedule run

Results are printed as Markdown and saved to ``benchmarks/out/stack_io.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLGI = "neubias_training_resources/image_data/xyz_calibrated_16bit__golgi_bfa.tif"


def inputs(data: Path, scratch: Path) -> list[Path]:
    from fm2s.ome import write_ome_zarr
    from fm2s.stacks import open_stack

    neubias = sorted((data / "neubias_training_resources/image_data").glob("*.tif"))
    found = [*neubias, data / "neubias_training_resources/image_data/mitocheck-movie"]
    found += sorted((data / "czitools_samples").glob("*.ome.tiff"))
    found += sorted((data / "fmd/test_mix/raw").glob("*.png"))[:1]
    with open_stack(data / GOLGI) as stack:
        for version in ("0.4", "0.5"):
            out = scratch / f"golgi_ngff{version}.ome.zarr"
            write_ome_zarr(out, stack.data, stack.metadata, ngff_version=version)
            found.append(out)
    return found + sorted((data / "czitools_samples").glob("*.czi"))


def time_listing(path: Path, repeats: int) -> dict:
    from fm2s.stacks import StackError, list_planes, open_stack

    start = time.perf_counter()
    try:
        keys = list_planes(path)
    except StackError as exc:
        return {"path": path.name, "error": str(exc).split(": ", 1)[-1]}
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        list_planes(path)
        times.append(time.perf_counter() - start)
    with open_stack(path) as stack:
        meta = stack.metadata
    return {
        "path": path.name, "format": meta.format, "axes_found": meta.axes_found,
        "shape_found": list(meta.shape_found), "shape_tczyx": list(meta.shape),
        "dtype": meta.dtype, "planes": len(keys), "list_first_ms": first * 1e3,
        "list_median_ms": statistics.median(times) * 1e3,
    }  # fmt: skip


CHILD = """
import importlib, json, resource, sys, time
import numpy as np
from fm2s.pipeline import denoise_stack
from fm2s.settings import make_settings
from fm2s.stacks import open_stack
mode, source, out, steps, recipe = sys.argv[1:6]
overrides = {{"steps": int(steps)}} if int(steps) else {{}}
settings = make_settings("confocal", recipe=recipe, **overrides)
if mode == "identity":
    from fm2s.denoise import PlaneResult
    def identity(planes, settings, *, keys, **kwargs):
        for plane, key in zip(planes, keys):
            yield PlaneResult(np.asarray(plane), 0.0, 0, key, 1.0)
    importlib.import_module("fm2s.denoise").iter_denoise_planes = identity
start = time.perf_counter()
if mode == "baseline":
    import torch  # noqa: F401  (what denoising would import)
    with open_stack(source) as stack:
        stack.read_plane((0, 0, 0))
else:
    denoise_stack(source, out, settings=settings, device="cpu", progress=False)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss_mib": peak_mib}}))
"""


def run_child(mode: str, source: Path, out: Path, steps: int, recipe: str) -> dict:
    """Run one measurement in a fresh process; return its wall time and own peak RSS."""
    args = [sys.executable, "-c", CHILD.format(), mode, str(source), str(out), str(steps), recipe]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_formats(rows: list[dict]) -> None:
    print(
        "| input | format | axes | shape as found | t,c,z,y,x | dtype | planes | list first (ms)"
        " | list median (ms) |"
    )
    print("|---" * 9 + "|")
    for row in rows:
        if "error" in row:
            print(f"| {row['path']} | not read: {row['error']} |||||||")
            continue
        print(
            f"| {row['path']} | {row['format']} | {row['axes_found']} | {row['shape_found']} "
            f"| {row['shape_tczyx']} | {row['dtype']} | {row['planes']} "
            f"| {row['list_first_ms']:.1f} | {row['list_median_ms']:.1f} |"
        )


def write_big_tiff(path: Path, planes: int) -> float:
    """A planes x 1024 x 1024 uint16 ImageJ z-stack, written plane by plane; its MiB."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    data = (rng.integers(0, 4000, (1024, 1024), np.uint16) for _ in range(planes))
    with tifffile.TiffWriter(path, imagej=True) as tif:
        tif.write(data, shape=(planes, 1024, 1024), dtype=np.uint16, metadata={"axes": "ZYX"})
    return planes * 1024 * 1024 * 2 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--steps", type=int, default=20, help="0: the recipe's own schedule")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big-planes", type=int, default=256, help="1024x1024 uint16 planes")
    parser.add_argument(
        "--recipe-planes", type=int, default=1,
        help="also denoise this many Golgi planes with the recipe's own schedule (0: skip)",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="stack_io-", dir=args.out))
    report: dict = {"steps": args.steps or "recipe default", "recipe": args.recipe}
    try:
        report["formats"] = [time_listing(p, args.repeats) for p in inputs(args.data, scratch)]
        print_formats(report["formats"])

        golgi, stack_mib = args.data / GOLGI, 25 * 137 * 147 * 2 / 2**20
        base = run_child("baseline", golgi, scratch / "none", args.steps, args.recipe)
        run = run_child("denoise", golgi, scratch / "golgi.ome.zarr", args.steps, args.recipe)
        report["golgi"] = {"stack_mib": stack_mib, "baseline": base, "denoise": run}
        extra = run["peak_rss_mib"] - base["peak_rss_mib"]
        print(
            f"\nGolgi z-stack, 25 x 137 x 147 uint16 = {stack_mib:.2f} MiB in memory; "
            f"recipe {args.recipe!r}, steps {args.steps or 'default'}:"
        )
        print(f"- baseline (imports, open, one plane): peak RSS {base['peak_rss_mib']:.0f} MiB")
        print(
            f"- denoise_stack: {run['seconds']:.1f} s, peak RSS {run['peak_rss_mib']:.0f} MiB "
            f"({extra:+.0f} MiB over the baseline)"
        )

        if args.recipe_planes and args.steps:
            import tifffile

            sub = scratch / "golgi_sub.tif"
            with tifffile.TiffFile(golgi) as tif:
                planes = tif.asarray()[: args.recipe_planes]
            tifffile.imwrite(sub, planes, imagej=True, metadata={"axes": "ZYX"})
            full = run_child("denoise", sub, scratch / "sub.ome.zarr", 0, args.recipe)
            report["golgi_recipe_schedule"] = {"planes": args.recipe_planes, **full}
            print(
                f"- {args.recipe_planes} Golgi plane(s) with the {args.recipe!r} recipe's own "
                f"schedule: {full['seconds']:.1f} s, peak RSS {full['peak_rss_mib']:.0f} MiB"
            )

        if args.big_planes:
            big_mib = write_big_tiff(scratch / "big.tif", args.big_planes)
            ident = run_child(
                "identity", scratch / "big.tif", scratch / "big.ome.zarr", 1, args.recipe
            )
            report["big_identity"] = {"stack_mib": big_mib, **ident}
            print(
                f"- identity engine on {args.big_planes} x 1024 x 1024 uint16 ({big_mib:.0f} MiB):"
                f" {ident['seconds']:.1f} s, peak RSS {ident['peak_rss_mib']:.0f} MiB"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (args.out / "stack_io.json").write_text(json.dumps(report, indent=2))
    print(f"\nsaved {args.out / 'stack_io.json'}")


if __name__ == "__main__":
    main()
