"""The napari widget (fm2s.napari_widget) and its npe2 manifest, headless.

Needs ``pip install -e '.[napari,dev]'`` (napari, a Qt binding, pytest-qt); without them the
module skips, except in CI (``FM2S_CI=1``), where that is a failure. Qt runs on its offscreen
platform. The widget is given a :class:`napari.components.ViewerModel`, napari's viewer
without a canvas: the offscreen platform has no OpenGL, which a canvas needs to draw layers.
"""

import os
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything creates the QApplication
if os.environ.get("FM2S_CI") != "1":
    for module in ("napari", "qtpy.QtWidgets", "pytestqt"):
        # ImportError too: qtpy without a Qt binding raises one that is not ModuleNotFoundError.
        pytest.importorskip(module, reason="needs pip install -e '.[napari,dev]'",
                            exc_type=ImportError)

from napari.components import ViewerModel  # noqa: E402
from npe2 import PluginManifest  # noqa: E402

from fm2s import napari_widget, train  # noqa: E402
from fm2s.napari_widget import DenoiseWidget  # noqa: E402
from fm2s.pipeline import denoise_array  # noqa: E402
from fm2s.settings import make_settings  # noqa: E402
from fm2s.synthetic import clean_plane, noisy_plane  # noqa: E402

MANIFEST = Path(napari_widget.__file__).with_name("napari.yaml")
TIMEOUT_MS = 120_000  # generous: a run takes seconds; nothing below depends on how many


def make_widget(qtbot, viewer, **overrides) -> DenoiseWidget:
    widget = DenoiseWidget(viewer, overrides=overrides)
    qtbot.addWidget(widget.native)
    return widget


def run_to_end(qtbot, widget: DenoiseWidget) -> None:
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_manifest_points_at_the_widget(qtbot):
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "fm2s"
    (widget,) = manifest.contributions.widgets
    (command,) = manifest.contributions.commands
    assert widget.command == command.id
    assert command.python_name == "fm2s.napari_widget:DenoiseWidget"
    # napari passes its viewer to the constructor, as when the widget opens from the menu.
    from napari._qt.qt_main_window import _instantiate_dock_widget

    viewer = ViewerModel()
    viewer.add_image(np.zeros((3, 8, 8), np.uint8), name="cells")
    instance = _instantiate_dock_widget(DenoiseWidget, viewer)
    qtbot.addWidget(instance.native)
    assert instance._layer.value.name == "cells"
    assert instance._axes.value == "zyx"


