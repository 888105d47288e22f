"""fm2s.runconfig: a run's inputs, settings and settings folder from a workflow config."""

import copy
import os
from pathlib import Path

import pytest
import yaml

from fm2s.runconfig import (
    ConfigError,
    find_inputs,
    is_run_output,
    run_settings,
    settings_folder,
    vanished_inputs,
)
from fm2s.settings import make_settings

SHIPPED = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())


def config(**sections):
    out = copy.deepcopy(SHIPPED)
    for key, value in sections.items():
        out[key] = {**out[key], **value} if isinstance(out[key], dict) else value
    return out


def test_the_shipped_config_runs_the_demo_with_its_own_overrides():
    run = find_inputs(SHIPPED)
    assert run.demo == "demo" and run.inputs == {"demo": Path("resources/demo.ome.tif")}
    demo = config(demo={"overrides": {"steps": 300}})
    assert run_settings(demo, demo=True).samples == 300
    assert run_settings(demo, demo=False).samples == make_settings().samples
    with pytest.raises(ConfigError, match="nothing to denoise"):
        find_inputs(config(demo={"enabled": False}))


def test_inputs_and_folder_are_named_and_collisions_refused(tmp_path):
    folder = tmp_path / "acq"
    (folder / "results").mkdir(parents=True)
    old = 1_000_000.0
    for name in ("a.tif", "b.ome.tif", "results/x.tif"):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (old, old))
    cfg = config(inputs=["/data/day1/embryo.ome.tif"],
                 acquisition={"folder": str(folder), "patterns": ["**/*.tif"],
                              "settle_seconds": 0},
                 output={"root": str(folder / "results")})
    run = find_inputs(cfg, now=old + 3600)
    assert run.demo is None
    assert run.inputs == {"embryo": Path("/data/day1/embryo.ome.tif"), "a": folder / "a.tif",
                          "b": folder / "b.ome.tif"}  # never our own results
    young = find_inputs(cfg, now=old + 10)
    assert set(young.waiting) == {folder / "a.tif", folder / "b.ome.tif"}
    assert set(find_inputs(cfg, now=old + 10, main_process=False).inputs) == {"embryo", "a", "b"}
    with pytest.raises(ConfigError, match=r"/x/a.tif and /y/a.ome.tif would both be written"):
        find_inputs(config(inputs=["/x/a.tif", "/y/a.ome.tif"]))
    with pytest.raises(ConfigError, match="config acquisition.folder: .*nope"):
        find_inputs(config(acquisition={"folder": str(tmp_path / "nope")}))


def test_results_written_into_the_acquisition_folder_are_not_inputs(tmp_path):
    folder = tmp_path / "acq"
    old = 1_000_000.0
    names = ("a.tif", "day2/b.ome.zarr/.zattrs", "a.denoised.ome.zarr/.zattrs", "qc/x.tif",
             "logs/denoise_chunk/a/0.log", "0123456789ab-seed0/c.denoised.ome.zarr/.zattrs",
             "0123456789ab-seed0/c.tif")
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (old, old))
    cfg = config(acquisition={"folder": str(folder), "patterns": ["**/*.tif", "**/*.ome.zarr"],
                              "settle_seconds": 0}, output={"root": str(folder)})
    assert find_inputs(cfg, now=old + 3600).inputs == {
        "a": folder / "a.tif", "day2/b": folder / "day2/b.ome.zarr"}
    assert find_inputs(cfg, now=old + 10).waiting.keys() == {folder / "a.tif",
                                                            folder / "day2/b.ome.zarr"}
    assert is_run_output(folder / "qc/report.html", folder)
    assert not is_run_output(tmp_path / "elsewhere.tif", folder)


def test_missing_inputs_are_refused_unless_they_left_a_store(tmp_path):
    (tmp_path / "kept.denoised.ome.zarr").mkdir()
    (tmp_path / "here.tif").write_bytes(b"x")
    inputs = {n: tmp_path / f"{n}.tif" for n in ("here", "kept")}

    def store(name):
        return tmp_path / f"{name}.denoised.ome.zarr"

    assert vanished_inputs(inputs, None, store) == {"kept": tmp_path / "kept.tif"}
    with pytest.raises(ConfigError, match=r"input .*/gone.tif: no such file or folder"):
        vanished_inputs({**inputs, "gone": tmp_path / "gone.tif"}, None, store)
    assert vanished_inputs({"demo": tmp_path / "demo.ome.tif"}, "demo", store) == {}


def test_run_settings_per_plane_and_errors_name_the_keys():
    assert run_settings(SHIPPED, demo=False).group_size == make_settings().group_size > 1
    per_plane = run_settings(config(denoise={"per_plane": True}), demo=False)
    assert per_plane == make_settings(group_size=1) and per_plane.per_plane
    with pytest.raises(ConfigError, match=r"config denoise.preset, recipe or overrides \(or "
                                          r"demo.overrides\): unknown setting 'k_q'"):
        run_settings(config(denoise={"overrides": {"k_q": 1}}), demo=True)


def test_settings_folder_changes_with_what_decides_the_result():
    base = settings_folder(make_settings(), 0, None)
    assert base == f"{make_settings().digest()[:12]}-seed0"
    assert settings_folder(make_settings(), 1, None) != base
    assert settings_folder(make_settings(group_size=1), 0, None) != base
    assert settings_folder(make_settings(), 0, 4095).endswith("-seed0-range4095")
