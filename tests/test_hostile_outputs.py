"""Outputs under hostile conditions (issue 40): names near the file-name limit are refused
before any work, concurrent writers of one store never leave a store aside or raise anything
but the clean 'exists' error, and a full disk in a workflow job is one line in its log."""

import errno
import os
import re
import shutil
from pathlib import Path

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
    monkeypatch.setattr("fm2s.pipeline.denoise_stack_planes", lambda *a, **k: 1 / 0)
    monkeypatch.setattr("fm2s.jobs.train_stack", lambda *a, **k: 1 / 0)
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


# -- 5: concurrent writers of one store -----------------------------------------------------------


def another_writer_publishes_first(monkeypatch, path, *, swap: bool = True):
    """Make another writer publish a whole store at `path` just before this process's first
    rename onto `path` (by renameat2 or rename; `swap=False`: as on a file system without
    renameat2's flags)."""
    done = []

    def publish_other():
        if not done:
            done.append(True)
            other = path.parent / "other-writer"
            other.mkdir()
            (other / "0").write_text("other")
            if path.exists():  # the other writer replaces the old store as well
                shutil.rmtree(path)
            os.rename(other, path)  # the real rename: patched below only for `outputs`

    real_rename, real_renameat2 = os.rename, getattr(outputs, "_renameat2", None)

    def rename(src, dst, *args, **kwargs):
        if os.fspath(dst) == os.fspath(path):
            publish_other()
        return real_rename(src, dst, *args, **kwargs)

    def renameat2(src, dst, flags):
        if not swap:
            return False
        if os.fspath(dst) == os.fspath(path):
            publish_other()
        return real_renameat2(src, dst, flags)

    monkeypatch.setattr(outputs, "os", type("os", (), {**vars(os), "rename": rename}))
    monkeypatch.setattr(outputs, "_renameat2", renameat2, raising=False)
    return done


def write_store(path, text, *, overwrite):
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.mkdir()
        (tmp / "0").write_text(text)


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "rename"])
def test_overwrite_while_another_writer_publishes_leaves_one_whole_store(
    tmp_path, monkeypatch, swap
):
    path = tmp_path / "x.ome.zarr"
    write_store(path, "old", overwrite=False)
    done = another_writer_publishes_first(monkeypatch, path, swap=swap)
    write_store(path, "mine", overwrite=True)
    assert done and (path / "0").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]  # nothing aside


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "rename"])
def test_a_store_that_appears_while_writing_is_the_clean_exists_error(
    tmp_path, monkeypatch, swap
):
    path = tmp_path / "x.ome.zarr"
    done = another_writer_publishes_first(monkeypatch, path, swap=swap)
    with pytest.raises(outputs.OutputExistsError, match="output appeared while writing"):
        write_store(path, "mine", overwrite=False)
    assert done and (path / "0").read_text() == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]


def _write_many(args):
    folder, overwrite, writes = args
    path = os.path.join(folder, "x.ome.zarr")
    outcomes = []
    for i in range(writes):
        try:
            write_store(Path(path), str(i), overwrite=overwrite)
            outcomes.append("ok")
        except outputs.OutputExistsError:
            outcomes.append("exists")
        except OSError as error:
            outcomes.append(f"{type(error).__name__}: {error}")
    return outcomes


@pytest.mark.parametrize("overwrite", [True, False])
def test_concurrent_writers_of_one_store(tmp_path, overwrite):
    """4 processes x 40 writes: each write publishes whole or, without overwrite, gets the
    clean 'exists' error; no old store is left aside. (The outcome is checked, not timing.)"""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        runs = pool.map(_write_many, [(str(tmp_path), overwrite, 40)] * 4)
    outcomes = [o for run in runs for o in run]
    allowed = {"ok"} if overwrite else {"ok", "exists"}
    assert set(outcomes) <= allowed, sorted(set(outcomes) - allowed)[:3]
    assert overwrite or outcomes.count("ok") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]
    assert int((tmp_path / "x.ome.zarr" / "0").read_text()) in range(40)