def test_plane_is_denoised_into_a_new_layer(qtbot):
    clean = clean_plane((96, 96), seed=1, blobs=10, filaments=4)
    noisy = noisy_plane(clean, seed=2)
    viewer = ViewerModel()
    viewer.add_image(noisy, name="cells", scale=(0.5, 0.25), translate=(3.0, 4.0))
    widget = make_widget(qtbot, viewer, steps=40)
    assert widget._axes.value == "yx"
    run_to_end(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == [
        "cells", "cells [fm2s auto/fast seed 0 shared]"]
    result = viewer.layers[-1]
    assert result.data.shape == noisy.shape and result.data.dtype == noisy.dtype
    np.testing.assert_array_equal(result.scale, (0.5, 0.25))
    np.testing.assert_array_equal(result.translate, (3.0, 4.0))
    truth = clean * 255
    error = np.abs(result.data - truth).mean()
    assert error < 0.8 * np.abs(noisy - truth).mean()
    assert widget._progress.value == widget._progress.max == 1


def test_stack_matches_denoise_array(qtbot):
    rng = np.random.default_rng(5)
    clean = np.stack([clean_plane((48, 48), seed=2, phase=0.3 * i) for i in range(4)])
    stack = np.stack([noisy_plane(c, seed=int(s), dtype=np.uint16)
                      for c, s in zip(clean, rng.integers(1 << 30, size=4), strict=True)])
    stack = stack.reshape(2, 2, 48, 48)
    viewer = ViewerModel()
    viewer.add_image(stack, name="movie", axis_labels=("t", "z", "y", "x"))
    widget = make_widget(qtbot, viewer, steps=12)
    assert widget._axes.value == "tzyx"
    widget._seed.value = 3
    widget._training.value = "per-plane"
    run_to_end(qtbot, widget)
    result = viewer.layers[-1]
    assert result.name == "movie [fm2s auto/fast seed 3 per-plane]"
    expected = denoise_array(stack, "tzyx", settings=make_settings(steps=12, group_size=1),
                             seed=3)
    assert np.array_equal(result.data, expected)
    assert widget._progress.value == 4


def test_cancel_stops_between_planes_and_adds_no_layer(qtbot, monkeypatch):
    # Hold the worker after its first plane until Cancel was pressed: the test then does not
    # depend on how fast planes are denoised.
    cancelled = threading.Event()
    engine = napari_widget.iter_denoise_array

    def held_after_each_plane(*args, **kwargs):
        for item in engine(*args, **kwargs):
            yield item
            cancelled.wait(TIMEOUT_MS / 1000)

    monkeypatch.setattr(napari_widget, "iter_denoise_array", held_after_each_plane)
    viewer = ViewerModel()
    viewer.add_image(noisy_plane(np.full((6, 32, 32), 0.3), seed=1), name="z")
    widget = make_widget(qtbot, viewer, steps=4)
    widget._training.value = "per-plane"
    widget.run()
    worker = widget.worker
    qtbot.waitUntil(lambda: widget._progress.value == 1, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(worker.aborted, timeout=TIMEOUT_MS):
        widget.cancel()
        cancelled.set()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == 1
    assert widget._progress.value < widget._progress.max == 6
    assert widget._status.value.startswith("cancelled")
    assert widget._run.enabled and not widget._cancel.enabled
    assert train._progress_callbacks == []  # nothing left for the next training to report to


def test_bad_axes_show_an_error_and_add_no_layer(qtbot):
    viewer = ViewerModel()
    viewer.add_image(noisy_plane(np.full((32, 32), 0.3), seed=1), name="cells")
    widget = make_widget(qtbot, viewer, steps=4)
    widget._axes.value = "zyx"  # three letters for a 2-D layer
    run_to_end(qtbot, widget)
    assert len(viewer.layers) == 1
    assert widget._status.value.startswith("error:")
    assert "zyx" in widget._status.value
    assert widget._run.enabled


def test_multiscale_layer_is_denoised_at_full_resolution(qtbot):
    # napari-ome-zarr opens a store as a multiscale layer: the levels, full resolution first
    clean = np.stack([clean_plane((64, 64), seed=3, phase=0.4 * i) for i in range(2)])
    full = noisy_plane(clean, seed=4, dtype=np.uint16)
    half = full[:, ::2, ::2]
    viewer = ViewerModel()
    viewer.add_image([full, half], multiscale=True, name="store", scale=(2.0, 0.5, 0.5))
    widget = make_widget(qtbot, viewer, steps=8)
    assert widget._axes.value == "zyx"
    run_to_end(qtbot, widget)
    assert widget._status.value.startswith("added"), widget._status.value
    result = viewer.layers[-1]
    assert result.name == "store [fm2s auto/fast seed 0 shared]" and not result.multiscale
    expected = denoise_array(full, "zyx", settings=make_settings(steps=8), seed=0)
    assert np.array_equal(result.data, expected)
    np.testing.assert_array_equal(result.scale, (2.0, 0.5, 0.5))


def test_training_progress_moves_during_training(qtbot, monkeypatch):
    # What the training reports reaches the training bar (in the GUI thread), and watching it
    # does not change the result.
    seen = []
    show = DenoiseWidget._show_training

    def recorded(self, done, total, networks):
        seen.append((done, total, networks, threading.current_thread() is threading.main_thread()))
        show.__wrapped__(self, done, total, networks)

    monkeypatch.setattr(DenoiseWidget, "_show_training",
                        napari_widget.ensure_main_thread(recorded))
    noisy = noisy_plane(clean_plane((48, 48), seed=5), seed=6)
    viewer = ViewerModel()
    viewer.add_image(noisy, name="cells")
    widget = make_widget(qtbot, viewer, steps=300)
    run_to_end(qtbot, widget)
    qtbot.waitUntil(lambda: seen and seen[-1][0] == seen[-1][1], timeout=TIMEOUT_MS)
    done = [d for d, *_ in seen]
    total = seen[0][1]
    assert done[0] == 0 and done == sorted(done) and 0 < len(done) - 2 <= 100
    assert all(t == total and on_main for _, t, _, on_main in seen)
    assert widget._training_bar.value == widget._training_bar.max == total
    expected = denoise_array(noisy, "yx", settings=make_settings(steps=300), seed=0)
    assert np.array_equal(viewer.layers[-1].data, expected)


def test_recipe_choice_reaches_the_settings(qtbot):
    viewer = ViewerModel()
    viewer.add_image(noisy_plane(np.full((32, 32), 0.3), seed=1), name="cells")
    widget = make_widget(qtbot, viewer, steps=4)
    assert widget._recipe.value == "fast" and widget.settings().recipe == "fast"
    assert widget._recipe.choices[0] == "fast"  # the quickest first
    widget._recipe.value = "v2"
    settings = widget.settings()
    assert settings == make_settings("auto", "v2", steps=4)
    assert settings.crop_size == 0  # whole planes: the slower, published schedule
    run_to_end(qtbot, widget)
    assert viewer.layers[-1].name == "cells [fm2s auto/v2 seed 0 shared]"


def test_cancel_during_training_stops_it(qtbot, monkeypatch):
    # Cancel is pressed from the first training report: the pass stops at its next step.
    reported = threading.Event()
    step = DenoiseWidget._training_step

    def cancel_at_first_report(self, worker, done, total, networks):
        if not reported.is_set():
            reported.set()
            worker.quit()
        return step(self, worker, done, total, networks)

    monkeypatch.setattr(DenoiseWidget, "_training_step", cancel_at_first_report)
    viewer = ViewerModel()
    viewer.add_image(noisy_plane(np.full((32, 32), 0.3), seed=1), name="cells")
    widget = make_widget(qtbot, viewer, steps=50)
    run_to_end(qtbot, widget)
    assert reported.is_set() and len(viewer.layers) == 1
    assert widget._progress.value == 0
    assert widget._status.value.startswith("cancelled"), widget._status.value
    assert train._progress_callbacks == []
