"""fm2s.jobs and fm2s.inputs: the workflow's per-job work and its inputs, without Snakemake."""

import importlib
import os
import time

import numpy as np
import pytest
import tifffile
import torch

from fm2s import devices, inputs
from fm2s._provenance import provenance
from fm2s.cli import main
from fm2s.devices import job_device
from fm2s.engine import training_keys
from fm2s.inputs import input_stamp, scan_folder, stack_name
from fm2s.jobs import (
    JobPlan,
    assemble_chunks,
    chunk_ranges,
    denoise_chunk,
    plan_jobs,
    read_chunk_index,
    reformat_store,
    train_groups,
)
from fm2s.ome import open_ome_zarr, write_ome_zarr
from fm2s.pipeline import denoise_stack
from fm2s.prepare import plane_seed
from fm2s.settings import make_settings
from fm2s.stacks import StackError, open_stack
from fm2s.synthetic import synthetic_stack, write_synthetic_stack

JOBS = importlib.import_module("fm2s.jobs")
STACK = synthetic_stack(1, 2, 3, 32, seed=5)  # (t, c, z, y, x) uint16: 6 planes


@pytest.fixture(scope="module")
def tiny():
    return make_settings("confocal", "fast", steps=2, crop_size=16, batch_size=1)


def train_models(source, folder, settings, seed=0, planes_per_job=2):
    """The model files of the workflow's training jobs for `source`."""
    plan = plan_jobs(source, settings, planes_per_job)
    return [train_groups(source, folder / f"training-{i}.npz", settings=settings, groups=groups,
                         seed=seed) for i, groups in enumerate(plan.trainings)]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "TCZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3,
        "Channel": {"Name": ["dna", "actin"]},
    })  # fmt: skip
    return path


def test_stack_names():
    assert stack_name("/data/day1/embryo_03.ome.tif") == "embryo_03"
    assert [stack_name(n) for n in ("a.OME.TIFF", "b.zarr", "c.ome.zarr", "d.png", "tp")] == [
        "a", "b", "c", "d", "tp",
    ]  # fmt: skip
    assert stack_name(".tif") == ".tif"


def test_chunk_ranges_cover_every_plane_once():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_ranges(3, 32) == [(0, 3)]
    with pytest.raises(ValueError, match="planes_per_job"):
        chunk_ranges(3, 0)


def test_input_stamp_follows_every_file_of_a_store(tmp_path):
    store = write_ome_zarr(tmp_path / "in.ome.zarr", STACK)
    before = input_stamp(store)
    assert before == input_stamp(store)
    chunk = next(p for p in store.rglob("*") if p.is_file() and p.parent.name == "0")
    later = time.time() + 5
    os.utime(chunk, (later, later))
    assert input_stamp(store) != before
    assert input_stamp(tmp_path / "gone.tif") == "missing"


