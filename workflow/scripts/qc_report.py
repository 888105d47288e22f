"""Rule qc_report: `fm2s report`, the run's QC page over every store (fm2s.report)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
# Benchmark files of jobs that ran in an earlier run are kept; a failed job's may be missing.
benchmarks = {name: [b for b in files if Path(b).is_file()]
              for name, files in p.job_benchmarks.items()}
names = list(p.stores)
sys.exit(main([
    "report", *(p.stores[n] for n in names), "-o", job.output[0], "--names", *names,
    "--sources", *(p.sources[n] for n in names), "--series", str(p.series),
    "--pages-as", p.pages_as, "--noise-planes", str(p.noise_planes), "--zoom", str(p.zoom),
    "--benchmarks-json", json.dumps(benchmarks),
]))  # fmt: skip
