"""Rule synth_demo: `fm2s synth`, the demo's synthetic OME-TIFF."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1]))  # noqa: F821  this checkout's fm2s
sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821, SIM115

from fm2s.cli import main  # noqa: E402

sys.exit(main(["synth", snakemake.output[0], *snakemake.params.options, "--overwrite"]))  # noqa: F821
