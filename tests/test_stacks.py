"""Readers: every format to a lazy 5D (t, c, z, y, x) stack, plane keys, bad input."""

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import add_metadata, write_image

from fm2s import _readers, stacks
from fm2s.stacks import (
    PlaneKey,
    StackError,
    StackNotFoundError,
    frame_number,
    list_planes,
    open_stack,
    read_plane,
)

RNG = np.random.default_rng(0)
TCZYX = RNG.integers(0, 60000, size=(2, 3, 4, 32, 33), dtype=np.uint16)


def write_ome_tiff(path, data=TCZYX):
    tifffile.imwrite(
        path, data, ome=True,
        metadata={
            "axes": "TCZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
            "PhysicalSizeZ": 1.5, "TimeIncrement": 30.0, "TimeIncrementUnit": "s",
            "Channel": {"Name": ["DAPI", "GFP", "RFP"], "Color": [65535, 16711935, -16776961]},
        },
    )  # fmt: skip
    return path


def write_ngff(path, version, data=TCZYX):
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(
        data, group, axes="tczyx", fmt=fmt, scale_factors=(2,),
        storage_options={"chunks": (1, 1, 1, *data.shape[3:])},
        scale={"t": 30.0, "c": 1.0, "z": 1.5, "y": 0.25, "x": 0.25},
        axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )  # fmt: skip
    channels = [
        {"label": n, "color": c} for n, c in zip("ABC", ["FF0000", "00FF00", "0000FF"], strict=True)
    ]
    add_metadata(group, {"omero": {"channels": channels}}, fmt=fmt)
    return path


def test_ome_tiff_round_trip(tmp_path):
    path = write_ome_tiff(tmp_path / "a.ome.tif")
    with open_stack(path) as stack:
        meta = stack.metadata
        assert meta.format == "ome-tiff"
        assert meta.axes_found == "TCZYX" and meta.shape == TCZYX.shape
        assert meta.dtype == "uint16" and stack.data.dtype == np.uint16
        assert meta.pixel_sizes == {"z": 1.5, "y": 0.25, "x": 0.25}
        assert meta.units == dict.fromkeys("zyx", "micrometer")
        assert (meta.time_step, meta.time_unit) == (30.0, "second")
        assert meta.channel_names == ["DAPI", "GFP", "RFP"]
        assert meta.channel_colors == ["0000FF", "00FF00", "FF0000"]  # RGBA ints
        assert stack.data.chunksize == (1, 1, 1, 32, 33)
        np.testing.assert_array_equal(stack.data.compute(), TCZYX)
        np.testing.assert_array_equal(stack.read_plane((1, 2, 3)), TCZYX[1, 2, 3])


def test_ome_tiff_series_selection(tmp_path):
    path = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(TCZYX[0, 0], metadata={"axes": "ZYX"})
        tif.write(TCZYX[0, :, 0].astype(np.uint8), metadata={"axes": "CYX"})
    with open_stack(path, series=1) as stack:
        assert stack.metadata.shape == (1, 3, 1, 32, 33) and stack.metadata.dtype == "uint8"
        assert (stack.metadata.series, stack.metadata.n_series) == (1, 2)
    assert list_planes(path) == [PlaneKey(0, 0, z) for z in range(4)]
    with pytest.raises(StackError, match=r"multi\.ome\.tif: series 2 out of range.*2 series"):
        open_stack(path, series=2)


def test_imagej_hyperstack(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, TCZYX.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(1 / 0.3, 1 / 0.3),
        metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um", "finterval": 2.5},
    )  # fmt: skip
    with open_stack(path) as stack:
        meta = stack.metadata
        assert (meta.format, meta.axes_found, meta.shape) == ("imagej-tiff", "TZCYX", TCZYX.shape)
        assert meta.pixel_sizes == pytest.approx({"z": 1.5, "y": 0.3, "x": 0.3})
        assert meta.units["x"] == "micrometer" and meta.time_step == 2.5
        np.testing.assert_array_equal(stack.data.compute(), TCZYX)


