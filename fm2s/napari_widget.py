"""napari widget: denoise an image layer with fm2s (contributed by ``fm2s/napari.yaml``).

The widget runs :func:`fm2s.pipeline.iter_denoise_array`, the engine of ``fm2s denoise``, in a
worker thread. Two bars show progress: *training*, the optimiser steps of the training pass in
progress (from :func:`fm2s.train.training_progress`, which only observes, so results are
those without it), and *planes*, the planes finished. Cancel stops at the next training step or
between planes. The result is added as a new image layer of the input's shape, dtype, scale and
translation, named after what was done, e.g. ``cells [fm2s auto/fast seed 0 shared]``.

A multiscale layer (an OME-Zarr store opened with napari-ome-zarr) is denoised at its full
resolution, ``layer.data[0]``; the result is one full-resolution layer.

The recipe is the speed against quality choice: ``fast`` (the default) trains on small crops
with shared networks; ``v2`` and ``v1``, the published schedules, train on whole planes and
take much longer (:data:`fm2s.settings.RECIPES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from superqt.utils import ensure_main_thread

from fm2s.pipeline import iter_denoise_array
from fm2s.settings import PRESETS, RECIPES, make_settings
from fm2s.train import training_progress

if TYPE_CHECKING:
    import napari

__all__ = ["DenoiseWidget", "guess_axes"]

# napari numbers axes from the last; a layer without letter labels gets the usual NGFF order.
_AXES_BY_NDIM = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}

# The recipe choices, fastest first, as (shown, recipe); recipes not listed follow by name.
_RECIPE_LABELS = {"fast": "fast: crops, shared networks (default)",
                  "v2": "v2: whole planes, as published (slower)",
                  "v1": "v1: whole planes, first paper (slowest)"}  # fmt: skip
_RECIPE_CHOICES = [(label, name) for name, label in _RECIPE_LABELS.items() if name in RECIPES]
_RECIPE_CHOICES += [(name, name) for name in RECIPES if name not in _RECIPE_LABELS]

# The training bar moves at most this many times per training pass: each move crosses to the
# GUI thread, and a pass has thousands of steps.
_TRAINING_UPDATES = 100


class _Cancelled(Exception):
    """Raised in a training step once Cancel was pressed, to stop the pass in progress."""


def guess_axes(layer: Image) -> str:
    """The axes of an image layer as NGFF letters, e.g. ``"zyx"``.

    Parameters
    ----------
    layer : napari.layers.Image

    Returns
    -------
    str
        The layer's ``axis_labels`` when each is one distinct letter of ``tczyx`` (in any
        case), else the usual order for its number of dimensions (2 ``yx``, 3 ``zyx``, 4
        ``tzyx``, 5 ``tczyx``; empty for other sizes). An RGB(A) layer keeps its samples in a
        last axis that napari does not count in ``ndim``: ``c`` is appended, e.g. ``"yxc"``.
    """
    axes = "".join(str(label).lower() for label in layer.axis_labels)
    if len(axes) != layer.ndim or not set(axes) <= set("tczyx") or len(set(axes)) != len(axes):
        axes = _AXES_BY_NDIM.get(layer.ndim, "")
    return axes + "c" if layer.rgb else axes


@thread_worker(ignore_errors=True)  # errors arrive on the worker's `errored` signal
def _denoise_in_thread(array, axes: str, *, on_training=None, **kwargs):
    """:func:`iter_denoise_array` as a napari worker; ``worker.quit()`` stops between planes.

    `on_training(done, total, networks)` is called in this thread for the training passes
    (:func:`fm2s.train.training_progress`); :class:`_Cancelled` from it stops the training,
    and the run ends as a Cancel between planes does (the worker's ``aborted`` signal).
    """
    planes = iter_denoise_array(array, axes, **kwargs)
    if on_training is None:
        yield from planes
        return
    while True:
        # The block is open only while the next plane is computed, never while this generator
        # waits at a yield: a run cancelled there is never resumed, and its callback must not
        # stay registered (training_progress is process-wide) for the next run to find.
        with training_progress(on_training):
            try:
                item = next(planes)
            except StopIteration:
                return
            except _Cancelled:
                item = None  # the worker sees the Cancel before it asks for more, and aborts
        yield item


class DenoiseWidget(Container):
    """Dock widget: denoise the chosen image layer with fm2s into a new layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose image layers are offered (napari passes it; a
        :class:`napari.components.ViewerModel` does as well).
    overrides : dict, optional
        Extra :func:`fm2s.settings.make_settings` fields for every run, e.g. ``{"steps": 20}``
        for a quick test; napari passes none.

    Attributes
    ----------
    worker : napari.qt.threading.GeneratorWorker or None
        The run in progress, None while idle.
    """

    # napari passes its viewer to the parameter annotated "napari.viewer.Viewer".
    def __init__(self, napari_viewer: napari.viewer.Viewer, *,
                 overrides: dict[str, Any] | None = None):
        self._viewer = napari_viewer
        self._overrides = dict(overrides or {})
        self.worker = None
        self._layer = ComboBox(label="image", choices=self._image_layers,
                               tooltip="the image layer to denoise")
        self._axes = LineEdit(label="axes", tooltip=(
            "the layer's axes as NGFF letters (subset of tczyx, with y and x), e.g. yx, zyx, "
            "tczyx; yxc for RGB"))
        self._preset = ComboBox(label="preset", choices=list(PRESETS), value="auto", tooltip=(
            "noise model: auto estimates it from each plane; the others are the reference "
            "code's presets per microscope"))
        self._recipe = ComboBox(label="recipe", choices=_RECIPE_CHOICES, value="fast", tooltip=(
            "speed against quality: the network and training schedule. fast (ours, the "
            "quickest): small crops, shared networks; v2 / v1 as published: whole planes, a "
            "network per plane, many times slower"))
        self._seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1, tooltip=(
            "same pixels, settings and seed give the same result"))
        self._training = RadioButtons(label="training", choices=["shared", "per-plane"],
                                      value="shared", orientation="horizontal", tooltip=(
            "shared: consecutive planes of a channel whose noise agrees train one network "
            "(recipe fast); per-plane: a network for every plane"))
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto",
                                tooltip="auto: CUDA when available, else CPU")
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._training_bar = ProgressBar(label="training", value=0, min=0, max=1, tooltip=(
            "optimiser steps of the training pass in progress"))
        self._progress = ProgressBar(label="planes", value=0, min=0, max=1)
        self._status = Label(value="")
        super().__init__(widgets=[
            self._layer, self._axes, self._preset, self._recipe, self._seed, self._training,
            self._device, self._run, self._cancel, self._training_bar, self._progress,
            self._status,
        ])
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._layer.changed.connect(self._on_layer)
        for event in ("inserted", "removed", "moved"):
            getattr(napari_viewer.layers.events, event).connect(self._layer.reset_choices)
        active = napari_viewer.layers.selection.active
        if isinstance(active, Image):
            self._layer.value = active
        self._on_layer(self._layer.value)

    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _on_layer(self, layer: Image | None) -> None:
        self._axes.value = guess_axes(layer) if layer is not None else ""

    def settings(self):
        """The :class:`fm2s.settings.Settings` of the current choices.

        Raises
        ------
        ValueError
            Invalid overrides (:func:`fm2s.settings.make_settings`).
        """
        overrides = dict(self._overrides)
        if self._training.value == "per-plane":
            overrides["group_size"] = 1  # as `fm2s denoise --per-plane`
        return make_settings(self._preset.value, self._recipe.value, **overrides)

    def result_name(self, layer: Image) -> str:
        """Name of the result layer, e.g. ``cells [fm2s auto/fast seed 0 shared]``."""
        return (f"{layer.name} [fm2s {self._preset.value}/{self._recipe.value} "
                f"seed {self._seed.value} {self._training.value}]")

    def run(self) -> None:
        """Start denoising the chosen layer in a worker thread (see :attr:`worker`)."""
        layer = self._layer.value
        if self.worker is not None:
            return
        if layer is None:
            self._fail("no image layer to denoise")
            return
        try:
            settings = self.settings()
        except ValueError as error:
            self._fail(str(error))
            return
        # napari's scale and translate are those of level 0: the result lines up with it
        data = layer.data[0] if layer.multiscale else layer.data
        out = np.empty(data.shape, dtype=data.dtype)
        name = self.result_name(layer)
        worker = _denoise_in_thread(data, self._axes.value.strip(), settings=settings,
                                    seed=self._seed.value, device=self._device.value,
                                    name=layer.name,
                                    # called only once the worker runs, so `worker` is bound
                                    on_training=lambda *step: self._training_step(worker, *step))
        worker.yielded.connect(lambda item: self._on_plane(out, item))
        worker.returned.connect(lambda _: self._on_done(worker, layer, out, name))
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._on_finished(worker))
        self.worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        self._progress.value = self._training_bar.value = 0
        self._status.value = f"denoising {layer.name}: training..."
        worker.start()

    def cancel(self) -> None:
        """Stop the run after the plane in progress; no layer is added."""
        if self.worker is not None:
            self.worker.quit()
            self._status.value = "cancelling after the plane in progress..."

    def _training_step(self, worker, done: int, total: int, networks: int) -> None:
        """Called in the worker thread at each training step: stop on Cancel, else pass every
        ``total / _TRAINING_UPDATES``-th step on to the GUI thread."""
        if worker.abort_requested:
            raise _Cancelled
        every = max(1, total // _TRAINING_UPDATES)
        if done == 0 or done == total or done % every == 0:
            self._show_training(done, total, networks)

    @ensure_main_thread
    def _show_training(self, done: int, total: int, networks: int) -> None:
        self._training_bar.max, self._training_bar.value = max(total, 1), done
        what = f"{networks} network{'s' if networks > 1 else ''}"
        self._status.value = f"training {what}: step {done} / {total}"

    def _on_plane(self, out: np.ndarray, item) -> None:
        if item is None:  # cancelled during training
            return
        index, image, done, total = item
        out[index] = image
        self._progress.max, self._progress.value = total, done
        self._status.value = f"{done} / {total} planes"

    def _on_done(self, worker, layer: Image, out: np.ndarray, name: str) -> None:
        if worker.abort_requested:  # Cancel came after the last plane: still no layer
            return
        self._viewer.add_image(
            out, name=name, scale=layer.scale, translate=layer.translate, rgb=layer.rgb,
            axis_labels=layer.axis_labels,
            # Same dtype and intensity scale as the input: its limits compare the two layers
            # at a glance, where limits from the smoother result would stretch it.
            contrast_limits=layer.contrast_limits,
            colormap=None if layer.rgb else layer.colormap,
        )
        self._status.value = f"added {name}"

    def _on_error(self, error: Exception) -> None:
        if isinstance(error, _Cancelled):  # Cancel during training; _on_finished says so
            return
        # napari's worker has already shown the error as a notification.
        self._status.value = f"error: {error}"

    def _on_finished(self, worker) -> None:
        # After `returned` or `errored`; a cancelled worker emits neither.
        if worker.abort_requested:
            self._status.value = "cancelled: no layer added"
        self.worker = None
        self._run.enabled, self._cancel.enabled = True, False

    def _fail(self, message: str) -> None:
        self._status.value = f"error: {message}"
        show_error(message)
