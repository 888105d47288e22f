"""Rule denoise_chunk: `fm2s denoise-chunk` on one chunk of planes (see fm2s.jobs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
terminal = sys.stderr  # one line per job there: the run's progress, stack by stack
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
code = main([
    "denoise-chunk", p.source, job.output[0], "--planes", p.planes,
    "--models", *job.input.models,
    "--settings-json", p.settings, *p.options,
    "--device", job.config["denoise"]["device"], "--gpus", str(job.resources.gpu),
    "--threads", str(job.threads),
])  # fmt: skip
if code == 0:
    name, chunk = job.wildcards.name, job.wildcards.chunk
    print(f"fm2s: {name}: planes {p.planes} denoised (chunk {chunk})", file=terminal, flush=True)
sys.exit(code)
