"""Rule train_groups: `fm2s train-groups` on some groups of planes (fm2s.jobs.train_groups)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
terminal = sys.stderr  # one line per job there: the run's progress, stack by stack
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
code = main([
    "train-groups", p.source, job.output[0], "--groups", *p.groups,
    "--settings-json", p.settings, *p.options,
    "--device", job.config["denoise"]["device"], "--gpus", str(job.resources.gpu),
    "--threads", str(job.threads),
])  # fmt: skip
if code == 0:
    groups = " ".join(p.groups)
    print(f"fm2s: {job.wildcards.name}: group(s) {groups} trained", file=terminal, flush=True)
sys.exit(code)
