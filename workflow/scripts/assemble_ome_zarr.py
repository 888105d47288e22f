"""Rule assemble_ome_zarr: chunk files -> OME-Zarr store, with the config in its provenance."""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.path.insert(0, str(snakemake.scriptdir))  # noqa: F821  _job
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

from _job import one_line_errors  # noqa: E402

from fm2s.jobs import assemble_chunks  # noqa: E402
from fm2s.settings import Settings  # noqa: E402

p, output = snakemake.params, snakemake.config["output"]  # noqa: F821
with one_line_errors(snakemake.output[0]):  # noqa: F821
    assemble_chunks(
        p.source, snakemake.input.chunks, snakemake.output[0],  # noqa: F821
        settings=Settings.from_json(p.settings), seed=p.seed, series=p.series,
        pages_as=p.pages_as, data_range=p.data_range, levels=output["levels"],
        ngff_version=output["ngff_version"], tile=output["tile"],
        workflow={"config": snakemake.config, "planes_per_job": p.planes_per_job},  # noqa: F821
    )
