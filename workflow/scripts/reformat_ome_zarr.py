"""Rule reformat_ome_zarr: give a store the configured output options (no denoising)."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.path.insert(0, str(snakemake.scriptdir))  # noqa: F821  _job
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

from _job import one_line_errors  # noqa: E402

from fm2s.jobs import reformat_store  # noqa: E402
from fm2s.outputs import atomic_output  # noqa: E402

p, stamp = snakemake.params, Path(snakemake.output[0])  # noqa: F821
options = {"levels": p.levels, "ngff_version": p.ngff_version, "tile": p.tile}
with one_line_errors(snakemake.input.store):  # noqa: F821
    rewritten = reformat_store(snakemake.input.store, **options,  # noqa: F821
                               workflow={"config": snakemake.config})  # noqa: F821
    logging.info("%s: %s", snakemake.input.store, "rewritten" if rewritten else "already so")  # noqa: F821
    # Snakemake marks a finished directory output with this file; inside the store, zarr warns
    # on it ("not recognized as a component of a Zarr hierarchy") when a reader lists the
    # store's members. Without it Snakemake uses the directory's own mtime, as after a rewrite.
    (Path(snakemake.input.store) / ".snakemake_timestamp").unlink(missing_ok=True)  # noqa: F821
    with atomic_output(stamp, overwrite=True) as tmp:
        tmp.write_text(json.dumps({**options, "rewritten": rewritten}) + "\n")
