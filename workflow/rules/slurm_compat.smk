# Two workarounds for snakemake-executor-plugin-slurm 2.8.0 (the pinned version), applied in one
# place, in the main process only, and only to the plugin version they were written for: a
# newer plugin is left as it is (check these again before raising the pin).
#
# 1. sacct reports a job cancelled with `scancel` as "CANCELLED by <uid>"; the plugin compares
#    the whole string with its failure states, does not recognise it, and Snakemake then waits
#    for that job forever (tests/slurm/test_slurm.py::test_scancel_fails_visibly_and_a_rerun_
#    completes hangs without this). Keeping only the state's first word makes the cancellation a
#    failure, reported at once.
# 2. Without slurm_account, the plugin guesses one by running
#    `sacct -nu USER -o Account%256 | tail -1` through shlex.split, without a shell, so sacct gets
#    "| tail -1" as arguments and every run prints "No account was given, not able to get a
#    SLURM account via sacct: sacct: invalid option -- '1'", then submits without -A. Submitting
#    without -A is what happens anyway (sbatch then uses the user's default account); this skips
#    the failing guess and its misleading warning. A slurm_account in the profile still wins.

import importlib
from importlib import metadata

SLURM_PLUGIN = "snakemake-executor-plugin-slurm"
SLURM_PLUGIN_PATCHED = "2.8.0"


def adapt_slurm_plugin():
    try:
        if metadata.version(SLURM_PLUGIN) != SLURM_PLUGIN_PATCHED:
            return
        plugin = importlib.import_module("snakemake_executor_plugin_slurm")
    except (ImportError, metadata.PackageNotFoundError):
        return
    query = plugin.query_job_status

    async def query_job_status(command, logger):
        states, seconds = await query(command, logger)
        if states is not None:
            states = {job: state.split(" ", 1)[0] for job, state in states.items()}
        return states, seconds

    def get_account(logger):
        logger.info("No SLURM account given: jobs use your default account (sbatch without -A)")
        return None

    plugin.query_job_status = query_job_status
    plugin.get_account = get_account


if workflow.is_main_process:
    adapt_slurm_plugin()
