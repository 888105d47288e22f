"""Outputs appear whole or not at all, follow the umask, and are checked before any work;
bad runs end in one line naming the path (fm2s.outputs and the command line)."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fm2s import outputs
from fm2s.cli import main
from fm2s.outputs import (
    OutputError,
    OutputExistsError,
    atomic_output,
    check_writable,
    remove_stale_temporaries,
    temporary_path,
)
from fm2s.stacks import open_stack
from fm2s.synthetic import clean_plane, noisy_plane

TINY = ["--set", "steps=4", "--set", "crop_size=16", "--device", "cpu", "--threads", "1"]


def stack(planes=3, size=32):
    return np.stack([noisy_plane(clean_plane((size, size), seed=z), seed=z, dtype=np.uint16)
                     for z in range(planes)])


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_output_publishes_or_leaves_nothing(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert not path.exists() and hidden(tmp_path) == []
    with atomic_output(path) as tmp:
        tmp.write_text("whole")
    assert path.read_text() == "whole" and hidden(tmp_path) == []
    with pytest.raises(OutputExistsError, match="out.txt: output exists"), atomic_output(path):
        pass
    # Another run that finishes first is never overwritten (rename would replace it).
    other = tmp_path / "raced.txt"
    with pytest.raises(OutputExistsError, match="appeared while writing"):
        with atomic_output(other) as tmp:
            tmp.write_text("second")
            other.write_text("first")
    assert other.read_text() == "first" and hidden(tmp_path) == []
    with atomic_output(other, overwrite=True) as tmp:  # unless asked to
        tmp.mkdir()
    assert other.is_dir()


def test_stale_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    path = tmp_path / "x.ome.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = outputs._HOST
    stale = [f".x.ome.zarr.tmp-{host}-{dead}-0123abcd", f".x.ome.zarr.tmp-{dead}-89abcdef"]
    kept = [f".x.ome.zarr.tmp-{host}-{os.getpid()}-0123abcd",  # alive
            f".x.ome.zarr.tmp-otherhost-{dead}-0123abcd",  # another node's: cannot judge
            f".xy.ome.zarr.tmp-{host}-{dead}-0123abcd",  # another output's
            ".x.ome.zarr.notes"]  # fmt: skip
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "0").write_bytes(b"chunk")
    assert sorted(p.name for p in remove_stale_temporaries(path)) == sorted(stale)
    assert hidden(tmp_path) == sorted(kept)
    assert temporary_path(path).name.startswith(f".x.ome.zarr.tmp-{host}-{os.getpid()}-")


def test_check_writable_names_the_path_and_the_problem(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    assert check_writable(tmp_path / "new" / "deeper" / "out.tif")  # folders made later
    with pytest.raises(OutputError, match=r"file/out.tif: cannot write the output: .*file is "
                       r"a file, not a folder"):
        check_writable(tmp_path / "file" / "out.tif")
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)  # root passes access()
    with pytest.raises(OutputError, match=r"out.tif: cannot write the output: folder .* is not "
                       r"writable"):
        check_writable(tmp_path / "out.tif")


@pytest.mark.parametrize("suffix", [".tif", ".png", ".ome.zarr"])
def test_outputs_follow_the_umask(tmp_path, suffix):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack(1)[0])
    old = os.umask(0o002)
    try:
        assert main(["-q", "denoise", str(src), str(tmp_path / f"out{suffix}"), *TINY]) == 0
    finally:
        os.umask(old)
    out = tmp_path / f"out{suffix}"
    mode = (out / ".zattrs" if out.is_dir() else out).stat().st_mode & 0o777
    assert mode == 0o664


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack(2))
    (tmp_path / "file").write_text("")
    # Any denoising would fail: the refusal must come first.
    monkeypatch.setattr("fm2s.pipeline.denoise_stack_planes", lambda *a, **k: 1 / 0)
    settings = ["--save-settings", str(tmp_path / "file/s.json")]
    for output, extra in ((tmp_path / "file/out.tif", []), (tmp_path / "file/out.ome.zarr", []),
                          (tmp_path / "ok.tif", settings)):
        assert main(["-q", "denoise", str(src), str(output), *extra, *TINY]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "is a file, not a folder" in err and "file/" in err
    assert main(["-q", "train", str(src), "-o", str(tmp_path / "file/m.npz"), *TINY]) == 2
    assert "m.npz: cannot write the model file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in.tif"]


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack(2))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("fm2s.planeio.tifffile.imwrite", full)
    assert main(["-q", "denoise", str(src), str(tmp_path / "out.tif"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err == f"fm2s: error: {tmp_path / 'out.tif'}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_tiff_output_keeps_the_inputs_kind_axes_and_pixel_sizes(tmp_path):
    data = np.stack([stack(3) for _ in range(2)])[:, :, None]  # (t, z, c, y, x)
    cases = {
        "hyper.tif": dict(imagej=True, resolution=(5.0, 4.0), metadata={
            "axes": "TZCYX", "unit": "um", "spacing": 0.5, "finterval": 30.0}),
        "ome-named-plain.tif": dict(ome=True, metadata={
            "axes": "TZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.25,
            "PhysicalSizeZ": 1.5, "TimeIncrement": 2.0, "Channel": {"Name": ["gfp"]}}),
        "plain.tif": dict(resolution=(5000.0, 5000.0), resolutionunit="CENTIMETER"),
    }  # fmt: skip
    for name, options in cases.items():
        src = tmp_path / name
        tifffile.imwrite(src, data if "plain.tif" != name else data[0, :, 0],
                         photometric="minisblack", **options)
        out = tmp_path / f"out-{name}"
        assert main(["-q", "denoise", str(src), str(out), *TINY]) == 0
        with open_stack(src) as before, open_stack(out) as after:
            a, b = before.metadata, after.metadata
            for field in ("format", "axes_found", "shape", "dtype", "pixel_sizes", "units",
                          "time_step", "time_unit", "channel_names"):
                assert getattr(a, field) == getattr(b, field), (name, field)
    assert open_stack(tmp_path / "out-plain.tif").metadata.pixel_sizes["x"] == pytest.approx(2.0)


def run_cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fm2s", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_removes_the_temporary_and_exits_143(tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack(2, 48))
    out = tmp_path / "out.ome.zarr"
    job = run_cli("-q", "denoise", str(src), str(out), "--set", "steps=100000", "--device",
                  "cpu", "--threads", "1")
    try:
        deadline = time.monotonic() + 300
        while not hidden(tmp_path) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.1)
        assert hidden(tmp_path), "the store's temporary never appeared"
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM
    assert err == "fm2s: stopped by SIGTERM; no partial output was left\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_info_into_a_closed_pipe_is_quiet(tmp_path):
    src, out = tmp_path / "in.tif", tmp_path / "out.ome.zarr"
    tifffile.imwrite(src, stack(1))
    assert main(["-q", "denoise", str(src), str(out), *TINY]) == 0
    job = subprocess.run(f"{sys.executable} -m fm2s info {out} | head -1", shell=True,
                         capture_output=True, text=True, check=True)
    assert job.stdout.startswith("store:") and job.stderr == ""


def test_bad_tiffs_and_odd_requests_get_clear_messages(tmp_path, capfd, caplog):
    planes = stack(6)
    tifffile.imwrite(tmp_path / "plain.tif", planes)
    tifffile.imwrite(tmp_path / "ij.tif", planes, imagej=True)
    for name in ("plain.tif", "ij.tif"):  # cut mid-way: never a silent 1 plane of 6
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut-{name}").write_bytes(data[: len(data) // 2])
        for out in ("o.tif", "o.ome.zarr"):
            assert main(["-q", "denoise", str(tmp_path / f"cut-{name}"), str(tmp_path / out),
                         *TINY]) == 2
            err = capfd.readouterr().err
            assert err.startswith(f"fm2s: error: {tmp_path / f'cut-{name}'}: corrupt or "
                                  "truncated") and err.count("\n") == 1, err  # no tifffile lines
    tifffile.imwrite(tmp_path / "line.tif", np.arange(10, dtype=np.uint16))
    assert main(["-q", "denoise", str(tmp_path / "line.tif"), str(tmp_path / "o.tif")]) == 2
    assert "line.tif: a 1-D image (axes 'X', shape (10,)); fm2s denoises 2-D planes" in (
        capfd.readouterr().err)
    bad = planes.astype(np.float32)
    bad[4, 3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    assert main(["-q", "denoise", str(tmp_path / "nan.tif"), str(tmp_path / "o.tif")]) == 2
    assert "nan.tif: cannot denoise: plane t,c,z=0,0,4: plane contains NaN" in (
        capfd.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("o")) == []
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((2, 64, 64), np.uint16))
    caplog.set_level("INFO")
    assert main(["denoise", str(tmp_path / "zero.tif"), str(tmp_path / "z.ome.zarr"),
                 "--levels", "50", *TINY]) == 0
    assert "50 pyramid levels asked, 7 written" in caplog.text
    assert "levels; the global Poisson stage" not in caplog.text  # no 12-bit warning for zeros
    assert sorted(p.name for p in (tmp_path / "z.ome.zarr").iterdir() if p.name.isdigit()) == [
        str(k) for k in range(7)]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "zero.tif"), 0)  # input untouched


def test_an_input_changed_while_read_gives_no_output(tmp_path, monkeypatch, capsys):
    import fm2s.pipeline

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack(3), photometric="minisblack")
    original = fm2s.pipeline.denoise_stack_planes

    def rewritten_meanwhile(*args, **kwargs):
        for n, item in enumerate(original(*args, **kwargs)):
            if n == 1:  # the acquisition software writes the file again
                tifffile.imwrite(src, stack(3)[::-1], photometric="minisblack")
            yield item

    monkeypatch.setattr(fm2s.pipeline, "denoise_stack_planes", rewritten_meanwhile)
    for out in ("out.tif", "out.ome.zarr"):
        assert main(["-q", "denoise", str(src), str(tmp_path / out), *TINY]) == 2
        assert f"{src}: changed while being read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
