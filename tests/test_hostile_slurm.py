"""The SLURM profile and a node failure (issue 40, defect 4): SLURM must never requeue a job
by itself while Snakemake, or the next run, submits the same job again (two writers of one
store). The profile passes --no-requeue on every submission; checked here on the sbatch calls
`snakemake --profile slurm` makes (stand-in SLURM commands that record them), and on a real
node failure in tests/slurm/test_slurm.py."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs pip install -e '.[workflow]'")
import yaml  # noqa: E402  (a dependency of snakemake)

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("sbatch", "sacct", "sacctmgr", "squeue", "scontrol", "sinfo", "scancel")


def test_the_profile_chooses_no_requeue():
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile.get("slurm-no-requeue") is True
    assert not profile.get("slurm-requeue")
    assert profile.get("retries") == 0  # a failed job is resubmitted by a rerun only


def test_every_submission_asks_slurm_not_to_requeue(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in COMMANDS:  # each records its arguments and fails: no job ever runs
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {shlex.quote(str(calls))}\n'
                          "exit 1\n")
        script.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    tifffile.imwrite(workdir / "cells.tif", np.zeros((2, 32, 32), np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    config = workdir / "test-config.yaml"
    config.write_text(yaml.safe_dump({"inputs": [str(workdir / "cells.tif")],
                                      "report": {"enabled": False}}))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "-d", str(workdir), "--configfile",
               str(config), "--profile", "slurm", "--slurm-init-seconds-before-status-checks",
               "1"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    submissions = [line.split() for line in calls.read_text().splitlines()
                   if line.startswith("sbatch ")]  # fmt: skip
    assert submissions, (done.stdout + done.stderr)[-3000:]
    for words in submissions:
        options = words[: words.index(next(w for w in words if w.startswith("--wrap")))]
        assert "--no-requeue" in options and "--requeue" not in options, options
