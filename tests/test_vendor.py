"""The microscopes' own files (fm2s._vendor) on the real CZI, ND2, LIF and OIB files of
``../shared/data``: what open_stack finds against what the files say (their READMEs), pixels
against a second reader, clear errors for broken files, and the CLI and the workflow end to
end. Skips without ``../shared``; fails without the ``vendor`` extra in CI (FM2S_CI=1)."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import skip_unless_in_ci

from fm2s._ngff import PROVENANCE_KEY
from fm2s.ome import open_ome_zarr
from fm2s.stacks import StackError, open_stack


@pytest.fixture(autouse=True)
def vendor_libraries():
    for module in ("bioio", "bioio_czi", "bioio_nd2", "bioio_lif", "oiffile", "pylibCZIrw"):
        if importlib.util.find_spec(module) is None:
            skip_unless_in_ci(f"{module} missing: pip install -e '.[vendor]'")


CZI, VENDOR = "czitools_samples", "vendor_formats"
UM = "micrometer"
# file: (shape t,c,z,y,x, dtype, channel names, pixel sizes z,y,x in um, time step s, series)
EXPECTED = {
    f"{CZI}/CellDivision_T3_Z5_CH2_X240_Y170.czi":
        ((3, 2, 5, 170, 240), "uint16", ["LED555", "LED470"], (0.32, 0.0905767, 0.0905767),
         60.045, 1),
    f"{CZI}/S3_1Pos_2Mosaic_T2_Z3_CH2_sm.czi":
        ((2, 2, 3, 122, 295), "uint16", ["DAPI", "EGFP"], (1.0, 1.6, 1.6), 33.412, 3),
    f"{CZI}/LLS7_small.czi":
        ((2, 2, 3, 64, 64), "uint16", ["LatticeLightsheet 1-T1", "LatticeLightsheet 2-T2"],
         (0.144992, 0.144992, 0.144992), None, 1),
    # its scaling has no distances: bioio-czi cannot parse it, the pixels are still read
    f"{CZI}/DAPI_GFP.czi": ((1, 2, 1, 640, 640), "uint8", None, (None, None, None), None, 1),
    f"{VENDOR}/example-multichannel.nd2":
        ((1, 4, 1, 256, 256), "uint16", ["Mono", "DAPI", "FITC BP", "TRITC BP"],
         (None, 0.323390, 0.323390), None, 1),
    f"{VENDOR}/example-cerevisiae.nd2":
        ((1, 2, 1, 256, 256), "uint16", ["DIC", "FITC BP"], (None, 0.108333, 0.108333), None, 1),
    f"{VENDOR}/example-timelapse.nd2":
        ((53, 1, 1, 64, 64), "uint16", ["GFP 488 nm"], (None, 0.325, 0.325), 0.50016, 1),
    f"{VENDOR}/example-zstack.nd2":
        ((1, 1, 11, 128, 128), "uint16", ["FITC BP"], (6.0, 0.323390, 0.323390), None, 1),
    # 4 mosaic tiles of 64 x 64 stitched; its z step is -6.23 um in the file
    f"{VENDOR}/PR2729_frameOrderCombinedScanTypes.lif":
        ((2, 2, 3, 127, 127), "uint8", ["Green", "Red"], (6.227615, 3.968254, 3.968254), 8.271,
         1),
    f"{VENDOR}/test.oib":
        ((1, 3, 1, 256, 256), "uint16", ["CH1", "CH2", "TD1"], (None, 0.177, 0.177), None, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metadata_is_what_the_file_says(shared_data, name):
    shape, dtype, channels, sizes, time_step, n_series = EXPECTED[name]
    with open_stack(shared_data / name) as stack:
        meta = stack.metadata
        plane = stack.read_plane((shape[0] - 1, shape[1] - 1, shape[2] - 1))
    assert meta.format == name.rsplit(".", 1)[1]
    assert (meta.shape, meta.dtype, meta.channel_names) == (shape, dtype, channels)
    assert meta.n_series == n_series
    for axis, expected in zip("zyx", sizes, strict=True):
        if expected is None:
            assert meta.pixel_sizes[axis] is None or (axis == "z" and shape[2] == 1)
        else:
            assert meta.pixel_sizes[axis] == pytest.approx(expected, rel=1e-5)
            assert meta.units[axis] == UM
    assert meta.time_step == (pytest.approx(time_step, rel=1e-4) if time_step else None)
    assert plane.shape == shape[3:] and plane.dtype == dtype and plane.any()


@pytest.mark.parametrize("name", [f"{VENDOR}/test.oib", f"{VENDOR}/example-multichannel.nd2",
                                  f"{CZI}/LLS7_small.czi"])
def test_planes_read_from_many_threads_at_once_are_the_planes(shared_data, name):
    """dask computes a stack with a thread pool; a reader whose planes share one file handle
    must not mix them up (the OIB reader did: "not a TIFF file" now and then)."""
    from concurrent.futures import ThreadPoolExecutor

    with open_stack(shared_data / name) as stack:
        keys = stack.plane_keys()
        alone = [stack.read_plane(k) for k in keys]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                for plane, expected in zip(pool.map(stack.read_plane, keys), alone, strict=True):
                    np.testing.assert_array_equal(plane, expected)


def test_pixels_equal_a_second_reader(shared_data):
    import bioio
    import nd2
    import oiffile

    # CZI: pylibCZIrw (ours) against aicspylibczi (bioio-czi's default), a mosaic scene too
    path = shared_data / CZI / "S3_1Pos_2Mosaic_T2_Z3_CH2_sm.czi"
    image = bioio.BioImage(path)
    image.set_scene(2)
    with open_stack(path, series=2) as stack:
        assert stack.metadata.shape == (2, 2, 3, 237, 352)
        np.testing.assert_array_equal(stack.data.compute(), image.get_image_data("TCZYX"))
    path = shared_data / VENDOR / "example-multichannel.nd2"
    with open_stack(path) as stack:
        np.testing.assert_array_equal(stack.data.compute()[0, :, 0], nd2.imread(path))
    with open_stack(shared_data / VENDOR / "test.oib") as stack:
        # the reference value in oiffile's README
        assert stack.data[0, :, 0, 95, 216].compute().tolist() == [820, 50, 436]
        np.testing.assert_array_equal(stack.data.compute()[0, :, 0],
                                      oiffile.imread(shared_data / VENDOR / "test.oib"))


def test_series_out_of_range_lists_the_scenes(shared_data):
    path = shared_data / CZI / "S3_1Pos_2Mosaic_T2_Z3_CH2_sm.czi"
    with pytest.raises(StackError, match=r"S3_1Pos.*series 3 out of range; the file has 3 "
                                         r"series \(0: scene 0, 1: scene 1, 2: scene 2\)"):
        open_stack(path, series=3)
    with open_stack(path, series=1) as stack:
        assert stack.metadata.shape == (2, 2, 3, 64, 64)


@pytest.mark.parametrize(("name", "message"), [
    (f"{CZI}/LLS7_small.czi", "not a readable Zeiss CZI file"),
    (f"{VENDOR}/example-zstack.nd2", "not a readable Nikon ND2 file"),
    (f"{VENDOR}/PR2729_frameOrderCombinedScanTypes.lif", "cannot read plane t,c,z=0,0,0"),
    (f"{VENDOR}/test.oib", "not a readable Olympus OIB file"),
])  # fmt: skip
def test_truncated_and_foreign_files_fail_clearly_without_output(shared_data, tmp_path, name,
                                                                 message):
    source = shared_data / name
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[:100_000])
    junk = tmp_path / f"junk{source.suffix}"
    junk.write_bytes(b"not a microscope file\n" * 10)
    for path, expected in ((cut, message), (junk, "not a readable")):
        out = tmp_path / "out.ome.zarr"
        done = subprocess.run([sys.executable, "-m", "fm2s", "denoise", str(path), str(out),
                               "--set", "steps=2"], capture_output=True, text=True, check=False)
        assert done.returncode == 2, done.stderr
        assert f"{path}: {expected}" in done.stderr
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cut.name, junk.name])


def test_missing_extra_names_it(shared_data, monkeypatch):
    real = importlib.import_module

    def no_nd2(name, *args):
        if name.startswith("bioio"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_nd2)
    with pytest.raises(StackError, match=r"example-zstack.nd2: reading Nikon ND2 files needs "
                                         r"bioio; install fm2s's vendor extra: pip install "
                                         r"'fm2s\[vendor\]'"):
        open_stack(shared_data / VENDOR / "example-zstack.nd2")


def test_cli_store_carries_channels_pixel_sizes_and_time(shared_data, tmp_path):
    source = shared_data / VENDOR / "example-timelapse.nd2"
    out = tmp_path / "timelapse.ome.zarr"
    subprocess.run([sys.executable, "-m", "fm2s", "denoise", str(source), str(out), "--set",
                    "steps=2", "--set", "crop_size=16", "--device", "cpu", "--threads", "1"],
                   check=True, capture_output=True)  # fmt: skip
    with open_stack(out) as stack:
        meta = stack.metadata
        denoised = stack.data.compute()
    assert meta.shape == (53, 1, 1, 64, 64) and meta.dtype == "uint16"
    assert meta.channel_names == ["GFP 488 nm"]
    assert meta.channel_colors == ["07FF00"]  # NIS-Elements' green, not white
    assert meta.pixel_sizes["x"] == pytest.approx(0.325) and meta.units["x"] == UM
    assert meta.time_step == pytest.approx(0.50016, rel=1e-4) and meta.time_unit == "second"
    assert denoised.std() > 0
    info = subprocess.run([sys.executable, "-m", "fm2s", "info", str(out)], check=True,
                          capture_output=True, text=True).stdout
    assert "[nd2, series 0]" in info and "channels:  GFP 488 nm, colour #07FF00" in info
    assert "time step: 0.50016 second" in info
    _, attrs = open_ome_zarr(out)
    assert attrs[PROVENANCE_KEY]["input"]["format"] == "nd2"


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="needs snakemake")
def test_workflow_acquisition_folder_of_vendor_files(shared_data, tmp_path):
    from test_workflow import REPO

    folder = tmp_path / "acquired"
    folder.mkdir()
    for name in (f"{CZI}/LLS7_small.czi", f"{VENDOR}/example-zstack.nd2", f"{VENDOR}/test.oib"):
        shutil.copy(shared_data / name, folder)
        day_ago = os.stat(folder / (shared_data / name).name).st_mtime - 86400
        os.utime(folder / (shared_data / name).name, (day_ago, day_ago))
    config = {"acquisition": {"folder": "acquired", "quiet_seconds": 60, "settle_seconds": 0},
              "denoise": {"overrides": {"steps": 2, "crop_size": 16, "batch_size": 1},
                          "device": "cpu", "planes_per_job": 8}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                           str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
                           "--configfile", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for stem, channels, x in (("LLS7_small", ["LatticeLightsheet 1-T1",
                                              "LatticeLightsheet 2-T2"], 0.144992),
                              ("example-zstack", ["FITC BP"], 0.323390),
                              ("test", ["CH1", "CH2", "TD1"], 0.177)):  # fmt: skip
        with open_stack(tmp_path / f"results/{stem}.denoised.ome.zarr") as stack:
            assert stack.metadata.channel_names == channels
            assert stack.metadata.pixel_sizes["x"] == pytest.approx(x, rel=1e-5)
