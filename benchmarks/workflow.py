"""Snakemake workflow measurements (run by hand; see docs/workflow.md).

1. ``demo``: wall time of ``snakemake --cores 2`` with the shipped config (the synthetic demo)
   in a clean copy of this checkout (tracked and untracked-but-not-ignored files).
2. ``overhead``: a synthetic stack of ``--planes`` planes of ``--size`` x ``--size`` (default
   200 of 256 x 256, 2 channels) denoised by ``snakemake --cores 2`` and by ``fm2s denoise
   --threads 2`` (the library's stack loop in one process, the pure denoising time), with the
   recipe's schedule (or ``--steps``); the overhead ratio is workflow wall / CLI wall, and the
   two stores must hold the same pixels.
3. ``dag``: jobs Snakemake creates for a 10,000-plane stack (a plain 64 x 64 TIFF, planes read
   from its headers at parse time) and the dry-run time, for planes_per_job 32 (the default)
   and 1, locally and with the SLURM profile (grouped submissions).

Usage::

    python benchmarks/workflow.py                 # all three
    python benchmarks/workflow.py dag --planes 200 --size 128

Results are printed and saved to ``benchmarks/out/workflow.json`` (a part run alone replaces
only its own entry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def snakemake(workdir: Path, *args: str, cwd: Path | None = None) -> tuple[float, str]:
    """Run Snakemake (this checkout's Snakefile); return (seconds, output)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
               "-d", str(workdir), *args]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd or workdir, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds, done.stdout + done.stderr


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def job_seconds(folder: Path) -> dict[str, list[float]]:
    """Wall seconds of each job, by rule, from Snakemake's benchmark files."""
    out: dict[str, list[float]] = {}
    for tsv in sorted(folder.rglob("*.tsv")):
        rule = tsv.relative_to(folder).parts[0]
        seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
        out.setdefault(rule, []).append(round(seconds, 1))
    return out


def load() -> str:
    """The 1-minute load average (the machine may be shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def bench_demo() -> dict:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "fm2s"
        for name in files:
            if (ROOT / name).is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                (clone / name).write_bytes((ROOT / name).read_bytes())
        before = load()
        seconds, _ = snakemake(clone, "--cores", "2", cwd=clone)
        from fm2s._provenance import provenance

        record = provenance(clone / "results/demo.denoised.ome.zarr")
    planes = record["plane_seconds"]
    return {"wall_s": round(seconds, 1), "planes": len(planes),
            "plane_seconds_sum": round(sum(planes.values()), 1), "load_before": before,
            "load_after": load()}  # fmt: skip


def bench_overhead(planes: int, size: int, steps: int | None, planes_per_job: int) -> dict:
    """The workflow's wall time against ``fm2s denoise`` of the same stack, both on 2 cores."""
    import numpy as np

    from fm2s.synthetic import write_synthetic_stack

    overrides = {"steps": steps} if steps else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = max(1, planes // 20)
        write_synthetic_stack(work / "stack.ome.tif", t=t, c=2, z=planes // (2 * t), size=size)
        (work / "config.yaml").write_text(json.dumps({
            "inputs": ["stack.ome.tif"],
            "denoise": {"overrides": overrides, "planes_per_job": planes_per_job,
                        "device": "cpu"},
        }))  # fmt: skip
        before = load()
        cli = [sys.executable, "-m", "fm2s", "denoise", "stack.ome.tif", "cli.ome.zarr",
               "--threads", "2", "--device", "cpu"]
        cli += [f"--set={key}={value}" for key, value in overrides.items()]
        start = time.perf_counter()
        subprocess.run(cli, cwd=work, check=True, capture_output=True)
        cli_s = time.perf_counter() - start
        seconds, _ = snakemake(work, "--cores", "2", "--configfile", "config.yaml")
        rules = job_seconds(work / "results/benchmarks")
        import zarr

        same = np.array_equal(zarr.open_group(work / "cli.ome.zarr", mode="r")["0"][:],
                              zarr.open_group(work / "results/stack.denoised.ome.zarr",
                                              mode="r")["0"][:])
    return {"planes": planes, "size": size, "steps": steps or "recipe",
            "planes_per_job": planes_per_job, "wall_s": round(seconds, 1),
            "cli_wall_s": round(cli_s, 1), "overhead_ratio": round(seconds / cli_s, 2),
            "same_pixels_as_cli": bool(same), "job_seconds": rules, "load_before": before,
            "load_after": load()}  # fmt: skip


def bench_dag(planes: int, size: int) -> dict:
    import numpy as np
    import tifffile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = np.zeros((planes, size, size), np.uint16)
        tifffile.imwrite(work / "big.tif", stack)  # plain TIFF: pages become z
        for ppj in (32, 1):
            (work / "config.yaml").write_text(json.dumps(
                {"inputs": ["big.tif"], "denoise": {"planes_per_job": ppj}}))
            config = str(work / "config.yaml")
            seconds, output = snakemake(work, "-n", "--quiet", "rules", "--configfile", config)
            slurm_s, slurm = snakemake(work, "-n", "--configfile", config, "--profile", "slurm",
                                       cwd=ROOT)
            results[f"planes_per_job={ppj}"] = {
                "jobs": job_counts(output), "dry_run_s": round(seconds, 1),
                "slurm_denoise_submissions": slurm.count("Group job denoise"),
                "slurm_dry_run_s": round(slurm_s, 1),
            }  # fmt: skip
    return {"planes": planes, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", default=["demo", "overhead", "dag"],
                        choices=["demo", "overhead", "dag"])
    parser.add_argument("--planes", type=int, default=None, help="planes (overhead: 200, dag: "
                        "10000)")
    parser.add_argument("--size", type=int, default=None, help="plane side (256; dag: 64)")
    parser.add_argument("--steps", type=int, default=None,
                        help="schedule of the overhead run (default: the recipe's)")
    parser.add_argument("--planes-per-job", type=int, default=32)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    saved = OUT / "workflow.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}  # keep the other parts
    results["cpus"] = os.cpu_count()
    if "demo" in args.parts:
        results["demo"] = bench_demo()
        print("demo:", results["demo"], flush=True)
    if "overhead" in args.parts:
        results["overhead"] = bench_overhead(args.planes or 200, args.size or 256, args.steps,
                                             args.planes_per_job)
        print("overhead:", results["overhead"], flush=True)
    if "dag" in args.parts:
        results["dag"] = bench_dag(args.planes or 10_000, args.size or 64)
        print("dag:", results["dag"], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
