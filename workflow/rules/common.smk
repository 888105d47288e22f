# Shared by every rule: config validation, paths, and the values that reach rules as params.
# Which inputs and settings a run has (fm2s.runconfig), how a stack is split into training and
# denoise jobs (fm2s.jobs.plan_jobs) and the jobs' work itself are in fm2s.

import functools
import os.path
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow reads headers with this checkout's fm2s (scripts do the same, see their first
# lines): jobs then always run the code of the workflow that starts them.
sys.path.insert(0, workflow.basedir)

import fm2s  # noqa: E402
from fm2s.inputs import input_stamp  # noqa: E402
from fm2s.jobs import JobPlan, plan_jobs  # noqa: E402
from fm2s.runconfig import (  # noqa: E402
    STORE_SUFFIX,
    ConfigError,
    find_inputs,
    run_settings,
    settings_folder,
    vanished_inputs,
)
from fm2s.stacks import StackError  # noqa: E402

validate(config, "../schemas/config.schema.yaml")

DENOISE, OUTPUT, DEMO = config["denoise"], config["output"], config["demo"]
READING, ACQUISITION = config["reading"], config["acquisition"]
QC = config["report"]

# --- inputs and settings (fm2s.runconfig): everything that decides a result reaches the rules
# as params ----------------------------------------------------------------------------------

try:
    RUN = find_inputs(config, main_process=workflow.is_main_process)
    SETTINGS = run_settings(config, demo=RUN.demo is not None)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
for _path, _reason in RUN.waiting.items():
    logger.warning(f"fm2s: {_path} is {_reason}: left for the next run")
INPUTS, DEMO_NAME = RUN.inputs, RUN.demo

PLANES_PER_JOB = (DEMO_NAME and DEMO["planes_per_job"]) or DENOISE["planes_per_job"]
# Options of the fm2s job verbs that decide the result (the settings JSON aside).
DENOISE_OPTIONS = [
    *("--seed", str(DENOISE["seed"])),
    *("--series", str(READING["series"])),
    *("--pages-as", READING["pages_as"]),
    *(("--data-range", str(DENOISE["data_range"])) if DENOISE["data_range"] else ()),
]

# --- paths: every output, log and benchmark path is built here ---------------------------------

SETTINGS_FOLDER = settings_folder(SETTINGS, DENOISE["seed"], DENOISE["data_range"])
OUT = os.path.join(OUTPUT["root"], SETTINGS_FOLDER if OUTPUT["by_settings"] else "")
OUT = os.path.normpath(OUT)
STORE = f"{OUT}/{{name}}{STORE_SUFFIX}"
CHUNK = f"{OUT}/.fm2s/chunks/{{name}}/chunk-{{chunk}}.npz"
MODEL = f"{OUT}/.fm2s/models/{{name}}/training-{{training}}.npz"
FORMAT = f"{OUT}/.fm2s/format/{{name}}.json"
REPORT = f"{OUT}/qc/report.html"


try:
    for _name, _path in vanished_inputs(INPUTS, DEMO_NAME, lambda n: STORE.format(name=n)).items():
        logger.warning(f"fm2s: {_path} no longer exists; keeping {STORE.format(name=_name)}")
        del INPUTS[_name]
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def log_path(rule, stem):
    return f"{OUT}/logs/{rule}/{stem}.log"


def benchmark_path(rule, stem):
    return f"{OUT}/benchmarks/{rule}/{stem}.tsv"


wildcard_constraints:
    # a relative path whose parts do not start with "."
    name=r"[^./][^/]*(/[^./][^/]*)*",
    chunk=r"\d+",
    training=r"\d+",


# --- input functions -----------------------------------------------------------------------------


def source_path(wildcards):
    """The input stack of output `name`."""
    return str(INPUTS[wildcards.name])


def source_input(wildcards):
    """The demo's input as a job input (synth_demo makes it); nothing for any other input.

    An input stack is read by its jobs from params.source and watched through
    params.input_stamp (its content changed: its jobs rerun), never declared as a job input:
    Snakemake waits for a job's input files before starting it and, when one is still missing
    after --latency-wait, ends the whole run, leaving the running jobs of every other input
    marked incomplete. An input deleted or renamed during a run (an acquisition folder being
    tidied) then fails its own jobs only, with the reader's one-line error, and the other
    inputs finish."""
    return [str(INPUTS[wildcards.name])] if wildcards.name == DEMO_NAME else []


@functools.cache
def job_plan(name):
    """Groups, training jobs and chunks of an input (fm2s.jobs.JobPlan), from its headers.
    An input whose headers cannot be read gets one training job, which fails with the
    reader's error (logged here), while the other inputs go on."""
    if name == DEMO_NAME:
        keys = [
            (t, c, z) for t in range(DEMO["t"]) for c in range(DEMO["c"]) for z in range(DEMO["z"])
        ]
        return JobPlan.of(keys, SETTINGS, PLANES_PER_JOB)
    try:
        return plan_jobs(
            INPUTS[name],
            SETTINGS,
            PLANES_PER_JOB,
            series=READING["series"],
            pages_as=READING["pages_as"],
        )
    except StackError as error:
        logger.warning(f"fm2s: {error}; its training job will fail with this error")
        return JobPlan.unreadable()


def chunk_ids(name):
    return list(range(len(job_plan(name).chunks)))


def training_ids(name):
    return list(range(len(job_plan(name).trainings)))


def chunk_planes(wildcards):
    """``start:stop`` of a chunk (``all`` for an input whose headers cannot be read)."""
    plan = job_plan(wildcards.name)
    if not plan.readable:
        return "all"
    return "{}:{}".format(*plan.chunks[int(wildcards.chunk)])


def chunk_files(wildcards):
    return expand(CHUNK, name=wildcards.name, chunk=chunk_ids(wildcards.name))


def chunk_models(wildcards):
    """The model files of the training jobs whose planes a chunk holds."""
    jobs = job_plan(wildcards.name).chunk_trainings[int(wildcards.chunk)]
    return expand(MODEL, name=wildcards.name, training=jobs)


def training_groups(wildcards):
    """The groups of a training job."""
    return [str(g) for g in job_plan(wildcards.name).trainings[int(wildcards.training)]]


def training_planes(wildcards):
    """The ``t,c,z`` of a training job's planes, by group: a change of grouping retrains."""
    plan = job_plan(wildcards.name)
    if not plan.readable:
        return ["unreadable"]
    return [
        " ".join(key.label for key in plan.groups[g].keys)
        for g in plan.trainings[int(wildcards.training)]
    ]


@functools.cache
def _stamp(name):
    return "generated" if name == DEMO_NAME else input_stamp(INPUTS[name])


def source_stamp(wildcards):
    """Changes with the input's content (mtime and size of every file of a store or folder)."""
    return _stamp(wildcards.name)


def all_targets():
    qc_page = [REPORT] if QC["enabled"] and INPUTS else []
    return (
        [STORE.format(name=name) for name in INPUTS]
        + [FORMAT.format(name=name) for name in INPUTS]
        + qc_page
    )
