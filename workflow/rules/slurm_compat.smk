# Workaround for snakemake-executor-plugin-slurm 2.8.0 (the pinned version). sacct reports a job
# cancelled with `scancel` as "CANCELLED by <uid>"; the plugin compares the whole string with
# its failure states, does not recognise it, and Snakemake then waits for that job forever
# (tests/slurm/test_slurm.py::test_scancel_fails_visibly_and_a_rerun_completes hangs without
# this). Keeping only the state's first word makes the cancellation a failure, reported at once.
# Main process only; harmless without the plugin or once the plugin handles it itself.
# (A second workaround, for the account guess, is below.)

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


# Second workaround: without slurm_account, the plugin guesses one by running
# `sacct -nu USER -o Account%256 | tail -1` through shlex.split, without a shell, so sacct gets
# "| tail -1" as arguments and every run prints "No account was given, not able to get a SLURM
# account via sacct: sacct: invalid option -- '1'", then submits without -A. Submitting
# without -A is what happens anyway (sbatch then uses the user's default account); this skips
# the failing guess and its misleading warning. A slurm_account in the profile still wins.


def submit_without_guessing_an_account():
    try:
        plugin = importlib.import_module("snakemake_executor_plugin_slurm")
    except ImportError:
        return
    if getattr(getattr(plugin, "get_account", None), "fm2s_replaced", True):
        return

    def get_account(logger):
        logger.info("No SLURM account given: jobs use your default account (sbatch without -A)")
        return None

    get_account.fm2s_replaced = True
    plugin.get_account = get_account


if workflow.is_main_process:
    normalise_slurm_states()
    submit_without_guessing_an_account()
