"""Reading the microscopes' own files against the TIFF reader on the same pixels (run by hand).

For each real CZI, ND2, LIF and OIB file under ../shared/data (every scene of the mosaic CZI),
and for an OME-TIFF holding the same planes (written here with tifffile, one page per plane):

- open: seconds to open the file and read its metadata (``fm2s.stacks.open_stack``);
- read: milliseconds per plane to read every plane one by one (``Stack.read_plane``), after
  the open;
- peak: the largest memory allocated while reading one plane (tracemalloc, which sees numpy's
  buffers), in planes' bytes: 1 means the reader holds one plane, n a whole n-plane stack.

Each figure is the median of ``--repeats`` runs in one process, vendor and TIFF alternated.

Usage::

    python benchmarks/vendor_read.py               # prints a Markdown table
    python benchmarks/vendor_read.py --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fm2s.stacks import open_stack  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FILES = [
    ("czitools_samples/CellDivision_T3_Z5_CH2_X240_Y170.czi", 0),
    ("czitools_samples/S3_1Pos_2Mosaic_T2_Z3_CH2_sm.czi", 0),
    ("czitools_samples/S3_1Pos_2Mosaic_T2_Z3_CH2_sm.czi", 2),
    ("czitools_samples/LLS7_small.czi", 0),
    ("czitools_samples/DAPI_GFP.czi", 0),
    ("vendor_formats/example-multichannel.nd2", 0),
    ("vendor_formats/example-timelapse.nd2", 0),
    ("vendor_formats/example-zstack.nd2", 0),
    ("vendor_formats/PR2729_frameOrderCombinedScanTypes.lif", 0),
    ("vendor_formats/test.oib", 0),
]


def measure(path: Path, series: int) -> dict:
    """Open, read every plane and the peak allocation of one plane read."""
    started = time.perf_counter()
    with open_stack(path, series=series) as stack:
        opened = time.perf_counter() - started
        keys = stack.plane_keys()
        started = time.perf_counter()
        for key in keys:
            stack.read_plane(key)
        per_plane = (time.perf_counter() - started) / len(keys)
        tracemalloc.start()
        plane = stack.read_plane(keys[len(keys) // 2])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"open": opened, "read": per_plane, "peak": peak / plane.nbytes, "planes": len(keys)}


def as_tiff(path: Path, series: int, folder: Path) -> Path:
    out = folder / f"{path.stem}-{series}.ome.tif"
    with open_stack(path, series=series) as stack:
        tifffile.imwrite(out, stack.data.compute(), ome=True, metadata={"axes": "TCZYX"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, series in FILES:
            path = DATA / name
            tiff = as_tiff(path, series, Path(scratch))
            runs = {"vendor": [], "tiff": []}
            for _ in range(args.repeats):
                runs["vendor"].append(measure(path, series))
                runs["tiff"].append(measure(tiff, 0))
            med = {kind: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                   for kind, rs in runs.items()}  # fmt: skip
            with open_stack(path, series=series) as stack:
                fmt, shape = stack.metadata.format, stack.metadata.shape
            rows.append((name.split("/")[-1], series, fmt, shape, med))
    print(f"median of {args.repeats} runs; read = ms per plane, open = ms; peak in plane bytes\n")
    print("| file | series | format | shape (t,c,z,y,x) | open | read | peak | "
          "OME-TIFF open | OME-TIFF read | peak | read ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, series, fmt, shape, med in rows:
        v, t = med["vendor"], med["tiff"]
        print(f"| {name} | {series} | {fmt} | {shape} | {v['open'] * 1e3:.1f} | "
              f"{v['read'] * 1e3:.2f} | {v['peak']:.1f} | {t['open'] * 1e3:.1f} | "
              f"{t['read'] * 1e3:.2f} | {t['peak']:.1f} | {v['read'] / t['read']:.1f}x |")


if __name__ == "__main__":
    main()
