# fm2s workflow: denoise every plane of microscopy stacks with FM2S, a chunk of planes per job,
# into OME-Zarr stores. Run `snakemake --cores N` or `snakemake --profile slurm` here.
# Config: config/config.yaml (checked against workflow/schemas/config.schema.yaml).
# Documentation: docs/workflow.md.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/slurm_compat.smk"


if DEMO_NAME:

    include: "workflow/rules/synth.smk"


include: "workflow/rules/denoise.smk"
include: "workflow/rules/assemble.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
