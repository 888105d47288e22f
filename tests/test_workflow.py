"""The Snakemake workflow, run through Snakemake's command line on tiny synthetic stacks.

Every run uses a temporary working directory (``-d``), a config file holding only overrides
of the schema defaults, and a tiny schedule (2 steps on 16 x 16 crops) on the CPU.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

pytest.importorskip("snakemake", reason="the workflow needs pip install -e '.[workflow]'")
import yaml  # noqa: E402  (a dependency of snakemake)

from fm2s._provenance import PLANES_GROUP, provenance  # noqa: E402
from fm2s.ome import open_ome_zarr, write_ome_zarr  # noqa: E402
from fm2s.pipeline import denoise_stack  # noqa: E402
from fm2s.settings import make_settings  # noqa: E402
from fm2s.synthetic import synthetic_stack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = {"steps": 2, "crop_size": 16, "batch_size": 1}
BASE = {"denoise": {"overrides": TINY, "planes_per_job": 4, "device": "cpu", "seed": 3}}
CELLS = synthetic_stack(2, 2, 2, 32, seed=1)  # (t, c, z, y, x) uint16, 8 planes
TISSUE = synthetic_stack(2, 3, 2, 32, seed=2, dtype=np.uint8)  # 12 planes


def run(workdir, *args, config=None, cwd=None, check=True):
    """``snakemake -d workdir --configfile ...`` in a subprocess; returns its output."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "-d", str(workdir), "--cores", "2", *args]  # fmt: skip
    if config is not None:
        path = Path(workdir) / "test-config.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(path)]
    done = subprocess.run(command, cwd=cwd or workdir, capture_output=True, text=True,
                          timeout=600, check=False)
    output = done.stdout + done.stderr
    if check and done.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{output[-5000:]}")
    return output if check else (done.returncode, output)


def planned(workdir, config, *args, cwd=None):
    """Jobs a dry run would run, as {rule: count} (empty: nothing to do)."""
    output = run(workdir, "-n", *args, config=config, cwd=cwd)
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def config(**sections):
    merged = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def write_inputs(folder):
    tifffile.imwrite(folder / "cells.tif", CELLS.transpose(0, 2, 1, 3, 4), imagej=True,
                     resolution=(5.0, 5.0), metadata={"axes": "TZCYX", "spacing": 0.5,
                                                      "unit": "um"})  # fmt: skip
    write_ome_zarr(folder / "tissue.ome.zarr", TISSUE)


def engine_result(path, seed=3):
    """What ``fm2s denoise STACK OUT.ome.zarr`` makes of a stack (fm2s.pipeline.denoise_stack:
    the stack engine, shared networks and all), with the jobs' one thread (denoise.threads)."""
    threads = torch.get_num_threads()
    out = Path(tempfile.mkdtemp()) / "direct.ome.zarr"
    try:
        denoise_stack(path, out, settings=make_settings(**TINY), seed=seed, device="cpu",
                      threads=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    return open_ome_zarr(out)[0][0].compute()


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """A TIFF and an OME-Zarr input with t, c, z > 1, denoised 4 planes per job."""
    workdir = tmp_path_factory.mktemp("main")
    write_inputs(workdir)
    cfg = config(inputs=["cells.tif", "tissue.ome.zarr"])
    started = time.perf_counter()
    log = run(workdir, config=cfg)
    return workdir, cfg, log, time.perf_counter() - started


def test_outputs_equal_the_engine_with_metadata_and_provenance(main_run):
    workdir, cfg, log, _ = main_run
    for name, source, data in (("cells", "cells.tif", CELLS),
                               ("tissue", "tissue.ome.zarr", TISSUE)):
        store = workdir / "results" / f"{name}.denoised.ome.zarr"
        levels, attrs = open_ome_zarr(store)
        assert [a.shape for a in levels] == [
            data.shape, (*data.shape[:3], 16, 16), (*data.shape[:3], 8, 8),
        ]  # fmt: skip
        assert levels[0].dtype == data.dtype
        np.testing.assert_array_equal(levels[0].compute(), engine_result(workdir / source))
        record = provenance(store)
        assert record["settings"] == make_settings(**TINY).to_dict() and record["seed"] == 3
        assert record["workflow"]["config"]["denoise"]["planes_per_job"] == 4
        assert record["workflow"]["config"]["inputs"] == cfg["inputs"]
        assert len(record["plane_seconds"]) == int(np.prod(data.shape[:3]))
        assert record["output"]["ngff_version"] == "0.4" and record["device"] == "cpu"
        # Nothing but the store's own files in it (zarr warns on foreign entries): the levels
        # and the group that holds the per-plane provenance.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert {name for name, _ in zarr.open_group(str(store), mode="r").members()} == {
                "0", "1", "2", PLANES_GROUP}
        assert not (store / ".snakemake_timestamp").exists()
    cells = open_ome_zarr(workdir / "results/cells.denoised.ome.zarr")[1]
    scale = cells["multiscales"]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[2:] == pytest.approx([0.5, 0.2, 0.2])
    assert provenance(workdir / "results/cells.denoised.ome.zarr")["input"]["format"] == (
        "imagej-tiff")
    # chunk results are temporary; logs and benchmarks are kept per job
    assert not list((workdir / "results/.fm2s/chunks").rglob("*.npz"))
    assert len(list((workdir / "results/logs/denoise_chunk").rglob("*.log"))) == 2 + 3
    assert len(list((workdir / "results/logs/train_groups").rglob("*.log"))) >= 2
    assert list((workdir / "results/.fm2s/models").rglob("*.npz"))  # models are kept
    assert (workdir / "results/benchmarks/assemble_ome_zarr/tissue.tsv").is_file()


