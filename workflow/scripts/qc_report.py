"""Rule qc_report: the run's QC page, fm2s.report.write_run_report over every store."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

from fm2s.report import write_run_report  # noqa: E402

p = snakemake.params  # noqa: F821
# Benchmark files of jobs that ran in an earlier run are kept; a failed job's may be missing.
benchmarks = {name: [b for b in files if Path(b).is_file()]
              for name, files in p.job_benchmarks.items()}
write_run_report(snakemake.output[0], p.stores, sources=p.sources, series=p.series,  # noqa: F821
                 pages_as=p.pages_as, noise_planes=p.noise_planes, zoom=p.zoom,
                 job_benchmarks=benchmarks)
