"""The workflow on a real SLURM cluster, run as users run it: `snakemake --profile slurm`.

The module starts a single-node cluster with accounting and one GPU as a generic resource
(``tests/slurm/cluster.sh``), runs the workflow from the repository root through the shipped
profile (``slurm/config.yaml``) with a small test config, and stops the cluster at the end. It
needs root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (``cluster.sh install``):
without them the tests skip, except in CI (``FM2S_CI=1``), where that is a failure.

Two inputs of 12 and 8 planes, 2 planes per job: 10 denoise jobs, which the profile groups 8 to
a SLURM submission. The denoise schedule is tiny (2 steps of 16 x 16): the tests are about
scheduling, not about denoising.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs pip install -e '.[workflow]'")
import yaml  # noqa: E402  (a dependency of snakemake)
from conftest import skip_unless_in_ci  # noqa: E402

from fm2s.ome import write_ome_zarr  # noqa: E402
from fm2s.synthetic import synthetic_stack  # noqa: E402

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
PROGRAMS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
DENOISE = {"mem_mb": 700, "runtime": 7}
OUTPUT = {"mem_mb": 600, "runtime": 5}
PLANES, PLANES_PER_JOB, GROUP_SIZE = 12 + 8, 2, 8  # GROUP_SIZE: group-components in the profile
CHUNKS = 12 // PLANES_PER_JOB + 8 // PLANES_PER_JOB
# The plugin's --comment for a submission of the profile's group "denoise" of denoise_chunk jobs,
# and of its group "train" of train_groups jobs.
GROUP_COMMENT = "rule_denoise_denoise_chunk"
TRAIN_COMMENT = "rule_train_train_groups"
GPU_RULES = ("train_groups", "denoise_chunk")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Environment for SLURM's commands, with the cluster up; stopped after the module."""
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        skip_unless_in_ci(f"SLURM not installed ({', '.join(missing)}; cluster.sh install)")
    if os.geteuid() != 0:
        skip_unless_in_ci("the test cluster needs root")
    directory = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SLURM_CONF": str(directory / "etc" / "slurm.conf")}
    try:
        started = subprocess.run([str(CLUSTER_SCRIPT), "start", str(directory)], env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
        if started.returncode != 0:
            pytest.fail(f"the SLURM test cluster did not start:\n{started.stderr[-4000:]}")
        yield env
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(directory)], env=env,
                       capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Test config (inputs, tiny schedule, resources) shared by every run."""
    folder = tmp_path_factory.mktemp("inputs")
    cells = synthetic_stack(2, 2, 3, 32, seed=1)  # (t, c, z, y, x): 12 planes, uint16
    tifffile.imwrite(folder / "cells.tif", cells.transpose(0, 2, 1, 3, 4), imagej=True,
                     metadata={"axes": "TZCYX"})
    write_ome_zarr(folder / "tissue.ome.zarr", synthetic_stack(2, 2, 2, 32, seed=2,
                                                                dtype=np.uint8))  # 8 planes
    config = {
        "inputs": [str(folder / "cells.tif"), str(folder / "tissue.ome.zarr")],
        "denoise": {"overrides": {"steps": 2, "crop_size": 16, "batch_size": 1}, "seed": 3,
                    "planes_per_job": PLANES_PER_JOB, **DENOISE},
        "output": OUTPUT,
    }  # fmt: skip
    path = folder / "test-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir, config, *args, env=None, background=False):
    """``snakemake -d workdir --configfile config ...`` from the repository root."""
    command = [sys.executable, "-m", "snakemake", "-d", str(workdir), "--configfile",
               str(config), *args]  # fmt: skip
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    return done.returncode, done.stdout + done.stderr


# Seconds before the first status check: the profile's 20 suit a real cluster; a test wants 2.
PROFILE = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2")


def run_id(output: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", output)[1]


def sacct(env, *args) -> list[dict]:
    fields = "JobID,JobName%60,Comment%80,Partition,ReqMem,Timelimit,AllocTRES%80,State"
    done = subprocess.run(["sacct", "-X", "-P", "-n", f"--format={fields}", *args], env=env,
                          capture_output=True, text=True, check=True)
    names = [f.split("%")[0] for f in fields.split(",")]
    return [dict(zip(names, line.split("|"), strict=True))
            for line in done.stdout.splitlines() if line]  # fmt: skip


def seconds(duration: str) -> int:
    """A SLURM duration ([D-][HH:]MM:SS, as sacct and squeue print them) in seconds."""
    days, _, clock = duration.rpartition("-")
    hours, mins, secs = ([0] + [int(x) for x in clock.split(":")])[-3:]
    return ((int(days or 0) * 24 + hours) * 60 + mins) * 60 + secs


def minutes(duration: str) -> int:
    return seconds(duration) // 60


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of an OME-Zarr store (all pyramid levels), by path."""
    found = {}

    def walk(group, prefix=""):
        for name, array in group.arrays():
            found[prefix + name] = array[...]
        for name, child in group.groups():
            walk(child, f"{prefix}{name}/")

    walk(zarr.open_group(str(store), mode="r"))
    return found


