"""OME-Zarr writer: NGFF 0.4/0.5 round trips, pyramid, tiling, atomic and safe writes."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from fm2s.ome import (
    OmeZarrWriter,
    OutputExistsError,
    _downsample,
    level_shapes,
    open_ome_zarr,
    write_ome_zarr,
)
from fm2s.stacks import StackError, StackMetadata, open_stack

RNG = np.random.default_rng(1)
TCZYX = RNG.integers(0, 60000, size=(2, 3, 4, 40, 50), dtype=np.uint16)


def lazy_planes(array, fail_at=None):
    """A lazy 5D array built from one delayed computation per plane, as the pipeline does."""

    @dask.delayed
    def plane(index):
        if index == fail_at:
            raise RuntimeError("plane computation failed")
        return array.reshape(-1, *array.shape[3:])[index]

    n = int(np.prod(array.shape[:3]))
    planes = [da.from_delayed(plane(i), array.shape[3:], array.dtype) for i in range(n)]
    return da.stack(planes).reshape(array.shape)


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def ngff_node(path, version):
    fmt = FormatV04() if version == "0.4" else FormatV05()
    return list(Reader(parse_url(str(path), fmt=fmt))())[0]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_round_trip_read_back_with_ome_zarr(tmp_path, version):
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(
        source, TCZYX, ome=True,
        metadata={"axes": "TCZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                  "PhysicalSizeZ": 1.5, "TimeIncrement": 30.0,
                  "Channel": {"Name": ["DAPI", "GFP", "RFP"]}},
    )  # fmt: skip
    out = tmp_path / "out.ome.zarr"
    with open_stack(source) as stack:
        assert write_ome_zarr(out, stack.data, stack.metadata, ngff_version=version) == out
    assert siblings(out) == ["in.ome.tif"]  # no temporary left
    node = ngff_node(out, version)
    assert [a["name"] for a in node.metadata["axes"]] == list("tczyx")
    assert [a.get("unit") for a in node.metadata["axes"]] == [
        "second", None, "micrometer", "micrometer", "micrometer"
    ]  # fmt: skip
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[30.0, 1.0, 1.5, 0.25 * 2**k, 0.25 * 2**k] for k in range(3)]
    assert node.metadata["channel_names"] == ["DAPI", "GFP", "RFP"]
    assert [d.shape for d in node.data] == [
        (2, 3, 4, 40, 50), (2, 3, 4, 20, 25), (2, 3, 4, 10, 12)
    ]  # fmt: skip
    assert all(d.dtype == np.uint16 for d in node.data)
    np.testing.assert_array_equal(node.data[0].compute(), TCZYX)
    np.testing.assert_array_equal(node.data[1][1, 2, 3].compute(), _downsample(TCZYX[1, 2, 3]))
    levels, attrs = open_ome_zarr(out)
    assert attrs["version"] == version and levels[0].chunksize == (1, 1, 1, 40, 50)


def test_downsample_is_a_rounded_block_mean():
    plane = np.array([[0, 1, 10], [1, 1, 20], [5, 5, 30]], dtype=np.uint8)
    np.testing.assert_array_equal(_downsample(plane), [[1]])  # mean 0.75 rounds to 1
    assert _downsample(np.ones((1, 9), np.float32)).shape == (1, 4)
    assert level_shapes((1, 1, 1, 5, 3), 4)[-1] == (1, 1, 1, 1, 1)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_dtype_kept_and_large_planes_tiled(tmp_path, dtype):
    data = RNG.integers(0, 200, size=(1, 1, 2, 40, 50)).astype(dtype)
    out = write_ome_zarr(tmp_path / "t.ome.zarr", lazy_planes(data), levels=3, tile=16)
    levels, attrs = open_ome_zarr(out)
    assert [lvl.chunksize for lvl in levels] == [
        (1, 1, 1, 16, 16), (1, 1, 1, 16, 16), (1, 1, 1, 10, 12)
    ]  # fmt: skip
    assert all(lvl.dtype == np.dtype(dtype) for lvl in levels)
    np.testing.assert_array_equal(levels[0].compute(), data)
    assert attrs["omero"]["channels"][0]["label"] == "Channel 0"


def test_exception_in_a_plane_leaves_nothing(tmp_path):
    out = tmp_path / "fail.ome.zarr"
    with pytest.raises(RuntimeError, match="plane computation failed"):
        write_ome_zarr(out, lazy_planes(TCZYX, fail_at=7))
    assert not out.exists() and siblings(out) == []


def test_killed_write_leaves_no_store_under_the_final_name(tmp_path):
    out = tmp_path / "killed.ome.zarr"
    script = textwrap.dedent(f"""
        import time, dask, dask.array as da, numpy as np
        from fm2s.ome import write_ome_zarr

        @dask.delayed
        def plane(i):
            if i >= 2:
                time.sleep(60)
            return np.full((32, 32), i, np.uint16)

        planes = [da.from_delayed(plane(i), (32, 32), np.uint16) for i in range(4)]
        write_ome_zarr({str(out)!r}, da.stack(planes).reshape(1, 1, 4, 32, 32))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until plane 1 is on disk
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.ome.zarr.tmp-")]
            if temps and (temps[0] / "0" / "0" / "0" / "1").exists():
                break
            assert proc.poll() is None, "writer exited early"
            time.sleep(0.05)
        else:
            pytest.fail("the writer never wrote plane 1")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    assert all(name.startswith(".killed.ome.zarr.tmp-") for name in siblings(out))


