"""Outputs under hostile conditions (issue 40): names near the file-name limit are refused
before any work, concurrent writers of one store never leave a store aside or raise anything
but the clean 'exists' error, and a full disk in a workflow job is one line in its log."""

import errno
import os
import re

import numpy as np
import pytest
import tifffile

from fm2s import outputs
from fm2s.cli import main
from fm2s.outputs import OutputError, atomic_output, check_writable

TINY = ["--set", "steps=4", "--set", "crop_size=16", "--device", "cpu", "--threads", "1"]
ZYX = np.random.default_rng(6).integers(0, 60000, size=(2, 32, 32), dtype=np.uint16)


def name_max(folder) -> int:
    return os.pathconf(folder, "PC_NAME_MAX")


def longest_name(folder, suffix: str) -> str:
    """The longest output name whose temporary still fits the folder's file system."""
    extra = outputs._temporary_name_bytes("")
    return "a" * (name_max(folder) - extra - len(suffix)) + suffix


# -- 6: names near the file-name limit ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ome.zarr", ".tif"])
def test_a_name_whose_temporary_does_not_fit_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, suffix
):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, ZYX)
    monkeypatch.setattr("fm2s.engine.denoise_stack_planes", lambda *a, **k: 1 / 0)
    monkeypatch.setattr("fm2s.engine.train_stack", lambda *a, **k: 1 / 0)
    name = "b" + longest_name(tmp_path, suffix)  # one byte too long, well below NAME_MAX
    assert len(name) < name_max(tmp_path)
    assert main(["-q", "denoise", str(src), str(tmp_path / name), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fm2s: error: {tmp_path / name}: cannot write the output: its name "
                          f"is {len(name)} bytes; at most {len(name) - 1} fit")
    assert ".tmp-" not in err  # names the user's path, not one the user never gave
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    model = "m" * (len(name) - 4) + ".npz"
    assert main(["-q", "train", str(src), "-o", str(tmp_path / model), *TINY]) == 2
    assert f"{model}: cannot write the model file: its name is" in capsys.readouterr().err


def test_the_longest_name_that_fits_is_written(tmp_path):
    name = longest_name(tmp_path, ".txt")
    assert check_writable(tmp_path / name)
    with atomic_output(tmp_path / name) as tmp:
        tmp.write_text("whole")
    assert (tmp_path / name).read_text() == "whole"
    with pytest.raises(OutputError, match=r"its name is \d+ bytes; at most \d+ fit"):
        check_writable(tmp_path / ("x" + name))


def test_a_missing_folder_with_too_long_a_name_is_refused(tmp_path):
    folder = "f" * (name_max(tmp_path) + 1)
    with pytest.raises(OutputError, match=re.escape(
            f"out.tif: cannot write the output: folder name '{folder}' is {len(folder)} bytes, "
            f"longer than the file system's limit of {name_max(tmp_path)}")):
        check_writable(tmp_path / "new" / folder / "out.tif")
    assert list(tmp_path.iterdir()) == []


def test_errno_of_too_long_a_name_is_what_the_check_prevents(tmp_path):
    """The check's premise: a name over the limit fails with ENAMETOOLONG on this system."""
    with pytest.raises(OSError) as info:
        (tmp_path / ("z" * (name_max(tmp_path) + 1))).write_text("")
    assert info.value.errno == errno.ENAMETOOLONG
