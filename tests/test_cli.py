"""The fm2s command line end to end, on tiny images made here."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from fm2s.cli import main
from fm2s.planeio import read_image, write_image

TINY = ["--set", "steps=3", "--set", "crop_size=24", "--set", "batch_size=2", "--device", "cpu"]


@pytest.fixture
def png(tmp_path, plane8):
    return write_image(tmp_path / "Confocal_tiny_1.png", plane8)


def test_denoise_png_keeps_dtype_and_shape(tmp_path, png, plane8):
    out = tmp_path / "out.png"
    assert main(["-q", "denoise", str(png), str(out), *TINY]) == 0
    result = read_image(out)
    assert result.dtype == np.uint8 and result.shape == plane8.shape
    np.testing.assert_array_equal(read_image(png), plane8)  # input untouched


def test_denoise_tiff_stack_denoises_every_plane_as_the_store_does(tmp_path):
    """A plain TIFF stack to .tif: every plane better than its input, and the very pixels of
    the same stack written to an OME-Zarr store (one stack loop, one set of seeds)."""
    import zarr
    from skimage.metrics import peak_signal_noise_ratio as psnr

    from fm2s.synthetic import clean_plane, noisy_plane

    clean = [clean_plane((48, 48), seed=3, phase=0.3 * z, blobs=6, filaments=3) for z in range(3)]
    stack = np.stack([noisy_plane(c, photons=20.0, read_noise=0.02, seed=z, dtype=np.uint16)
                      for z, c in enumerate(clean)])
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, photometric="minisblack")  # three pages, not RGB
    out, store = tmp_path / "out.tif", tmp_path / "out.ome.zarr"
    steps = ["--set", "steps=150", "--device", "cpu", "--threads", "1"]
    assert main(["-q", "denoise", str(src), str(out), *steps]) == 0
    assert main(["-q", "denoise", str(src), str(store), *steps]) == 0
    result = tifffile.imread(out)
    assert result.dtype == np.uint16 and result.shape == stack.shape
    # the store has the stack's axes, czyx (no time axis the TIFF does not have)
    np.testing.assert_array_equal(result, np.asarray(zarr.open(str(store), mode="r")["0"])[0])
    for z, truth in enumerate(clean):
        truth16 = np.rint(truth * 65535)
        assert psnr(truth16, result[z], data_range=65535) > psnr(truth16, stack[z],
                                                                 data_range=65535) + 3


def test_settings_json_round_trip(tmp_path, png):
    saved = tmp_path / "settings.json"
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["-q", "denoise", str(png), str(first), *TINY, "--save-settings", str(saved)]) == 0
    assert main(["-q", "denoise", str(png), str(second), "--settings", str(saved),
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(read_image(first), read_image(second))


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, p: ["denoise", str(d / "missing.png"), str(d / "o.png")], "no such file"),
        (lambda d, p: ["denoise", str(p), str(d / "o.jpg"), *TINY], "unsupported file type"),
        (lambda d, p: ["denoise", str(p), str(d / "o.png"), "--preset", "confocl"],
         "unknown preset 'confocl'"),
        (lambda d, p: ["denoise", str(p), str(d / "o.png"), "--set", "kg=1"],
         "unknown setting 'kg'"),
        (lambda d, p: ["denoise", str(p), str(d / "o.png"), "--set", "nonsense"],
         "expected KEY=VALUE"),
        (lambda d, p: ["denoise", str(p), str(p)], "overwrite the input"),
        (lambda d, p: ["denoise", str(d / "corrupt.tif"), str(d / "o.tif")],
         "corrupt.tif: TIFF file holds no image series"),
        (lambda d, p: ["denoise", str(d / "small.png"), str(d / "o.png"), *TINY],
         "smaller than the network's receptive field"),
        (lambda d, p: ["eval", str(d / "nowhere"), str(d)], "no such directory"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, png, capsys, make_args, message):
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    write_image(tmp_path / "small.png", np.ones((6, 6), np.uint8))
    before = set(tmp_path.iterdir())
    assert main(["-q", *make_args(tmp_path, png)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("fm2s: error:")
    assert set(tmp_path.iterdir()) == before


def test_existing_output_needs_overwrite(tmp_path, png, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    assert main(["denoise", str(png), str(out), *TINY]) == 2
    assert out.read_bytes() == b"keep me"
    assert main(["-q", "denoise", str(png), str(out), *TINY, "--overwrite"]) == 0
    assert read_image(out).shape == read_image(png).shape


def test_eval_prints_tables_and_writes_csv(tmp_path, png, plane8, capsys):
    noisy_dir, truth_dir = tmp_path / "noisy", tmp_path / "gt"
    for name in ("Confocal_a_1.png", "WideField_b_1.png"):
        write_image(noisy_dir / name, plane8)
        write_image(truth_dir / name, np.clip(plane8.astype(int) + 1, 0, 255).astype(np.uint8))
    table = tmp_path / "table.csv"
    markdown = tmp_path / "table.md"
    assert main(["-q", "eval", str(noisy_dir), str(truth_dir), *TINY, "--csv", str(table),
                 "--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    assert "| Confocal | 1 |" in out and "| WideField | 1 |" in out and "| all | 2 |" in out
    rows = list(csv.DictReader(table.open()))
    assert [r["preset"] for r in rows] == ["confocal", "widefield"]
    assert all(float(r["psnr_noisy"]) > 40 and 0 < float(r["psnr"]) < 99 for r in rows)
    assert all(-1 <= float(r["ssim"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    assert markdown.read_text().startswith("| image |")


def test_eval_unknown_microscope_prefix_is_an_error(tmp_path, plane8, capsys):
    for folder in ("n", "g"):
        write_image(tmp_path / folder / "Mystery_1.png", plane8)
    assert main(["eval", str(tmp_path / "n"), str(tmp_path / "g"), *TINY]) == 2
    assert "cannot tell the microscope" in capsys.readouterr().err


def test_demo_and_console_script(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fm2s.cli", "demo", str(tmp_path / "demo"), "--size", "48", *TINY],
        capture_output=True, text=True, check=True)
    assert "PSNR noisy" in done.stdout
    for name in ("noisy.png", "denoised.png", "ground_truth.png"):
        assert read_image(tmp_path / "demo" / name).shape == (48, 48)
    helped = subprocess.run([sys.executable, "-m", "fm2s.cli", "denoise", "--help"],
                            capture_output=True, text=True, check=True)
    for option in ("--preset", "--recipe", "--seed", "--data-range", "--device", "--overwrite"):
        assert option in helped.stdout
