"""Rule qc_report: the run's QC page, fm2s.report.write_run_report over every store."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.path.insert(0, str(snakemake.scriptdir))  # noqa: F821  _job
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

from _job import one_line_errors  # noqa: E402

from fm2s.report import write_run_report  # noqa: E402

p = snakemake.params  # noqa: F821
# Benchmark files of jobs that ran in an earlier run are kept; a failed job's may be missing.
benchmarks = {name: [b for b in files if Path(b).is_file()]
              for name, files in p.job_benchmarks.items()}
with one_line_errors(snakemake.output[0]):  # noqa: F821
    write_run_report(snakemake.output[0], p.stores, sources=p.sources,  # noqa: F821
                     series=p.series, pages_as=p.pages_as, noise_planes=p.noise_planes,
                     zoom=p.zoom, job_benchmarks=benchmarks)