def test_existing_output_refused_then_swapped(tmp_path):
    out = write_ome_zarr(tmp_path / "o.ome.zarr", lazy_planes(TCZYX[:1, :1]))
    with pytest.raises(OutputExistsError, match=r"o\.ome\.zarr: output exists") as info:
        write_ome_zarr(out, lazy_planes(TCZYX[:1, 1:2]))
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ValueError)
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old store
        write_ome_zarr(out, lazy_planes(TCZYX[:1, 1:2], fail_at=1), overwrite=True)
    np.testing.assert_array_equal(open_ome_zarr(out)[0][0].compute(), TCZYX[:1, :1])
    write_ome_zarr(out, lazy_planes(TCZYX[:1, 1:2]), overwrite=True)
    np.testing.assert_array_equal(open_ome_zarr(out)[0][0].compute(), TCZYX[:1, 1:2])
    assert siblings(out) == []


def test_output_inside_input_refused(tmp_path):
    source = write_ome_zarr(tmp_path / "in.ome.zarr", lazy_planes(TCZYX[:1, :1]))
    meta = StackMetadata(
        path=str(source), format="ome-zarr", axes_found="tczyx", shape=(1, 1, 4, 40, 50),
        dtype="uint16",
    )  # fmt: skip
    for out in (source / "out.ome.zarr", source):
        with pytest.raises(StackError, match="output lies inside the input"):
            write_ome_zarr(out, lazy_planes(TCZYX[:1, :1]), meta, overwrite=True)
    inner = replace(meta, path=str(source / "0"))
    with pytest.raises(StackError, match="output contains the input"):
        write_ome_zarr(source, lazy_planes(TCZYX[:1, :1]), inner, overwrite=True)
    assert sorted(p.name for p in source.iterdir()) == [".zattrs", ".zgroup", "0", "1", "2"]


def test_writer_checks_planes(tmp_path):
    with OmeZarrWriter(tmp_path / "w.ome.zarr", shape=(1, 1, 2, 8, 8), dtype="uint8") as writer:
        with pytest.raises(ValueError, match=r"plane 0,0,0 is \(8, 9\) uint8"):
            writer.write_plane((0, 0, 0), np.zeros((8, 9), np.uint8))
        writer.write_plane((0, 0, 0), np.zeros((8, 8), np.uint8))
        with pytest.raises(RuntimeError, match="1 of 2 planes were not written"):
            writer.commit()
    assert siblings(tmp_path / "w.ome.zarr") == []
    with pytest.raises(ValueError, match="ngff_version"):
        OmeZarrWriter(tmp_path / "v.zarr", shape=(1, 1, 1, 8, 8), dtype="u1", ngff_version="0.6")


@pytest.mark.parametrize(("axes", "shape", "stored"), [
    ("YX", (40, 48), "cyx"),  # a plane: no time or z axis made up
    ("ZYX", (3, 40, 48), "czyx"),  # no time step: no t axis
    ("TYX", (2, 40, 48), "tcyx"),  # frames without a time step still are frames
])  # fmt: skip
def test_a_store_has_the_inputs_axes_and_no_made_up_scale(tmp_path, axes, shape, stored):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": axes, "unit": "um"})
    with open_stack(source) as stack:
        meta, planes = stack.metadata, stack.data.compute()
    out = write_ome_zarr(tmp_path / "out.ome.zarr", planes, meta, levels=2)
    node = list(Reader(parse_url(str(out), fmt=FormatV04()))())[0]
    names = [a["name"] for a in node.metadata["axes"]]
    assert names == list(stored) and node.data[0].shape == tuple(
        n for a, n in zip("tczyx", meta.shape, strict=True) if a in stored)
    scale = dict(zip(names, node.metadata["coordinateTransformations"][0][0]["scale"],
                     strict=True))
    assert scale["x"] == scale["y"] == pytest.approx(0.25) and scale["c"] == 1
    units = {a["name"]: a.get("unit") for a in node.metadata["axes"]}
    assert units["x"] == units["y"] == "micrometer"
    # read back as (t, c, z, y, x), whatever the store's axes
    levels, _ = open_ome_zarr(out)
    np.testing.assert_array_equal(levels[0].compute(), planes)
