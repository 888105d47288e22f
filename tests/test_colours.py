"""Channel colours and display windows: from the input's own metadata (CZI, ND2, LIF, OIB,
OME-TIFF, OME-Zarr) through StackMetadata into the store's ``omero`` block, and today's
defaults where the input has none. The vendor tests read ``../shared/data`` and skip without
it (or without the ``vendor`` extra)."""

import importlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
from conftest import skip_unless_in_ci

from fm2s.ome import open_ome_zarr, write_ome_zarr
from fm2s.stacks import open_stack

CZI, VENDOR = "czitools_samples", "vendor_formats"


def needs(*modules):
    for module in modules:
        if importlib.util.find_spec(module) is None:
            skip_unless_in_ci(f"{module} missing: pip install -e '.[vendor]'")


def store_of(source, out, **options):
    """Write `source` as read (no denoising) and return the store's omero channels and rdefs."""
    with open_stack(source, **options) as stack:
        write_ome_zarr(out, stack.data, stack.metadata, levels=1)
    omero = open_ome_zarr(out)[1]["omero"]
    return omero["channels"], omero["rdefs"]


def test_czi_store_has_the_files_colours_and_windows(shared_data, tmp_path):
    needs("pylibCZIrw", "bioio_czi")
    from pylibCZIrw import czi

    source = shared_data / CZI / "CellDivision_T3_Z5_CH2_X240_Y170.czi"
    doc = czi.CziReader(str(source))
    root = ET.fromstring(doc.raw_metadata)
    doc.close()
    shown = root.findall("./Metadata/DisplaySetting/Channels/Channel")
    channels, _ = store_of(source, tmp_path / "cell.ome.zarr")
    assert [c["label"] for c in channels] == [s.get("Name") for s in shown]
    # the file's #AARRGGBB: LED555 orange, LED470 green (not the default green and magenta)
    assert [c["color"] for c in channels] == [s.findtext("Color")[-6:] for s in shown]
    assert [c["color"] for c in channels] == ["FF7E00", "00FF33"]
    for channel, setting in zip(channels, shown, strict=True):
        high = float(setting.findtext("High")) * 65535  # ZEN's white point, of Gray16's range
        window = channel["window"]
        assert (window["start"], window["end"]) == (0.0, pytest.approx(high))
        assert (window["min"], window["max"]) == (0.0, 65535.0)


def test_czi_display_channels_named_by_guid_match_by_position(shared_data):
    needs("pylibCZIrw", "bioio_czi")
    with open_stack(shared_data / CZI / "DAPI_GFP.czi") as stack:
        assert stack.metadata.channel_colors == ["0000FF", "00FF00"]


@pytest.mark.parametrize(("name", "colours"), [
    ("example-timelapse.nd2", ["07FF00"]),
    ("example-multichannel.nd2", ["FFFFFF", "0033FF", "07FF00", "FFBF00"]),
    ("PR2729_frameOrderCombinedScanTypes.lif", ["00FF00", "FF0000"]),
    ("test.oib", ["00FF00", "FF0000", "FFFFFF"]),
])  # fmt: skip
def test_vendor_store_has_the_files_colours(shared_data, tmp_path, name, colours):
    needs("bioio", "bioio_nd2", "bioio_lif", "oiffile", "liffile", "nd2")
    channels, rdefs = store_of(shared_data / VENDOR / name, tmp_path / "out.ome.zarr")
    assert [c["color"] for c in channels] == colours
    assert rdefs["model"] == "color"  # a lone GFP channel is shown green, not grey


def test_a_2d_nd2_store_has_no_z_axis(shared_data, tmp_path):
    """Issue 42: the 2-D ND2 (bioio reports z of size 1, no z spacing) got a unitless z
    scale of 1.0; its store now has the axes the file has: c, y, x."""
    needs("bioio", "bioio_nd2", "nd2")
    store_of(shared_data / VENDOR / "example-multichannel.nd2", tmp_path / "out.ome.zarr")
    axes = open_ome_zarr(tmp_path / "out.ome.zarr")[1]["multiscales"]["axes"]
    assert [(a["name"], a.get("unit")) for a in axes] == [
        ("c", None), ("y", "micrometer"), ("x", "micrometer")]


def test_nd2_colours_are_the_files(shared_data):
    needs("bioio", "bioio_nd2", "nd2")
    import nd2

    source = shared_data / VENDOR / "example-multichannel.nd2"
    with nd2.ND2File(source) as f:
        expected = [f"{c.channel.color.r:02X}{c.channel.color.g:02X}{c.channel.color.b:02X}"
                    for c in f.metadata.channels]  # fmt: skip
    with open_stack(source) as stack:
        assert stack.metadata.channel_colors == expected


def test_ome_tiff_colours_reach_the_store(tmp_path):
    data = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(1, 2, 3, 16, 16)
    source = tmp_path / "two.ome.tif"
    # OME-XML colours are signed RGBA ints: orange FF7E00FF and green 00FF33FF
    rgba = [int.from_bytes(bytes.fromhex(h), "big", signed=True) for h in ("FF7E00FF", "00FF33FF")]
    tifffile.imwrite(source, data, ome=True, metadata={
        "axes": "TCZYX", "Channel": {"Name": ["LED555", "LED470"], "Color": rgba}})  # fmt: skip
    with tifffile.TiffFile(source) as tif:
        assert 'Color="-8519425"' in tif.ome_metadata  # as the file says it
    channels, _ = store_of(source, tmp_path / "two.ome.zarr")
    assert [(c["label"], c["color"]) for c in channels] == [("LED555", "FF7E00"),
                                                            ("LED470", "00FF33")]  # fmt: skip
    with open_stack(source) as stack:  # what `fm2s info` prints
        lines = stack.metadata.describe()
    assert "channels:  LED555, colour #FF7E00" in lines and "           LED470, colour #00FF33" \
        in lines


def test_ome_zarr_colours_and_windows_pass_through(tmp_path):
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(1, 2, 1, 16, 16)
    first = tmp_path / "first.ome.zarr"
    write_ome_zarr(first, data, levels=1)
    import zarr

    group = zarr.open_group(str(first), mode="r+")
    omero = group.attrs["omero"]
    omero["channels"][0].update(color="FF7E00", window={"min": 0, "max": 65535, "start": 10,
                                                        "end": 300})  # fmt: skip
    omero["channels"][1].update(color="00FF33")
    group.attrs["omero"] = omero
    channels, _ = store_of(first, tmp_path / "second.ome.zarr")
    assert [c["color"] for c in channels] == ["FF7E00", "00FF33"]
    assert (channels[0]["window"]["start"], channels[0]["window"]["end"]) == (10.0, 300.0)
    assert channels[1]["window"] == omero["channels"][1]["window"]


def test_without_colours_the_defaults_stay(tmp_path):
    two = write_ome_zarr(tmp_path / "two.ome.zarr", np.ones((1, 2, 1, 16, 16), np.uint8),
                         levels=1)  # fmt: skip
    one = write_ome_zarr(tmp_path / "one.ome.zarr", np.ones((1, 1, 1, 16, 16), np.uint8),
                         levels=1)  # fmt: skip
    channels = open_ome_zarr(two)[1]["omero"]["channels"]
    assert [c["color"] for c in channels] == ["00FF00", "FF00FF"]
    omero = open_ome_zarr(one)[1]["omero"]
    assert omero["channels"][0]["color"] == "FFFFFF" and omero["rdefs"]["model"] == "greyscale"
    assert omero["channels"][0]["window"] == {"min": 0.0, "max": 255.0, "start": 1.0, "end": 1.0}