def test_scan_folder_leaves_recent_growing_and_hidden_files(tmp_path, monkeypatch):
    old = time.time() - 3600
    for name in ("a.tif", "sub/b.ome.tif", ".hidden.tif", "fresh.tif", "growing.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
        if name != "fresh.tif":
            os.utime(tmp_path / name, (old, old))
    store = write_ome_zarr(tmp_path / "c.ome.zarr", STACK)  # a store, with files inside
    for path in [store, *store.rglob("*")]:
        os.utime(path, (old, old))

    def sleep(seconds):  # a writer appends to growing.tif meanwhile
        with open(tmp_path / "growing.tif", "ab") as fh:
            fh.write(b"more")

    monkeypatch.setattr(inputs.time, "sleep", sleep)
    ready, waiting = scan_folder(tmp_path, ["*.tif", "**/*.ome.tif", "*.zarr"], quiet_seconds=60,
                                 settle_seconds=0.5)
    assert ready == {"a": tmp_path / "a.tif", "c": store, "sub/b": tmp_path / "sub/b.ome.tif"}
    assert "quiet period 60 s" in waiting[tmp_path / "fresh.tif"]
    assert "still being written" in waiting[tmp_path / "growing.tif"]
    assert set(waiting) == {tmp_path / "fresh.tif", tmp_path / "growing.tif"}
    with pytest.raises(FileNotFoundError, match="acquisition folder"):
        scan_folder(tmp_path / "nope", ["*"])


def test_job_device_gives_cuda_only_to_jobs_with_a_gpu(tmp_path, monkeypatch, caplog):
    assert job_device("cpu") == "cpu" and job_device("cuda:1") == "cuda:1"
    assert job_device(gpus=0, environ={}) == "cpu"
    assert job_device(environ={"SLURM_JOB_ID": "7"}) == "cpu"  # SLURM gave no GPU
    assert job_device(environ={"CUDA_VISIBLE_DEVICES": ""}) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert job_device(environ={"CUDA_VISIBLE_DEVICES": "0"}) == "cpu"
    assert ("given a GPU (CUDA_VISIBLE_DEVICES=0) but runs on the CPU: this torch has no CUDA "
            "support") in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(devices, "_gpu_locks", [])
    assert job_device(environ={"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3,5"}) == "cuda:0"
    # outside SLURM, concurrent jobs claim different GPUs (lock files), then share the first
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert [job_device(environ=env, lock_dir=tmp_path) for _ in range(3)] == [
        "cuda:0", "cuda:1", "cuda:0",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-3.lock", "gpu-5.lock"]


def test_chunks_assemble_to_what_denoise_stack_writes(tmp_path, source, tiny):
    expected = denoise_stack(source, tmp_path / "direct.ome.zarr", settings=tiny, seed=7,
                             device="cpu", progress=False)
    models = train_models(source, tmp_path, tiny, seed=7)
    parts = [tmp_path / f"chunk-{i}.npz" for i in range(3)]
    for part, (start, stop) in zip(parts, [(4, 6), (0, 1), (1, 4)], strict=True):
        denoise_chunk(source, part, settings=tiny, models=models, start=start, stop=stop, seed=7)
    index = read_chunk_index(parts[2])
    assert [k.label for k in index["keys"]] == ["0,0,1", "0,0,2", "0,1,0"]
    assert index["seeds"] == [plane_seed(7, (0, 0, 1)), plane_seed(7, (0, 0, 2)),
                              plane_seed(7, (0, 1, 0))]
    assert index["info"]["settings_digest"] == tiny.digest() and index["info"]["device"] == "cpu"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert index["info"]["planes"]["0,1,0"]["network"] == "group-1"

    out = assemble_chunks(source, parts, tmp_path / "cells.denoised.ome.zarr", settings=tiny,
                          seed=7, workflow={"config": {"denoise": {"seed": 7}}})
    got, want = open_ome_zarr(out), open_ome_zarr(expected)
    for a, b in zip(got[0], want[0], strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())
    assert got[1]["omero"]["channels"][1]["label"] == "actin"
    record, direct = provenance(out), provenance(expected)
    for key in ("settings", "settings_digest", "seed", "seed_derivation", "output", "networks",
                "data_range"):
        assert record[key] == direct[key], key
    assert sorted(record["networks"]) == ["group-0", "group-1"]
    for key in ("sha256", "pixels_sha256", "shape_tczyx", "metadata"):
        assert record["input"][key] == direct["input"][key], key
    assert set(record["plane_seconds"]) == set(direct["plane_seconds"])
    assert record["workflow"]["config"] == {"denoise": {"seed": 7}}
    assert record["workflow"]["chunks"] == 3 and record["workflow"]["tile"] == 2048


def test_job_plan_trains_whole_groups_and_names_each_chunk_its_models():
    keys = [(t, c, z) for t in range(3) for c in range(2) for z in range(4)]
    settings = make_settings(group_size=5)
    plan = JobPlan.of(keys, settings, planes_per_job=7)
    assert [(g.channel, len(g.keys)) for g in plan.groups] == [(0, 5), (0, 5), (0, 2), (1, 5),
                                                               (1, 5), (1, 2)]
    assert plan.trainings == [[0, 1, 2], [3, 4, 5]]  # whole groups, TRAINING_JOB_PLANES at most
    assert plan.chunks[0] == (0, 7) and plan.chunk_trainings[0] == [0, 1]
    assert plan.groups[0].keys[:2] == ((0, 0, 0), (0, 0, 1))  # t, z order within a channel
    # large planes: groups as large, their training planes fewer
    assert [len(training_keys(g, (2048, 2048))) for g in plan.groups] == [4, 4, 2, 4, 4, 2]
    assert [len(training_keys(g, (64, 64))) for g in plan.groups] == [5, 5, 2, 5, 5, 2]
    assert training_keys(plan.groups[0], (2048, 2048)) == ((0, 0, 0), (0, 0, 1), (0, 0, 3),
                                                          (1, 0, 0))  # evenly spaced
    alone = JobPlan.of(keys, settings.replace(group_size=1), planes_per_job=32)
    assert len(alone.groups) == 24 and alone.trainings == [list(range(16)), list(range(16, 24))]


def test_a_model_of_other_settings_or_version_is_refused(tmp_path, source, tiny, monkeypatch):
    from fm2s import engine
    from fm2s.engine import ModelError, StackModel

    models = train_models(source, tmp_path, tiny)
    with pytest.raises(ModelError, match="model trained with seed 0, not 1"):
        denoise_chunk(source, tmp_path / "c.npz", settings=tiny, models=models, seed=1)
    with pytest.raises(ModelError, match="model trained with settings"):
        denoise_chunk(source, tmp_path / "c.npz", settings=tiny.replace(k_g=1.0), models=models)
    model = StackModel.load(models[0])
    with monkeypatch.context() as patch:
        patch.setattr(engine, "__version__", "9.9.9")
        with pytest.raises(ModelError, match=r"made by fm2s .*, this is fm2s 9\.9\.9"):
            StackModel.load(models[0])
    assert model.planes["0,0,0"]["network"] == "group-0"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="junk.npz: not an fm2s model file"):
        StackModel.load(tmp_path / "junk.npz")
    assert not (tmp_path / "c.npz").exists()


def test_assemble_refuses_mismatched_chunks(tmp_path, source, tiny):
    first, rest = tmp_path / "a.npz", tmp_path / "b.npz"
    models = train_models(source, tmp_path, tiny)
    denoise_chunk(source, first, settings=tiny, models=models, start=0, stop=2)
    denoise_chunk(source, rest, settings=tiny, models=models, start=2, stop=None)
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(StackError, match=r"missing t,c,z \['0,0,0', '0,0,1'\]"):
        assemble_chunks(source, [rest], out, settings=tiny)
    with pytest.raises(StackError, match="also in"):
        assemble_chunks(source, [first, first, rest], out, settings=tiny)
    with pytest.raises(StackError, match="seed 0, expected 1"):
        assemble_chunks(source, [first, rest], out, settings=tiny, seed=1)
    with pytest.raises(StackError, match="settings_digest"):
        assemble_chunks(source, [first, rest], out, settings=tiny.replace(k_g=100.0))
    changed = STACK.copy()
    changed[0, 1, 2] += 1
    tifffile.imwrite(source, changed, ome=True, metadata={"axes": "TCZYX"})
    with pytest.raises(StackError, match=r"cells\.ome\.tif: changed since chunk .* was denoised"):
        assemble_chunks(source, [first, rest], out, settings=tiny)
    assert not out.exists()


def test_denoise_chunk_errors_name_the_input(tmp_path, source, tiny):
    models = train_models(source, tmp_path, tiny)
    with pytest.raises(StackError, match=r"cells\.ome\.tif: planes 4:9 out of range.*6 planes"):
        denoise_chunk(source, tmp_path / "c.npz", settings=tiny, models=models, start=4, stop=9)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        denoise_chunk(tmp_path / "missing.tif", tmp_path / "c.npz", settings=tiny, models=models)
    assert not (tmp_path / "c.npz").exists()


def test_reformat_rewrites_levels_and_version_without_denoising(tmp_path, source, tiny,
                                                                 monkeypatch):
    part = tmp_path / "all.npz"
    denoise_chunk(source, part, settings=tiny, models=train_models(source, tmp_path, tiny))
    out = assemble_chunks(source, [part], tmp_path / "out.ome.zarr", settings=tiny)
    before = open_ome_zarr(out)[0][0].compute()
    assert reformat_store(out, levels=3, ngff_version="0.4") is False
    monkeypatch.setattr(JOBS, "apply_model", None)  # nothing may denoise
    monkeypatch.setattr(JOBS, "train_stack", None)
    assert reformat_store(out, levels=2, ngff_version="0.5", workflow={"config": {"x": 1}})
    levels, attrs = open_ome_zarr(out)
    assert attrs["version"] == "0.5" and len(levels) == 2
    np.testing.assert_array_equal(levels[0].compute(), before)
    assert levels[1].shape == (1, 2, 3, 16, 16)
    assert attrs["omero"]["channels"][0]["label"] == "dna"
    record = provenance(out)
    assert record["output"]["levels"] == 2 and record["output"]["ngff_version"] == "0.5"
    assert record["workflow"]["reformatted"]["from"]["levels"] == 3
    assert record["workflow"]["config"] == {"x": 1}
    with open_stack(out) as stack:
        assert stack.metadata.pixel_sizes["x"] == pytest.approx(0.3)


def test_synthetic_stack_is_deterministic_and_noisy(tmp_path):
    a, b = synthetic_stack(2, 2, 2, 32, seed=1), synthetic_stack(2, 2, 2, 32, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint16 and a.shape == (2, 2, 2, 32, 32)
    assert not np.array_equal(a[0, 0, 0], a[0, 0, 1])  # every plane has its own noise
    assert not np.array_equal(a, synthetic_stack(2, 2, 2, 32, seed=2))
    path = write_synthetic_stack(tmp_path / "demo.ome.tif", t=2, c=2, z=2, size=32, seed=1)
    with open_stack(path) as stack:
        assert stack.metadata.shape == (2, 2, 2, 32, 32)
        assert stack.metadata.channel_names == ["nuclei", "filaments"]
        np.testing.assert_array_equal(stack.data.compute(), a)
    with pytest.raises(FileExistsError):
        write_synthetic_stack(path)


def test_cli_synth_and_denoise_chunk(tmp_path, tiny, capsys):
    demo = tmp_path / "demo.ome.tif"
    assert main(["synth", str(demo), "--t", "1", "--c", "1", "--z", "2", "--size", "32"]) == 0
    assert main(["synth", str(demo)]) == 2
    assert "output exists" in capsys.readouterr().err
    out, model = tmp_path / "c.npz", tmp_path / "m.npz"
    assert main(["train-groups", str(demo), str(model), "--groups", "0", "--settings-json",
                 tiny.to_json(), "--device", "cpu"]) == 0
    args = ["denoise-chunk", str(demo), str(out), "--settings-json", tiny.to_json(),
            "--device", "cpu", "--models", str(model)]
    assert main([*args, "--planes", "1:2"]) == 0
    assert [k.label for k in read_chunk_index(out)["keys"]] == ["0,0,1"]
    assert main([*args, "--planes", "1-2"]) == 2
    assert "expected START:STOP or all" in capsys.readouterr().err
    assert main([*args[:3], "--settings-json", '{"k_g": -1}', "--models", str(model)]) == 2
    assert "--settings-json" in capsys.readouterr().err
