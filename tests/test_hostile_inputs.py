"""Inputs that disagree with themselves (issue 40): an OME-TIFF whose OME-XML lists other planes
than its pages, and a TIFF written page by page (one series per append). Each is read as the
stack it is or refused with one line naming the file; nothing is left behind."""

import numpy as np
import pytest
import tifffile
import zarr

from fm2s.cli import main
from fm2s.stacks import StackError, open_stack

TINY = ["--set", "steps=4", "--set", "crop_size=16", "--device", "cpu", "--threads", "1"]
RNG = np.random.default_rng(40)
ZYX = RNG.integers(0, 60000, size=(4, 32, 32), dtype=np.uint16)


def ome_with_size_z(path, size_z):
    """A 4-page OME-TIFF whose OME-XML says SizeZ=`size_z` (same length: one digit)."""
    tifffile.imwrite(path, ZYX, ome=True, metadata={"axes": "ZYX"})
    raw = path.read_bytes()
    assert raw.count(b'SizeZ="4"') == 1
    path.write_bytes(raw.replace(b'SizeZ="4"', f'SizeZ="{size_z}"'.encode()))
    return path


@pytest.mark.parametrize(("size_z", "problem"), [
    (6, r"OME-XML lists 6 planes for series 0, 2 of them are missing"),
    (2, r"the file has 4 pages, its OME-XML lists 2 of them; 2 would not be denoised"),
])  # fmt: skip
def test_ome_xml_that_disagrees_with_the_pages_is_refused(tmp_path, capsys, size_z, problem):
    src = ome_with_size_z(tmp_path / "cut.ome.tif", size_z)
    before = src.read_bytes()
    with pytest.raises(StackError, match=r"cut\.ome\.tif: corrupt .*" + problem):
        open_stack(src)
    out = tmp_path / "out.ome.zarr"
    assert main(["-q", "denoise", str(src), str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fm2s: error: {src}: corrupt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.ome.tif"]
    assert src.read_bytes() == before


def test_a_consistent_ome_tiff_still_opens(tmp_path):
    src = ome_with_size_z(tmp_path / "whole.ome.tif", 4)
    with open_stack(src) as stack:
        assert stack.metadata.shape == (1, 1, 4, 32, 32)
        np.testing.assert_array_equal(stack.data[0, 0].compute(), ZYX)


def append_pages(path, planes):
    for plane in planes:
        tifffile.imwrite(path, plane, append=True)  # one "shaped" series per call
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == len(planes)
    return path


@pytest.mark.parametrize("pages_as", ["z", "t"])
def test_pages_appended_one_by_one_are_read_as_one_stack(tmp_path, pages_as):
    src = append_pages(tmp_path / "frames.tif", ZYX)
    with open_stack(src, pages_as=pages_as) as stack:
        meta = stack.metadata
        assert (meta.series, meta.n_series) == (0, 1)
        assert meta.shape == ((4, 1, 1, 32, 32) if pages_as == "t" else (1, 1, 4, 32, 32))
        np.testing.assert_array_equal(stack.data.compute().reshape(4, 32, 32), ZYX)
    with pytest.raises(StackError, match=r"frames\.tif: series 1 out of range; the file's 4 "
                                         r"series \(appended one at a time"):
        open_stack(src, series=1)


def test_appended_pages_are_all_denoised(tmp_path):
    src = append_pages(tmp_path / "frames.tif", ZYX[:3])
    out = tmp_path / "out.ome.zarr"
    assert main(["-q", "denoise", str(src), str(out), *TINY]) == 0
    assert zarr.open_group(str(out), mode="r")["0"].shape == (1, 3, 32, 32)  # c, z, y, x


def test_appended_series_of_different_shapes_warn_which_is_read(tmp_path, caplog):
    src = tmp_path / "mixed.tif"
    tifffile.imwrite(src, ZYX[0], append=True)
    tifffile.imwrite(src, ZYX[1, :16, :16], append=True)
    with open_stack(src) as stack:
        assert stack.metadata.shape == (1, 1, 1, 32, 32) and stack.metadata.n_series == 2
    assert "holds 2 series of different shapes; reading series 0 only" in caplog.text
