"""The command line's own behaviour: start-up without torch, -q/-v on either side of the verb,
``fm2s info --json`` against its schema, and training progress."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

import fm2s
from fm2s.cli import INFO_JSON_SCHEMA, build_parser, main, training_reporter
from fm2s.planeio import write_image

TINY = ["--set", "steps=3", "--set", "crop_size=24", "--set", "batch_size=2", "--device", "cpu"]
HEAVY = ("torch", "skimage", "scipy", "zarr", "dask", "tifffile", "imageio", "matplotlib")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["denoise", "--help"],
                                  ["info", "--help"]])
def test_version_and_help_load_no_heavy_module(argv):
    """--version and --help never import torch, SciPy, scikit-image or the stack readers."""
    code = (f"import sys\nfrom fm2s.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit as stop:\n    assert stop.code == 0, stop.code\n"
            f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (f"fm2s {fm2s.__version__}" if argv == ["--version"] else "usage: fm2s") in done.stdout


def test_lazy_package_names():
    """The public names still come from ``import fm2s``; fm2s.denoise stays the function even
    after its submodule was imported by name."""
    import fm2s.denoise as _  # noqa: F401  binds the submodule to the package, as any import

    assert callable(fm2s.denoise) and fm2s.denoise.__name__ == "denoise"
    assert fm2s.make_settings("confocal").preset == "confocal"
    assert set(fm2s.__all__) <= set(dir(fm2s))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = fm2s.nonsense


@pytest.mark.parametrize(
    ("argv", "quiet", "verbose"),
    [
        (["-q", "denoise", "a", "b"], True, False),
        (["denoise", "a", "b", "-q"], True, False),
        (["denoise", "-v", "a", "b"], False, True),
        (["-v", "info", "x"], False, True),
        (["info", "x", "--quiet"], True, False),
        (["train-groups", "a", "b", "--groups", "0", "--settings-json", "{}", "-v"], False, True),
        (["denoise", "a", "b"], False, False),
    ],
)
def test_quiet_and_verbose_before_or_after_the_verb(argv, quiet, verbose):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_quiet_after_the_verb_silences_the_run(tmp_path, plane8):
    src = write_image(tmp_path / "in.png", plane8)
    runs = {}
    for flag in ("-q", "-v"):
        runs[flag] = subprocess.run([sys.executable, "-m", "fm2s", "denoise", str(src),
                                     str(tmp_path / f"out{flag}.png"), *TINY, flag],
                                    capture_output=True, text=True)
        assert runs[flag].returncode == 0, runs[flag].stderr
    assert runs["-q"].stdout == runs["-q"].stderr == ""
    assert "DEBUG fm2s" in runs["-v"].stderr and "wrote" in runs["-v"].stderr


@pytest.fixture(scope="module")
def info_store(tmp_path_factory):
    """A tiny stack denoised into an fm2s store (with provenance), and its input."""
    folder = tmp_path_factory.mktemp("info")
    src, store = folder / "stack.ome.tif", folder / "stack.denoised.ome.zarr"
    assert main(["-q", "synth", str(src), "--t", "1", "--c", "1", "--z", "2", "--size", "32"]) == 0
    assert main(["-q", "denoise", str(src), str(store), "--levels", "1", *TINY]) == 0
    return src, store


@pytest.mark.parametrize("which", ["input", "store"])
def test_info_json_follows_its_schema(info_store, which, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    src, store = info_store
    path = src if which == "input" else store
    assert main(["-q", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)  # strict JSON: one object, nothing else
    jsonschema.validate(info, INFO_JSON_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert info["path"] == str(path) and info["fm2s_version"] == fm2s.__version__
    assert info["input"]["shape"] == [1, 1, 2, 32, 32]
    if which == "store":
        assert info["input"]["format"] == "ome-zarr"
        assert info["provenance"]["fm2s_version"] == fm2s.__version__
        assert info["provenance"]["settings"]["samples"] == 3
    else:
        assert info["provenance"] is None


def test_info_json_writes_no_bare_nan(tmp_path, capsys):
    """A float plane's metadata with unknown sizes still gives strict JSON."""
    jsonschema = pytest.importorskip("jsonschema")
    src = write_image(tmp_path / "plane.tif", np.full((16, 16), 0.5, np.float32))
    assert main(["-q", "info", str(src), "--json"]) == 0
    text = capsys.readouterr().out
    info = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    jsonschema.validate(info, INFO_JSON_SCHEMA, cls=jsonschema.Draft202012Validator)


def test_training_progress_is_logged_at_verbose_and_changes_nothing(tmp_path, plane8, caplog):
    """-v logs training steps and time left; the pixels are those of a quiet run."""
    src = write_image(tmp_path / "in.png", plane8)
    quiet, loud = tmp_path / "quiet.png", tmp_path / "loud.png"
    tiny = [*TINY[2:], "--set", "steps=20", "--threads", "1"]
    assert main(["denoise", str(src), str(quiet), *tiny, "-q"]) == 0
    with caplog.at_level(logging.DEBUG, logger="fm2s"):
        assert main(["denoise", str(src), str(loud), *tiny, "-v"]) == 0
    lines = [r.getMessage() for r in caplog.records
             if r.name == "fm2s" and r.getMessage().startswith("training 1 network")]
    assert lines[0] == "training 1 network: 20 steps"
    assert any("step 10 of 20" in line and "s left" in line for line in lines)
    assert "step 20 of 20" in lines[-1]
    from fm2s.planeio import read_image

    np.testing.assert_array_equal(read_image(quiet), read_image(loud))


def test_training_reporter_bar_on_a_terminal(capsys):
    report = training_reporter(verbose=False, terminal=True)
    report(0, 4, 2)
    for done in range(1, 5):
        report(done, 4, 2)
    err = capsys.readouterr().err
    assert "training 2 networks" in err and "/4 " in err  # tqdm redraws when it sees fit
