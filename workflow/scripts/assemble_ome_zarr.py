"""Rule assemble_ome_zarr: `fm2s assemble`, chunk files -> OME-Zarr store with the config in its
provenance (fm2s.jobs.assemble_chunks)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
output = job.config["output"]
sys.exit(main([
    "assemble", p.source, job.output[0], "--chunks", *job.input.chunks,
    "--settings-json", p.settings, "--seed", str(p.seed), "--series", str(p.series),
    "--pages-as", p.pages_as,
    *(("--data-range", str(p.data_range)) if p.data_range is not None else ()),
    "--levels", str(output["levels"]), "--ngff-version", output["ngff_version"],
    "--tile", str(output["tile"]),
    "--workflow-json", json.dumps({"config": job.config, "planes_per_job": p.planes_per_job}),
]))  # fmt: skip
