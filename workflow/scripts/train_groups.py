"""Rule train_groups: `fm2s train-groups` on some groups of planes (fm2s.chunks.train_groups)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
sys.exit(main([
    "train-groups", p.source, job.output[0], "--groups", *p.groups,
    "--settings-json", p.settings, *p.options,
    "--device", job.config["denoise"]["device"], "--gpus", str(job.resources.gpu),
    "--threads", str(job.threads),
]))  # fmt: skip