def test_rerun_does_nothing_and_settings_change_reruns_denoising(main_run):
    workdir, cfg, _, _ = main_run
    assert planned(workdir, cfg) == {}
    changed = config(inputs=cfg["inputs"], denoise={"overrides": {**TINY, "k_g": 150.0}})
    assert planned(workdir, changed) == {
        "train_groups": 2, "denoise_chunk": 5, "assemble_ome_zarr": 2, "reformat_ome_zarr": 2,
        "qc_report": 1, "all": 1,
    }  # fmt: skip
    assert planned(workdir, config(inputs=cfg["inputs"], denoise={"seed": 4}))["denoise_chunk"] == 5
    # planes_per_job splits the inference only: no network is trained again
    assert "train_groups" not in planned(workdir, config(inputs=cfg["inputs"],
                                                         denoise={"planes_per_job": 3}))


def test_output_options_only_rewrite_the_stores(main_run):
    workdir, cfg, _, _ = main_run
    before = open_ome_zarr(workdir / "results/cells.denoised.ome.zarr")[0][0].compute()
    changed = config(inputs=cfg["inputs"], output={"levels": 2, "ngff_version": "0.5"})
    assert planned(workdir, changed) == {"reformat_ome_zarr": 2, "qc_report": 1, "all": 1}
    run(workdir, config=changed)
    levels, attrs = open_ome_zarr(workdir / "results/cells.denoised.ome.zarr")
    assert attrs["version"] == "0.5" and len(levels) == 2
    np.testing.assert_array_equal(levels[0].compute(), before)
    assert planned(workdir, changed) == {}


def test_planes_per_job_does_not_change_the_result(main_run, tmp_path):
    workdir = main_run[0]
    shutil.copy(workdir / "cells.tif", tmp_path)
    run(tmp_path, config=config(inputs=["cells.tif"], denoise={"planes_per_job": 1}))
    assert len(list((tmp_path / "results/logs/denoise_chunk/cells").glob("*.log"))) == 8
    one, four = (open_ome_zarr(d / "results/cells.denoised.ome.zarr")[0][0].compute()
                 for d in (tmp_path, workdir))
    np.testing.assert_array_equal(one, four)


def test_acquisition_folder_new_file_alone_quiet_period_and_vanished_input(tmp_path):
    folder = tmp_path / "acquired"
    folder.mkdir()
    # File times a day apart from the quiet period, whatever the runs take on a loaded machine.
    day = 86400
    old = time.time() - 10 * day

    def acquire(name, data, age=old):
        tifffile.imwrite(folder / name, data, imagej=True, metadata={"axes": "ZYX"})
        os.utime(folder / name, (age, age))

    acquire("day1.tif", CELLS[0, 0])
    cfg = config(acquisition={"folder": "acquired", "quiet_seconds": day, "settle_seconds": 0})
    run(tmp_path, config=cfg)
    assert (tmp_path / "results/day1.denoised.ome.zarr").is_dir()
    acquire("day2.tif", CELLS[1, 0])
    acquire("day3.tif", CELLS[1, 1], age=time.time())  # still being written
    (folder / "day1.tif").unlink()  # an input that disappears keeps its output
    output = run(tmp_path, config=cfg)
    assert re.search(r"day3.tif is modified \d+ s ago \(quiet period 86400 s\): left for the "
                     r"next run", output)
    assert re.findall(r"rule (\w+):\n(?: +input: .*\n)? +output: results/([\w./-]+)", output) == [
        ("train_groups", ".fm2s/models/day2/training-0.npz"),
        ("denoise_chunk", ".fm2s/chunks/day2/chunk-0.npz"),
        ("assemble_ome_zarr", "day2.denoised.ome.zarr"),
        ("reformat_ome_zarr", ".fm2s/format/day2.json"),
        ("qc_report", "qc/report.html"),
    ]  # fmt: skip
    assert (tmp_path / "results/day1.denoised.ome.zarr").is_dir()
    assert not (tmp_path / "results/day3.denoised.ome.zarr").exists()
    assert planned(tmp_path, cfg) == {}