def test_imagej_rgb_samples_become_channels(tmp_path):
    rgb = RNG.integers(0, 255, size=(4, 32, 33, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, imagej=True, photometric="rgb", metadata={"axes": "ZYXS"})
    with open_stack(path) as stack:
        assert stack.metadata.axes_found == "ZYXS"
        assert stack.metadata.shape == (1, 3, 4, 32, 33)
        assert stack.metadata.channel_colors == ["FF0000", "00FF00", "0000FF"]
        np.testing.assert_array_equal(stack.read_plane((0, 1, 2)), rgb[2, ..., 1])


@pytest.mark.parametrize("pages_as", ["z", "t"])
def test_plain_multipage_tiff_pages_as(tmp_path, pages_as):
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in TCZYX[0, 0]:
            tif.write(plane, metadata=None, contiguous=False)
    with open_stack(path, pages_as=pages_as) as stack:
        assert stack.metadata.format == "tiff"
        expected = (1, 1, 4, 32, 33) if pages_as == "z" else (4, 1, 1, 32, 33)
        assert stack.metadata.shape == expected
        np.testing.assert_array_equal(stack.data.compute().reshape(4, 32, 33), TCZYX[0, 0])


def test_plain_single_page_tiff_and_png(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", TCZYX[0, 0, 0], metadata=None)
    iio.imwrite(tmp_path / "one.png", TCZYX[0, 0, 0])
    iio.imwrite(tmp_path / "rgb.png", RNG.integers(0, 255, size=(32, 33, 3), dtype=np.uint8))
    for name in ("one.tif", "one.png"):
        with open_stack(tmp_path / name) as stack:
            assert stack.metadata.shape == (1, 1, 1, 32, 33)
            np.testing.assert_array_equal(stack.read_plane((0, 0, 0)), TCZYX[0, 0, 0])
    with open_stack(tmp_path / "rgb.png") as stack:
        assert stack.metadata.format == "png" and stack.metadata.shape == (1, 3, 1, 32, 33)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_input(tmp_path, version):
    path = write_ngff(tmp_path / f"in{version}.ome.zarr", version)
    with open_stack(path) as stack:
        meta = stack.metadata
        assert (meta.format, meta.axes_found, meta.shape) == ("ome-zarr", "tczyx", TCZYX.shape)
        assert meta.pixel_sizes == {"z": 1.5, "y": 0.25, "x": 0.25}
        assert meta.units["z"] == "micrometer" and meta.time_step == 30.0
        assert meta.channel_names == ["A", "B", "C"]
        np.testing.assert_array_equal(stack.data.compute(), TCZYX)
    assert len(list_planes(path)) == 2 * 3 * 4


def test_folder_of_time_points_ordered_by_number(tmp_path):
    folder = tmp_path / "movie"
    folder.mkdir()
    for t in (10, 2, 1, 0):  # numbers after T order the files, not the names
        tifffile.imwrite(folder / f"exp--W0002--P001--T{t:05d}--Z000--C.tif", TCZYX[0, 0, t % 4])
    with open_stack(folder) as stack:
        assert stack.metadata.format == "tiff-series" and stack.metadata.axes_found == "TYX"
        assert stack.metadata.shape == (4, 1, 1, 32, 33)
        np.testing.assert_array_equal(stack.read_plane((3, 0, 0)), TCZYX[0, 0, 2])
        np.testing.assert_array_equal(stack.data[1, 0, 0].compute(), TCZYX[0, 0, 1])
    assert frame_number("frame_9.tif") == 9 and frame_number("frame_10.tif") == 10
    assert frame_number("EMBO_2012_Group3--empty--W0002--P001--T00012--Z000--C.tif") == 12


def test_list_planes_reads_no_pixels(tmp_path, monkeypatch):
    path = write_ome_tiff(tmp_path / "a.ome.tif")

    def no_reads(*args):
        raise AssertionError("pixels read")

    monkeypatch.setattr(_readers.TiffSource, "read", no_reads)
    keys = list_planes(path)
    assert len(keys) == 24 and keys[0] == (0, 0, 0) and keys[-1] == PlaneKey(1, 2, 3)
    assert keys[5].label == "0,1,1" and PlaneKey.from_label("0,1,1") == keys[5]


def test_reading_one_plane_reads_only_its_bytes(tmp_path, monkeypatch):
    planes = RNG.integers(0, 60000, size=(6, 64, 64), dtype=np.uint16)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "ZYX"})
    with open_stack(path) as stack:
        read = []
        original = tifffile.FileHandle.read

        def counting(self, size=-1):
            data = original(self, size)
            read.append(len(data))
            return data

        monkeypatch.setattr(tifffile.FileHandle, "read", counting)
        np.testing.assert_array_equal(stack.read_plane((0, 0, 4)), planes[4])
    assert sum(read) == planes[4].nbytes


def test_corrupt_other_pages_still_yield_the_good_plane(tmp_path):
    path = tmp_path / "zlib.tif"
    with tifffile.TiffWriter(path) as tif:
        for plane in TCZYX[0, 0]:
            tif.write(plane, compression="zlib", metadata=None)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(read_plane(path, (0, 0, 0)), TCZYX[0, 0, 0])
    np.testing.assert_array_equal(read_plane(path, (0, 0, 3)), TCZYX[0, 0, 3])
    with pytest.raises(StackError, match=r"zlib\.tif: cannot read plane t,c,z=0,0,2"):
        read_plane(path, (0, 0, 2))


# -- bad input ---------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_stack(tmp_path / "nope.tif")
    with pytest.raises(StackNotFoundError):
        list_planes(tmp_path / "nope.ome.zarr")


def test_unsupported_extension(tmp_path):
    (tmp_path / "image.vsi").write_bytes(b"II*\x00")
    with pytest.raises(StackError, match=r"image\.vsi: unsupported file type '\.vsi'; "
                                         r"expected a TIFF .* \(\.czi, \.nd2, \.lif, \.oib"):
        open_stack(tmp_path / "image.vsi")


