"""denoise_stack: a whole stack to OME-Zarr, plane by plane, with provenance."""

import hashlib
import importlib
import tracemalloc

import numpy as np
import pytest
import tifffile
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from fm2s._provenance import provenance
from fm2s.denoise import denoise_planes
from fm2s.ome import OutputExistsError, open_ome_zarr, write_ome_zarr
from fm2s.pipeline import denoise_array, denoise_stack
from fm2s.prepare import PlaneResult
from fm2s.settings import make_settings
from fm2s.stacks import StackError, open_stack

STACK_PIPELINE = importlib.import_module("fm2s.pipeline")
RNG = np.random.default_rng(2)
NOISY = RNG.poisson(200.0, size=(1, 2, 2, 32, 32)).astype(np.uint16)


@pytest.fixture(scope="module")
def tiny():
    """A schedule short enough for tests on 2 CPU cores."""
    return make_settings("confocal", recipe="fast", steps=2, batch_size=1, channels=1, crop_size=32)


def write_source(path, data=NOISY):
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "TCZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                  "Channel": {"Name": ["a", "b"]}},
    )  # fmt: skip
    return path


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_denoise_stack_end_to_end(tmp_path, tiny):
    source = write_source(tmp_path / "in.ome.tif")
    out = denoise_stack(source, tmp_path / "out.ome.zarr", settings=tiny, seed=3, device="cpu")
    assert siblings(out) == ["in.ome.tif"]
    node = list(Reader(parse_url(str(out), fmt=FormatV04()))())[0]
    # the input's axes (CZYX): no time axis, and no scale made up for one
    assert [d.shape for d in node.data] == [(2, 2, 32, 32), (2, 2, 16, 16), (2, 2, 8, 8)]
    assert [a["name"] for a in node.metadata["axes"]] == list("czyx")
    assert node.data[0].dtype == np.uint16 and node.metadata["channel_names"] == ["a", "b"]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [1, 1, 0.2, 0.2]
    # each channel's two planes share a network, trained from the base seed and the group
    record = provenance(out)
    assert {name: entry["planes"] for name, entry in record["networks"].items()} == {
        "group-0": ["0,0,0", "0,0,1"], "group-1": ["0,1,0", "0,1,1"]}
    assert record["data_range"] is None
    # per plane: bitwise the paper's network per plane, from the base seed and (t, c, z)
    alone = denoise_stack(source, tmp_path / "alone.ome.zarr", settings=tiny.replace(group_size=1),
                          seed=3, device="cpu", progress=False)
    expected = denoise_planes([NOISY[0, 1, 1]], tiny.replace(group_size=1), seed=3,
                              keys=[(0, 1, 1)], device="cpu")
    np.testing.assert_array_equal(open_ome_zarr(alone)[0][0][0, 1, 1].compute(), expected[0])
    assert sorted(provenance(alone)["networks"]) == [
        "plane-0,0,0", "plane-0,0,1", "plane-0,1,0", "plane-0,1,1"]

    assert record["settings"] == tiny.to_dict() and record["settings_digest"] == tiny.digest()
    assert record["seed"] == 3 and "(t, c, z)" in record["seed_derivation"]
    assert set(record["plane_seconds"]) == {"0,0,0", "0,0,1", "0,1,0", "0,1,1"}
    assert record["input"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    pixels = hashlib.sha256(b"".join(hashlib.sha256(NOISY[0, c, z].tobytes()).digest()
                                     for c in (0, 1) for z in (0, 1)))
    assert record["input"]["pixels_sha256"] == pixels.hexdigest()
    assert record["input"]["axes"] == "CZYX" and record["input"]["shape"] == [2, 2, 32, 32]
    assert record["output"]["axes"] == "czyx" and record["output"]["shape"] == [2, 2, 32, 32]
    assert record["output"]["dtype"] == "uint16"
    assert record["device"] == "cpu" and record["started"] <= record["finished"]


def fake_engine(stack, settings, **kwargs):
    """Stands in for the engine: yields each plane back as soon as it is read."""
    for key in stack.plane_keys():
        plane = stack.read_plane(key)
        yield key, PlaneResult(np.array(plane), 0.0, 0, key, 1.0, input_sha256="0" * 64)


def test_an_array_in_memory_gives_the_pixels_of_the_same_stack_in_a_file(tmp_path, tiny):
    source = write_source(tmp_path / "in.ome.tif")
    out = denoise_stack(source, tmp_path / "out.ome.zarr", settings=tiny, seed=3, device="cpu",
                        progress=False)
    from_file = open_ome_zarr(out)[0][0].compute()
    # the napari widget's path: any axis order, the result in the array's own layout
    in_memory = denoise_array(NOISY[0].transpose(1, 0, 2, 3), "zcyx", settings=tiny, seed=3,
                              device="cpu")
    np.testing.assert_array_equal(in_memory.transpose(1, 0, 2, 3), from_file[0])
    with pytest.raises(StackError, match=r"array: axes 'zyx' do not match an array of 4"):
        denoise_array(NOISY[0], "zyx", settings=tiny)


def test_memory_stays_at_a_few_planes(tmp_path, monkeypatch, tiny):
    stack = RNG.integers(0, 4000, size=(128, 256, 256), dtype=np.uint16)  # 16 MiB
    source = tmp_path / "big.tif"
    tifffile.imwrite(source, stack, imagej=True, metadata={"axes": "ZYX"})
    monkeypatch.setattr(STACK_PIPELINE, "denoise_stack_planes", fake_engine)
    tracemalloc.start()
    try:
        out = denoise_stack(
            source, tmp_path / "big.ome.zarr", settings=tiny, progress=False, ngff_version="0.5"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < stack.nbytes / 4, f"peak {peak / 2**20:.1f} MiB for a 16 MiB stack"
    np.testing.assert_array_equal(open_ome_zarr(out)[0][0][0, 0].compute(), stack)


def test_bad_input_raises_stack_error_and_leaves_nothing(tmp_path, tiny, monkeypatch):
    source = tmp_path / "zlib.tif"
    with tifffile.TiffWriter(source) as tif:
        for plane in NOISY[0, 0]:
            tif.write(plane, compression="zlib", metadata=None)
    with tifffile.TiffFile(source) as tif:
        offset, count = tif.pages[1].dataoffsets[0], tif.pages[1].databytecounts[0]
    raw = bytearray(source.read_bytes())
    raw[offset : offset + count] = b"\x00" * count
    source.write_bytes(bytes(raw))
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(StackError, match=r"zlib\.tif: cannot read plane t,c,z=0,0,1"):
        denoise_stack(source, out, settings=tiny, device="cpu", progress=False)
    assert siblings(out) == ["zlib.tif"]

    small = tmp_path / "small.tif"
    tifffile.imwrite(small, NOISY[0, 0, :, :8, :8])
    with pytest.raises(StackError, match=r"small\.tif: cannot denoise: .*receptive field"):
        denoise_stack(small, out, settings=tiny, device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        denoise_stack(tmp_path / "missing.tif", out, settings=tiny)
    backup = tmp_path / "zlib.tif.bak"
    backup.write_bytes(b"x")
    with pytest.raises(StackError, match=r"zlib\.tif\.bak: unsupported file type"):
        denoise_stack(backup, out, settings=tiny)
    assert not out.exists()


def test_output_checks_come_before_any_denoising(tmp_path, tiny, monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("denoising started")

    monkeypatch.setattr(STACK_PIPELINE, "denoise_stack_planes", no_engine)
    source = write_source(tmp_path / "in.ome.tif")
    existing = tmp_path / "exists.ome.zarr"
    existing.mkdir()
    with pytest.raises(OutputExistsError, match=r"exists\.ome\.zarr: output exists"):
        denoise_stack(source, existing, settings=tiny)
    store = write_ome_zarr(tmp_path / "in.ome.zarr", NOISY)
    with pytest.raises(StackError, match="output lies inside the input"):
        denoise_stack(store, store / "denoised.ome.zarr", settings=tiny)


@pytest.mark.shared_data
@pytest.mark.slow
def test_golgi_z_stack_end_to_end(shared_data, tmp_path):
    source = (
        shared_data / "neubias_training_resources/image_data/xyz_calibrated_16bit__golgi_bfa.tif"
    )
    settings = make_settings("confocal", recipe="fast", steps=1, batch_size=1, channels=1,
                             crop_size=32)  # fmt: skip
    out = denoise_stack(source, tmp_path / "golgi.ome.zarr", settings=settings, progress=False)
    with open_stack(source) as before, open_stack(out) as after:
        assert after.metadata.shape == before.metadata.shape == (1, 1, 25, 137, 147)
        assert after.metadata.dtype == "uint16"
        assert after.metadata.pixel_sizes == pytest.approx(before.metadata.pixel_sizes)
        assert after.metadata.units == before.metadata.units
    record = provenance(out)
    assert len(record["plane_seconds"]) == 25 and record["input"]["size_bytes"] == 1595946
    assert [lvl.shape[-2:] for lvl in open_ome_zarr(out)[0]] == [(137, 147), (68, 73), (34, 36)]