def leftovers(results: Path) -> list[str]:
    """Files a finished run must not leave: chunk files, and temporary (hidden) stores."""
    chunks = results / ".fm2s" / "chunks"
    found = [str(p) for p in chunks.rglob("*") if p.is_file()] if chunks.exists() else []
    found += [str(p) for p in results.iterdir() if p.name.startswith(".") and p.name != ".fm2s"]
    return found


@pytest.fixture(scope="module")
def slurm_run(cluster, inputs, tmp_path_factory):
    """One complete run through the profile: (workdir, its output, sacct rows of the run)."""
    workdir = tmp_path_factory.mktemp("slurm-run")
    started = time.monotonic()
    code, output = snakemake(workdir, inputs, *PROFILE, env=cluster)
    assert code == 0, output[-6000:]
    print(f"SLURM run: {time.monotonic() - started:.0f} s")
    rows = sacct(cluster, f"--name={run_id(output)}")
    print("\n".join(" | ".join(r.values()) for r in rows))
    return workdir, output, rows


@pytest.fixture(scope="module")
def local_arrays(inputs, tmp_path_factory):
    """The same inputs and settings through the local executor (no SLURM at all)."""
    workdir = tmp_path_factory.mktemp("local-run")
    code, output = snakemake(workdir, inputs, "--cores", "2")
    assert code == 0, output[-6000:]
    return {name: store_arrays(workdir / "results" / f"{name}.denoised.ome.zarr")
            for name in ("cells", "tissue")}  # fmt: skip


def by_rule(rows) -> dict[str, list[dict]]:
    """sacct rows by the rule named in the plugin's --comment (``denoise_chunk`` for groups)."""
    rules: dict[str, list[dict]] = {}
    for row in rows:
        comment = row["Comment"]
        match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment)
        assert match, f"job {row['JobID']} has no rule in its comment: {comment!r}"
        rule = {GROUP_COMMENT: "denoise_chunk", TRAIN_COMMENT: "train_groups"}.get(comment,
                                                                                   match[1])
        rules.setdefault(rule, []).append(row)
    return rules


def test_every_job_went_through_sbatch(slurm_run):
    workdir, output, rows = slurm_run
    rules = by_rule(rows)
    assert {"train_groups", "denoise_chunk", "assemble_ome_zarr", "reformat_ome_zarr"} <= set(
        rules), rules
    assert all(row["State"] == "COMPLETED" for row in rows), rows
    assert all(row["JobName"] == run_id(output) for row in rows)
    # One SLURM job per submission that Snakemake reported, and nothing ran locally but `all`.
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert sorted(submitted, key=int) == sorted((row["JobID"] for row in rows), key=int)
    assert len(rules["assemble_ome_zarr"]) == len(rules["reformat_ome_zarr"]) == 2
    assert re.findall(r"^localrule (\w+):", output, re.M) == ["all"]


