"""Speed and memory benchmark: seconds per plane and peak RSS, per recipe, on this machine.

Run by hand on a quiet machine (the faithful recipes take minutes per plane):

    python benchmarks/speed.py --recipes fast --planes 5 --size 512
    python benchmarks/speed.py --recipes v2 --planes 1 --size 512
    python benchmarks/speed.py --recipes fast --planes 1 --size 2048      # memory of a big plane
    python benchmarks/speed.py --recipes fast --planes 16 --size 512 --batch   # throughput
    python benchmarks/speed.py --recipes fast --planes 5 --preset widefield    # one channel

Each measurement runs in a fresh child process, so the peak RSS it reports (the child's own
ru_maxrss) belongs to that measurement alone, interpreter and torch included. Planes are synthetic
(fm2s.synthetic, 8-bit); timings are the median over the planes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from fm2s.settings import parse_overrides

CHILD = r"""
import json, sys, time
import numpy as np
import fm2s
from fm2s.synthetic import clean_plane, noisy_plane
preset, recipe, planes, size, threads, batch, overrides = json.loads(sys.argv[1])
settings = fm2s.make_settings(preset, recipe, **overrides)
stack = [noisy_plane(clean_plane((size, size), seed=i, blobs=size // 8), seed=100 + i)
         for i in range(planes)]
start = time.perf_counter()
seconds = []
if batch:
    fm2s.denoise_planes(stack, settings, device="cpu", threads=threads)
else:
    for plane in stack:
        t0 = time.perf_counter()
        fm2s.denoise(plane, settings=settings, device="cpu", threads=threads)
        seconds.append(time.perf_counter() - t0)
import resource
print(json.dumps({"seconds": seconds, "total": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(preset, recipe, planes, size, threads, batch, overrides):
    args = json.dumps([preset, recipe, planes, size, threads, batch, overrides])
    proc = subprocess.run([sys.executable, "-c", CHILD, args], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed for {recipe}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="fast")
    parser.add_argument("--preset", default="confocal")
    parser.add_argument("--planes", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", action="store_true", help="one denoise_planes call")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    print("| recipe | preset | plane | planes | median s/plane | planes/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes.split(","):
        r = measure(args.preset, recipe, args.planes, args.size, args.threads, args.batch,
                    overrides)
        per_plane = sorted(r["seconds"])[len(r["seconds"]) // 2] if r["seconds"] else \
            r["total"] / args.planes
        print(f"| {recipe}{' (batch)' if args.batch else ''} | {args.preset} | "
              f"{args.size}x{args.size} | "
              f"{args.planes} | {per_plane:.2f} | {args.planes / r['total']:.3f} | "
              f"{r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
