"""The README's before/after picture, from the demo run (`make demo`).

    make demo && python tools/demo_picture.py      # -> docs/images/demo-before-after.png

Takes the middle plane (middle t and z) of one channel of the demo's input
(``resources/demo.ome.tif``) and of its denoised store (``results/demo.denoised.ome.zarr``),
and draws them side by side with a zoom on the brightest region
(:func:`fm2s.report.plot_before_after`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fm2s.ome import open_ome_zarr
from fm2s.report import plot_before_after
from fm2s.stacks import open_stack

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT, help="working directory of the "
                        "demo run (default: the repository)")
    parser.add_argument("--channel", type=int, default=1, help="channel (default 1: filaments)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs/images/demo-before-after.png")
    args = parser.parse_args()
    with open_stack(args.run / "resources/demo.ome.tif") as stack:
        t, _, z = (n // 2 for n in stack.metadata.shape[:3])
        key = (t, args.channel, z)
        raw = stack.read_plane(key)
    denoised = np.asarray(open_ome_zarr(args.run / "results/demo.denoised.ome.zarr")[0][0][key])
    title = (f"fm2s demo: plane t={t}, c={args.channel}, z={z} of the synthetic stack, "
             "raw (left) and denoised (right)")
    path = plot_before_after(raw, denoised, args.output, zoom=48, title=title)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
