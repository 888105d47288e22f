"""A nightly run whose inputs vanish or are renamed while it runs (issue 40, defect 3).

The inputs are changed at a fixed point of the run, not after a delay: a ``sitecustomize``
module on the jobs' PYTHONPATH deletes one input and renames another when the first job
process starts (whichever job that is), so every later job of those inputs finds them gone.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("snakemake", reason="the workflow needs pip install -e '.[workflow]'")
import yaml  # noqa: E402  (a dependency of snakemake)

REPO = Path(__file__).resolve().parents[1]
TINY = {"steps": 2, "crop_size": 16, "batch_size": 1}
PLANES = np.random.default_rng(3).integers(0, 4000, size=(2, 32, 32), dtype=np.uint16)

HOOK = """
import os, sys
from pathlib import Path

# Only in job processes (Snakemake runs each job's script from .snakemake/scripts/), once.
if any(".snakemake/scripts/" in arg for arg in sys.argv):
    folder = Path(os.environ["FM2S_TEST_FOLDER"])
    try:
        os.close(os.open(folder.parent / "hook-done", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    else:
        (folder / "vanish.tif").unlink()
        (folder / "rename.tif").rename(folder / "renamed.tif")
"""


def snakemake(workdir, *args, env=None):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "-d", str(workdir), "--cores", "2", "--configfile",
               str(workdir / "test-config.yaml"), *args]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_inputs_that_vanish_during_a_run_fail_their_own_jobs_only(tmp_path):
    folder = tmp_path / "acquired"
    folder.mkdir()
    for name in ("a", "b", "vanish", "rename"):
        tifffile.imwrite(folder / f"{name}.tif", PLANES, imagej=True, metadata={"axes": "ZYX"})
    (tmp_path / "test-config.yaml").write_text(yaml.safe_dump({
        "acquisition": {"folder": "acquired", "quiet_seconds": 0, "settle_seconds": 0},
        "denoise": {"overrides": TINY, "planes_per_job": 2, "device": "cpu"},
        "report": {"enabled": False},
    }))  # fmt: skip
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(HOOK))
    pythonpath = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": pythonpath, "FM2S_TEST_FOLDER": str(folder)}
    # What the cron line of docs/workflow.md runs (the local profile's --keep-going).
    code, output = snakemake(tmp_path, "--keep-going", "--latency-wait", "1", env=env)
    assert (tmp_path / "hook-done").exists()
    assert code != 0
    results = tmp_path / "results"
    stores = sorted(p.name for p in results.glob("*.denoised.ome.zarr"))
    assert stores == ["a.denoised.ome.zarr", "b.denoised.ome.zarr"], output[-4000:]
    assert "Missing files after" not in output and "IncompleteFilesException" not in output
    failed = [p for p in (results / "logs").rglob("*.log") if "fm2s: error:" in p.read_text()]
    assert failed, output[-4000:]
    for log in failed:  # each failing job: one line naming the input that is gone
        errors = [line for line in log.read_text().splitlines() if line.startswith("fm2s:")]
        assert len(errors) == 1 and "no such file or folder" in errors[0], errors
        assert "vanish.tif" in errors[0] or "rename.tif" in errors[0]
    # Nothing whole is left marked incomplete: the next plain run neither stops nor redoes a or
    # b; it picks up the renamed file as a new input, and the vanished one when it reappears.
    tifffile.imwrite(folder / "vanish.tif", PLANES, imagej=True, metadata={"axes": "ZYX"})
    code, output = snakemake(tmp_path, "-n")
    assert code == 0 and "IncompleteFilesException" not in output, output[-4000:]
    planned = re.findall(r"rule \w+:\n(?: +input: .*\n)? +output: results/([\w./-]+)", output)
    assert planned and not [p for p in planned if re.search(r"\b[ab]\b", p)], planned
    code, output = snakemake(tmp_path)
    assert code == 0, output[-4000:]
    stores = sorted(p.name for p in results.glob("*.denoised.ome.zarr"))
    assert stores == [f"{n}.denoised.ome.zarr" for n in ("a", "b", "renamed", "vanish")]
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == [".fm2s"]