def test_corrupt_and_truncated_tiff(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(StackError, match=r"junk\.tif: not a readable TIFF"):
        open_stack(tmp_path / "junk.tif")
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, TCZYX[0, 0], imagej=True)
    ij.write_bytes(ij.read_bytes()[:-3000])
    with pytest.raises(StackError, match=r"ij\.tif: corrupt or truncated"):
        open_stack(ij)
    ome = write_ome_tiff(tmp_path / "cut.ome.tif")
    ome.write_bytes(ome.read_bytes()[:-2000])
    with pytest.raises(StackError, match=r"cut\.ome\.tif: corrupt or truncated"):
        open_stack(ome)


def test_zarr_missing_chunk_and_invalid_metadata(tmp_path):
    path = write_ngff(tmp_path / "holes.ome.zarr", "0.4")
    shutil.rmtree(path / "s0" / "1" / "2")  # t=1, c=2: four planes gone
    with pytest.raises(StackError, match=r"holes\.ome\.zarr: array 's0' is missing 4 of 24 chunks"):
        open_stack(path)
    path = write_ngff(tmp_path / "bad.ome.zarr", "0.5")
    group = zarr.open_group(str(path), mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["axes"] = ome["multiscales"][0]["axes"][1:]  # 4 axes, 5D data
    group.attrs["ome"] = ome
    with pytest.raises(StackError, match=r"bad\.ome\.zarr: invalid NGFF metadata"):
        open_stack(path)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("0", shape=(4, 4), dtype="u1")
    with pytest.raises(StackError, match=r"plain\.zarr: invalid NGFF metadata: no 'multiscales'"):
        open_stack(tmp_path / "plain.zarr")


def test_unmappable_axes_and_series_out_of_range(tmp_path):
    tifffile.imwrite(
        tmp_path / "e.tif", TCZYX[0, :, 0], photometric="minisblack", metadata={"axes": "EYX"}
    )
    with pytest.raises(StackError, match=r"e\.tif: axes 'EYX' .* axis 'E' has size 3"):
        open_stack(tmp_path / "e.tif")
    write_ome_tiff(tmp_path / "a.ome.tif")
    with pytest.raises(StackError, match="series 1 out of range"):
        list_planes(tmp_path / "a.ome.tif", series=1)
    with pytest.raises(StackError, match="series 1 out of range"):
        open_stack(write_ngff(tmp_path / "x.ome.zarr", "0.5"), series=1)
    with pytest.raises(ValueError, match="pages_as"):
        open_stack(tmp_path / "a.ome.tif", pages_as="c")


def test_axis_map_refuses_two_axes_for_one_slot():
    with pytest.raises(StackError, match="both 'Z' and 'I' would become 'z'; try pages_as='t'"):
        stacks.AxisMap("ZIYX", (3, 4, 8, 8), pages_as="z", path="f.tif")


# -- real data ---------------------------------------------------------------

NEUBIAS = {
    "xyt_calibrated_16bit__golgi_bfa_sum_projection.tif": ("TYX", (30, 1, 1, 137, 147), "float32"),
    "xyz_calibrated_16bit__golgi_bfa.tif": ("ZYX", (1, 1, 25, 137, 147), "uint16"),
    "xyzc_16bit__dna_conf_wf.tif": ("ZCYX", (1, 2, 45, 130, 133), "uint16"),
    "xyzc_16bit__spots.tif": ("ZCYX", (1, 2, 17, 88, 89), "uint16"),
    "xyc_16bit__hela-cells.tif": ("YXS", (1, 3, 1, 512, 672), "uint16"),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [*NEUBIAS, "mitocheck-movie", "FOV7_HV110_P0500510000.ome.tiff"])
def test_real_files_open_and_list(shared_data, name):
    expected = {
        **NEUBIAS,
        "mitocheck-movie": ("TYX", (30, 1, 1, 190, 211), "uint8"),
        "FOV7_HV110_P0500510000.ome.tiff": ("YX", (1, 1, 1, 512, 512), "uint8"),
    }[name]
    folder = "czitools_samples" if name.endswith("ome.tiff") else "neubias_training_resources"
    path = shared_data / folder / ("" if folder == "czitools_samples" else "image_data") / name
    with open_stack(path) as stack:
        meta = stack.metadata
        assert (meta.axes_found, meta.shape, meta.dtype) == expected
        keys = list_planes(path)
        assert len(keys) == int(np.prod(meta.shape[:3]))
        plane = stack.read_plane(keys[-1])
        assert plane.shape == meta.shape[3:] and plane.dtype == np.dtype(meta.dtype)
    if name == "xyz_calibrated_16bit__golgi_bfa.tif":
        assert meta.pixel_sizes["z"] == pytest.approx(0.3876)
        assert meta.units["x"] == "micrometer"


def test_the_workflows_default_patterns_follow_the_table_of_input_formats():
    """One table of formats: the workflow's default folder patterns are its suffixes (single
    PNG planes left out: an acquisition folder's PNGs are rarely stacks of their own)."""
    import yaml

    from fm2s._stack_types import STACK_SUFFIXES

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    default = schema["properties"]["acquisition"]["properties"]["patterns"]["default"]
    assert config["acquisition"]["patterns"] == default
    assert sorted(default) == sorted(f"*{s}" for s in STACK_SUFFIXES if s != ".png")