def test_denoise_jobs_got_the_gpu_and_others_did_not(slurm_run):
    workdir, _, rows = slurm_run
    rules = by_rule(rows)
    for rule, jobs in rules.items():
        for job in jobs:
            has_gpu = "gres/gpu=1" in job["AllocTRES"]
            assert has_gpu == (rule in GPU_RULES), (rule, job)
    # What each denoise job saw: recorded in the store's provenance by the chunk jobs.
    denoise_ids = {job["JobID"] for job in rules["denoise_chunk"]}
    for name in ("cells", "tissue"):
        path = workdir / "results" / f"{name}.denoised.ome.zarr"
        record = zarr.open_group(str(path), mode="r").attrs["fm2s"]["workflow"]
        assert record["cuda_visible_devices"] == ["0"], record
        assert record["slurm_jobs"] and set(record["slurm_jobs"]) <= denoise_ids, (
            record, denoise_ids)
        info = subprocess.run([sys.executable, "-m", "fm2s", "info", str(path)],
                              capture_output=True, text=True, check=True).stdout
        assert f"slurm:     jobs {', '.join(record['slurm_jobs'])}" in info, info
    logs = sorted((workdir / "results" / "logs" / "denoise_chunk").rglob("*.log"))
    assert len(logs) == CHUNKS
    logs += sorted((workdir / "results" / "logs" / "train_groups").rglob("*.log"))
    assert len(logs) == CHUNKS + 2  # a training job per input (two groups of <= 16 planes)
    for log in logs:
        assert re.search(r"SLURM job \d+, CUDA_VISIBLE_DEVICES=0\)", log.read_text()), log