def test_bad_inputs_fail_their_own_jobs_and_others_complete(tmp_path):
    tifffile.imwrite(tmp_path / "good.tif", CELLS[0, 0], imagej=True, metadata={"axes": "ZYX"})
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really a TIFF")
    cfg = config(inputs=["good.tif", "broken.tif"])
    code, output = run(tmp_path, "--keep-going", config=cfg, check=False)
    assert code != 0
    assert (tmp_path / "results/good.denoised.ome.zarr").is_dir()
    assert not (tmp_path / "results/broken.denoised.ome.zarr").exists()
    logs = tmp_path / "results/logs/train_groups"
    assert "fm2s: error: broken.tif: TIFF file holds no image series" in (
        logs / "broken/training-0.log").read_text()
    assert "broken.tif: TIFF file holds no image series; its training job will fail" in output
    # A listed input that does not exist is refused before anything runs, naming it ...
    code, output = run(tmp_path, config=config(inputs=["good.tif", "missing.ome.tif"]),
                       check=False)
    assert code != 0 and "input missing.ome.tif: no such file or folder" in output
    assert "rule " not in output
    (tmp_path / "good.tif").unlink()  # ... one that disappears after its run keeps its output
    output = run(tmp_path, "-n", config=config(inputs=["good.tif"]))
    assert "good.tif no longer exists; keeping results/good.denoised.ome.zarr" in output
    assert "rule denoise_chunk" not in output and "rule assemble_ome_zarr" not in output
    assert "rule train_groups" not in output


def test_results_written_into_the_acquisition_folder_are_never_inputs(tmp_path):
    folder = tmp_path / "acquired"
    folder.mkdir()
    tifffile.imwrite(folder / "day1.tif", CELLS[0, 0], imagej=True, metadata={"axes": "ZYX"})
    old = time.time() - 86400
    os.utime(folder / "day1.tif", (old, old))
    cfg = config(acquisition={"folder": "acquired", "settle_seconds": 0},
                 output={"root": "acquired"})
    output = run(tmp_path, config=cfg)
    assert "assemble_ome_zarr" in output
    assert (folder / "day1.denoised.ome.zarr").is_dir() and (folder / "qc/report.html").is_file()
    assert planned(tmp_path, cfg) == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"denoise": {"planes_per_job": 0}}, r"planes_per_job'\]"),
        ({"denoise": {"plane_per_job": 8}}, r"'plane_per_job' was unexpected"),
        ({"denoise": {"overrides": {"k_q": 1}}}, r"denoise.preset, recipe or overrides.*: "
                                                 r"unknown setting 'k_q'"),
        ({"inputs": ["a/x.tif", "b/x.ome.zarr"]}, r"would both be written to 'x'"),
        ({"demo": {"enabled": False}}, r"nothing to denoise"),
    ],
)
def test_config_errors_name_the_key(tmp_path, override, message):
    code, output = run(tmp_path, "-n", config={**override}, check=False)
    assert code != 0 and re.search(message, output), output[-2000:]


def test_lint_demo_and_settings_folder(tmp_path):
    assert "Congratulations, your workflow is in a good condition" in run(
        tmp_path, "--lint", config={})
    # the shipped config (no inputs): the synthetic demo, 24 planes in 2 jobs
    default = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert planned(tmp_path, default) == {
        "synth_demo": 1, "train_groups": 2, "denoise_chunk": 2, "assemble_ome_zarr": 1,
        "reformat_ome_zarr": 1, "qc_report": 1, "all": 1,
    }  # fmt: skip
    settings = make_settings(**default["demo"]["overrides"])
    output = run(tmp_path, "-n", config={**default, "output": {"by_settings": True}})
    assert f"results/{settings.digest()[:12]}-seed0/demo.denoised.ome.zarr" in output


def test_slurm_profile_dry_run_asks_gpus_for_denoise_jobs(tmp_path):
    write_inputs(tmp_path)
    cfg = config(inputs=["cells.tif"])
    # typed in the repository root, as documented: `snakemake --profile slurm` finds ./slurm
    output = run(tmp_path, "--profile", "slurm", "-n", config=cfg, cwd=REPO)
    assert "Using profile slurm" in output and "Group job denoise" in output
    jobs = [block for block in output.split("rule ")[1:]
            if block.startswith(("denoise_chunk:", "train_groups:"))]
    assert len(jobs) == 1 + 2  # one training job (two groups of 4 planes), two chunks
    for block in jobs:
        resources = re.search(r"resources: (.*)", block)[1]
        assert "gpu=1" in resources and "slurm_partition=gpu" in resources
    assembly = output.split("rule assemble_ome_zarr:")[1].split("rule ")[0]
    assert "gpu=" not in assembly and "slurm_partition" not in assembly
