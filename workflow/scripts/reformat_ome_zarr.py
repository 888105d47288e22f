"""Rule reformat_ome_zarr: `fm2s reformat`, giving a store the configured output options (no
denoising; fm2s.jobs.reformat_store), then the rule's stamp file."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402
from fm2s.outputs import atomic_output  # noqa: E402

job, p = snakemake, snakemake.params  # noqa: F821
store, stamp = Path(job.input.store), Path(job.output[0])
options = {"levels": p.levels, "ngff_version": p.ngff_version, "tile": p.tile}
code = main([
    "reformat", str(store), "--levels", str(p.levels), "--ngff-version", p.ngff_version,
    "--tile", str(p.tile), "--workflow-json", json.dumps({"config": job.config}),
])  # fmt: skip
if code == 0:
    # Snakemake marks a finished directory output with this file; inside the store, zarr warns
    # on it ("not recognized as a component of a Zarr hierarchy") when a reader lists the
    # store's members. Without it Snakemake uses the directory's own mtime, as after a rewrite.
    (store / ".snakemake_timestamp").unlink(missing_ok=True)
    with atomic_output(stamp, overwrite=True) as tmp:
        tmp.write_text(json.dumps(options) + "\n")
sys.exit(code)