def test_many_planes_became_few_slurm_jobs(slurm_run):
    _, output, rows = slurm_run
    denoise = by_rule(rows)["denoise_chunk"]
    assert len(re.findall(r"^\s*rule denoise_chunk:", output, re.M)) == CHUNKS
    assert len(denoise) == -(-CHUNKS // GROUP_SIZE)  # 20 planes, 10 chunk jobs, 2 submissions


def test_profile_resources_reach_sbatch(slurm_run):
    _, output, rows = slurm_run
    rules = by_rule(rows)
    for job in rules["denoise_chunk"]:
        # A group runs its chunk jobs one after another on one GPU: the runtimes add up.
        members = int(re.search(r"mem=(\d+)M", job["AllocTRES"])[1])
        assert job["Partition"] == "gpu"
        assert members == DENOISE["mem_mb"]
        assert minutes(job["Timelimit"]) % DENOISE["runtime"] == 0
        assert DENOISE["runtime"] <= minutes(job["Timelimit"]) <= GROUP_SIZE * DENOISE["runtime"]
    assert sum(minutes(job["Timelimit"]) for job in rules["denoise_chunk"]) == \
        CHUNKS * DENOISE["runtime"]
    for rule in ("assemble_ome_zarr", "reformat_ome_zarr"):
        for job in rules[rule]:
            assert job["Partition"] == "cpu"  # the cluster's default: the profile sets none
            assert job["ReqMem"] == f"{OUTPUT['mem_mb']}M"
            assert minutes(job["Timelimit"]) == OUTPUT["runtime"]


def test_slurm_output_equals_local_output(slurm_run, local_arrays):
    workdir, _, _ = slurm_run
    for name, expected in local_arrays.items():
        found = store_arrays(workdir / "results" / f"{name}.denoised.ome.zarr")
        assert found.keys() == expected.keys()
        for path, array in expected.items():
            assert found[path].dtype == array.dtype
            assert found[path].tobytes() == array.tobytes(), f"{name}: {path} differs"
    assert leftovers(workdir / "results") == []


def running_denoise_job(env, timeout=600) -> str:
    """Id of a denoise group job once it has run for a few seconds (its chunks mid-way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%M"], env=env,
                                 capture_output=True, text=True, check=True).stdout
        for line in listing.splitlines():
            job, comment, elapsed = line.split("|")
            if comment == GROUP_COMMENT and seconds(elapsed) >= 5:
                return job
        time.sleep(0.5)
    pytest.fail("no denoise job ran")


def test_scancel_fails_visibly_and_a_rerun_completes(cluster, inputs, local_arrays,
                                                     tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cancelled-run")
    args = PROFILE  # as shipped: a cancelled job is not resubmitted
    run = snakemake(workdir, inputs, *args, env=cluster, background=True)
    try:
        job = running_denoise_job(cluster)
        subprocess.run(["scancel", job], env=cluster, check=True)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(60)
    assert run.returncode != 0, output[-4000:]
    assert re.search(rf"{job}.*CANCELLED|CANCELLED.*{job}", output), output[-4000:]
    states = {row["JobID"]: row["State"] for row in sacct(cluster, f"--name={run_id(output)}")}
    assert states[job].startswith("CANCELLED"), states
    assert not re.search(r"Trying to restart|resubmit", output, re.I), output[-4000:]
    # The chunks the cancelled group had finished are kept (written whole, then renamed).
    kept = sorted((workdir / "results/.fm2s/chunks").rglob("chunk-*.npz"))
    print(f"chunks kept after the cancel: {len(kept)} of {CHUNKS}")

    code, rerun = snakemake(workdir, inputs, *args, env=cluster)
    assert code == 0, rerun[-6000:]
    redone = set(re.findall(r"output: (results/\.fm2s/chunks/\S+\.npz)", rerun))
    assert redone and not redone & {str(p.relative_to(workdir)) for p in kept}, (redone, kept)
    for name, expected in local_arrays.items():
        found = store_arrays(workdir / "results" / f"{name}.denoised.ome.zarr")
        assert {p: a.tobytes() for p, a in found.items()} == \
            {p: a.tobytes() for p, a in expected.items()}, name
    assert leftovers(workdir / "results") == []
    code, dry = snakemake(workdir, inputs, "-n", *PROFILE, env=cluster)
    assert code == 0 and "Nothing to be done" in dry, dry[-3000:]


def scontrol_job(env, job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (fields such as JobState, Restarts, Requeue)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                          text=True, check=True).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def test_a_node_failure_is_not_requeued_and_a_rerun_completes(cluster, inputs, local_arrays,
                                                              tmp_path_factory):
    """The node goes down under a denoise job (issue 40): SLURM must not requeue the job by
    itself (the cluster has SLURM's default JobRequeue=1) while the rerun submits it again."""
    config = yaml.safe_load(inputs.read_text())
    config["inputs"] = config["inputs"][:1]  # cells: 6 chunks, one group submission, so that
    one = tmp_path_factory.mktemp("node-failure-config") / "test-config.yaml"  # the run ends
    one.write_text(yaml.safe_dump(config))  # after it: the plugin excludes the failed node
    workdir = tmp_path_factory.mktemp("node-failure")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                          check=True).stdout.strip()
    run = snakemake(workdir, one, *PROFILE, env=cluster, background=True)
    try:
        job = running_denoise_job(cluster)
        assert scontrol_job(cluster, job)["Requeue"] == "0"  # sbatch --no-requeue
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down",
                        "reason=fm2s-test-node-failure"], env=cluster, check=True)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(60)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], env=cluster,
                       check=False)
    assert run.returncode != 0, output[-4000:]
    assert "DUE TO NODE FAILURE" in output, output[-4000:]
    assert "nodes failed during job execution and were excluded" in output, output[-4000:]
    record = scontrol_job(cluster, job)
    print(f"node failure: job {job}: " + " ".join(
        f"{k}={record.get(k)}" for k in ("JobState", "Requeue", "Restarts")))
    assert record["JobState"] == "NODE_FAIL" and record["Restarts"] == "0", record
    # With the node back, nothing of the failed run comes back to life beside the rerun's jobs.
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], env=cluster, capture_output=True,
                            text=True, check=True).stdout.split()
    assert queued == [], queued
    code, rerun = snakemake(workdir, one, *PROFILE, env=cluster)
    assert code == 0, rerun[-6000:]
    found = store_arrays(workdir / "results" / "cells.denoised.ome.zarr")
    assert {p: a.tobytes() for p, a in found.items()} == \
        {p: a.tobytes() for p, a in local_arrays["cells"].items()}
    assert leftovers(workdir / "results") == []
