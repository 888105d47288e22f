"""Workflow job scripts under a full disk (issue 40, defect 7): the job's log gets one line
naming the output and the problem, as the command line gives, the job exits 2 and leaves no
partial output. Each script runs as Snakemake runs it (a `snakemake` object in its globals),
with the library call it makes replaced by one that fills the disk halfway through writing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fm2s.settings import make_settings

REPO = Path(__file__).resolve().parents[1]

RUNNER = """
import errno, json, os, runpy, sys, types
from pathlib import Path
sys.path.insert(0, {repo!r})
import importlib
from fm2s.outputs import atomic_output

spec = json.loads({spec!r})

def full(*args, **kwargs):
    with atomic_output(spec["output"], overwrite=True) as tmp:
        (tmp / "0").mkdir(parents=True)
        (tmp / "0" / "0").write_bytes(b"half a chunk")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "0" / "0"))

module, name = spec["patch"].rsplit(".", 1)
setattr(importlib.import_module(module), name, full)
ns = lambda **kw: types.SimpleNamespace(**kw)
snakemake = ns(
    scriptdir={scriptdir!r}, log=[spec["log"]], output=[spec["output"]],
    input=ns(chunks=["a.npz"], store=spec["output"]), config=spec["config"],
    params=ns(**spec["params"]),
)
runpy.run_path(spec["script"], init_globals={{"snakemake": snakemake}}, run_name="__main__")
"""
OPTIONS = {"levels": 1, "ngff_version": "0.4", "tile": 64}
PARAMS = {
    "source": "in.tif", "settings": make_settings().to_json(), "seed": 0, "series": 0,
    "pages_as": "z", "data_range": None, "planes_per_job": 1, **OPTIONS,
    "stores": {"x": "x.denoised.ome.zarr"}, "sources": {"x": "in.tif"}, "noise_planes": 1,
    "zoom": 4, "job_benchmarks": {},
}  # fmt: skip


@pytest.mark.parametrize(("script", "patch", "output"), [
    ("assemble_ome_zarr.py", "fm2s.jobs.assemble_chunks", "x.denoised.ome.zarr"),
    ("reformat_ome_zarr.py", "fm2s.jobs.reformat_store", "x.denoised.ome.zarr"),
    ("qc_report.py", "fm2s.report.write_run_report", "qc/report.html"),
])  # fmt: skip
def test_a_full_disk_in_a_job_is_one_line_in_its_log(tmp_path, script, patch, output):
    out = tmp_path / "results" / output
    log = tmp_path / "results" / "logs" / "job.log"
    log.parent.mkdir(parents=True)
    scripts = REPO / "workflow" / "scripts"
    spec = {"script": str(scripts / script), "patch": patch, "output": str(out), "log": str(log),
            "config": {"output": OPTIONS}, "params": PARAMS}
    code = RUNNER.format(repo=str(REPO), scriptdir=str(scripts), spec=json.dumps(spec))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
    text = log.read_text()
    assert done.returncode == 2, (done.stderr[-2000:], text[-2000:])
    errors = [line for line in text.splitlines() if "INFO" not in line]
    assert errors == [f"fm2s: error: {out}: No space left on device"], text[-3000:]
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
