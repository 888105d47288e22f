# Workaround for snakemake-executor-plugin-slurm 2.8.0 (the pinned version). sacct reports a job
# cancelled with `scancel` as "CANCELLED by <uid>"; the plugin compares the whole string with
# its failure states, does not recognise it, and Snakemake then waits for that job forever
# (tests/slurm/test_slurm.py::test_scancel_fails_visibly_and_a_rerun_completes hangs without
# this). Keeping only the state's first word makes the cancellation a failure, reported at once.
# Main process only; harmless without the plugin or once the plugin handles it itself.

import importlib


def normalise_slurm_states():
    try:
        plugin = importlib.import_module("snakemake_executor_plugin_slurm")
    except ImportError:
        return
    query = getattr(plugin, "query_job_status", None)
    if query is None or getattr(query, "fm2s_normalised", False):
        return

    async def query_job_status(command, logger):
        states, seconds = await query(command, logger)
        if states is not None:
            states = {job: state.split(" ", 1)[0] for job, state in states.items()}
        return states, seconds

    query_job_status.fm2s_normalised = True
    plugin.query_job_status = query_job_status


if workflow.is_main_process:
    normalise_slurm_states()
