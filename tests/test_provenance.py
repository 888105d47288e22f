"""Provenance: building, storing under "fm2s" next to "ome", reading back, printing."""

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

import fm2s
from fm2s._provenance import (
    PROVENANCE_KEY,
    build_provenance,
    fingerprint_input,
    format_provenance,
    git_commit,
    library_versions,
    provenance,
    utc_now,
)
from fm2s.ome import write_ome_zarr
from fm2s.stacks import StackError, StackNotFoundError, open_stack

PLANES = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(1, 1, 2, 32, 32)


def make_record(tmp_path):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, PLANES[0, 0], imagej=True, metadata={"axes": "ZYX"})
    with open_stack(source) as stack:
        meta = stack.metadata
    return build_provenance(
        settings={"preset": "confocal", "samples": 20},
        seed=7,
        seed_derivation="per-plane seeds from (t, c, z)",
        input_metadata=meta,
        input_fingerprint=fingerprint_input(source),
        output={"shape": [1, 1, 2, 32, 32], "dtype": "uint16", "ngff_version": "0.4", "levels": 2},
        device="cpu",
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:02.5Z",
        plane_seconds={"0,0,0": 1.0, "0,0,1": 1.5},
        pixels_sha256="ab" * 32,
    )


def test_build_provenance_keys(tmp_path):
    record = make_record(tmp_path)
    source = tmp_path / "in.tif"
    # The running code's version, not an (editable) install's possibly stale metadata.
    assert record["schema"] == 1 and record["fm2s_version"] == fm2s.__version__
    assert record["libraries"]["fm2s"] == fm2s.__version__
    assert record["settings"] == {"preset": "confocal", "samples": 20}
    assert record["seed"] == 7 and "(t, c, z)" in record["seed_derivation"]
    inp = record["input"]
    assert inp["path"] == str(source.resolve()) and inp["format"] == "imagej-tiff"
    assert inp["size_bytes"] == source.stat().st_size
    assert inp["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert inp["mtime"].endswith("Z") and inp["axes"] == "ZYX" and inp["shape"] == [2, 32, 32]
    assert inp["dtype"] == "uint16" and inp["shape_tczyx"] == [1, 1, 2, 32, 32]
    assert record["output"]["axes"] == "tczyx" and record["output"]["levels"] == 2
    assert record["libraries"]["numpy"] == np.__version__
    assert {"torch", "zarr", "dask", "tifffile", "ome-zarr", "snakemake"} <= set(
        record["libraries"]
    )
    assert record["device"] == "cpu" and record["host"] and record["seconds"] == 2.5
    assert record["plane_seconds"] == {"0,0,0": 1.0, "0,0,1": 1.5}
    json.dumps(record, allow_nan=False)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_stored_next_to_ome_and_read_back(tmp_path, version):
    record = make_record(tmp_path)
    out = write_ome_zarr(tmp_path / "o.ome.zarr", PLANES, provenance=record, ngff_version=version)
    if version == "0.5":
        attrs = json.loads((out / "zarr.json").read_text())["attributes"]
        assert set(attrs) == {"ome", PROVENANCE_KEY}
    else:
        attrs = json.loads((out / ".zattrs").read_text())
        assert {"multiscales", "omero", PROVENANCE_KEY} <= set(attrs)
    assert provenance(out) == record
    text = format_provenance(out)
    assert "confocal" in text and str(tmp_path / "in.tif") in text and "planes:    2" in text


def test_provenance_errors(tmp_path):
    with pytest.raises(StackNotFoundError, match="nothing.zarr"):
        provenance(tmp_path / "nothing.zarr")
    bare = write_ome_zarr(tmp_path / "bare.ome.zarr", PLANES)
    with pytest.raises(StackError, match=r"bare\.ome\.zarr: no fm2s provenance"):
        provenance(bare)
    with pytest.raises(ValueError):  # NaN is not JSON
        write_ome_zarr(tmp_path / "nan.zarr", PLANES, provenance={"x": float("nan")})
    assert not (tmp_path / "nan.zarr").exists()


def test_fingerfoundof_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.tif").write_bytes(b"bb")
    (tmp_path / "d" / "a.tif").write_bytes(b"a")
    found = fingerprint_input(tmp_path / "d")
    expected = hashlib.sha256(b"a.tif\0a" + b"b.tif\0bb").hexdigest()
    assert found == {**found, "size_bytes": 3, "sha256": expected, "files": 2}


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_only_from_a_checkout_tracking_the_package(tmp_path):
    assert git_commit(tmp_path) == (None, None)
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")

    def git(*args):
        subprocess.run(
            ["git", "-C", str(package.parent), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True, capture_output=True,
        )  # fmt: skip

    git("init", "-q")
    assert git_commit(package) == (None, None)  # untracked
    git("add", ".")
    git("commit", "-q", "-m", "init")
    commit, dirty = git_commit(package)
    assert len(commit) == 40 and dirty is False
    (package / "__init__.py").write_text("x = 2\n")
    assert git_commit(package) == (commit, True)


def test_small_helpers():
    assert utc_now().endswith("Z") and "T" in utc_now()
    assert library_versions(("surely-not-installed-pkg",)) == {"surely-not-installed-pkg": None}


def _record_of(planes: int) -> dict:
    """A provenance record shaped like an ``auto`` run's of `planes` planes (groups of 64)."""
    labels = [f"{t},0,0" for t in range(planes)]
    plane = {"source": "stack", "segment": 0, "plane_std_dn": 11.52, "blend": 0.83,
             "blend_nlm": 0.1, "blend_guided_nlm": 0.05, "sure_tile": 32, "wiener": True,
             "median_size": 7, "gain": 0.00431, "read_var": 0.00109, "noise_corr": 0.65,
             "noise_line_corr": 0.0}
    return {"fm2s_version": "0.9.0", "settings": {"preset": "auto"}, "seed": 0,
            "plane_seconds": {label: 0.4123 for label in labels},
            "networks": {f"group-{g}": {"digest": "ab" * 32, "planes": labels[g * 64:(g + 1) * 64]}
                         for g in range(-(-planes // 64))},
            "estimate": {"method": "pooled", "channels": {"0": {"segments": []}},
                         "planes": {label: dict(plane) for label in labels}}}


@pytest.mark.parametrize("planes", [30, 1000, 10000])
def test_root_attributes_stay_small_and_the_record_comes_back_whole(planes):
    from fm2s._provenance import join_provenance, split_provenance

    record = _record_of(planes)
    root, per_plane = split_provenance(record)
    assert join_provenance(root, per_plane) == record
    size = len(json.dumps(root))
    # the networks' summaries grow with planes / 64; everything per plane is in the subgroup
    assert size < 2_000 + 200 * len(record["networks"])
    assert len(json.dumps(record)) > 3 * size or planes < 100
    assert root["plane_seconds_summary"]["planes"] == planes
