"""The pictures of docs/napari.md: the fm2s widget docked in napari, and a before/after.

    xvfb-run -a env QT_QPA_PLATFORM=offscreen python tools/napari_screenshots.py

napari's canvas needs OpenGL: Qt's offscreen platform has it only with an X display to borrow
(Xvfb, Debian's ``xvfb``), which ``xvfb-run`` provides. Without one the viewer cannot draw its
layers, and the script grabs the widget alone.

Writes, in docs/images (or ``--output``):

* ``napari-widget.png``: the viewer with the widget docked after denoising the FMD plane
  ``Confocal_BPAE_B_1`` with the default schedule (noisy and denoised layers side by side, in
  napari's grid mode);
* ``napari-before-after.png``: that plane, raw and denoised, with a zoom
  (:func:`fm2s.report.plot_before_after`);
* ``napari-stack.png``: the widget on a small version of the workflow's demo stack
  (:func:`fm2s.synthetic.synthetic_stack`, axes ``tczyx``);
* ``napari-ome-zarr-training.png`` and ``napari-ome-zarr.png``: where the napari-ome-zarr
  plugin is installed (``pip install napari-ome-zarr``), that stack written as an OME-Zarr store
  (3 pyramid levels), opened with the plugin (a multiscale layer per channel): the viewer while
  the widget trains (its training bar), and the result layer's plane beside the raw one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from fm2s.napari_widget import DenoiseWidget
from fm2s.ome import write_ome_zarr
from fm2s.report import plot_before_after
from fm2s.synthetic import synthetic_stack

ROOT = Path(__file__).resolve().parents[1]
FMD_PLANE = ROOT.parent / "shared/data/fmd/test_mix/raw/Confocal_BPAE_B_1.png"


def denoise_in_viewer(viewer: napari.Viewer, widget: DenoiseWidget,
                      while_training: Path | None = None) -> None:
    """Press Run and let Qt run until the result layer is there (or the run failed); with
    `while_training`, take a screenshot there once the training bar is half full."""
    start = time.perf_counter()
    widget.run()
    while widget.worker is not None:
        QApplication.processEvents()
        bar = widget._training_bar
        if while_training is not None and bar.max > 1 and bar.value >= bar.max // 2:
            screenshot(viewer, widget, while_training)
            while_training = None
        time.sleep(0.02)
    print(f"  {widget._status.value} ({time.perf_counter() - start:.0f} s)")


def screenshot(viewer: napari.Viewer, widget: DenoiseWidget, path: Path) -> None:
    """The whole window, or the widget alone where the canvas cannot draw (no OpenGL)."""
    for _ in range(50):  # let the canvas draw (multiscale layers load their tiles first)
        QApplication.processEvents()
        time.sleep(0.02)
    try:
        viewer.screenshot(path, canvas_only=False)
    except Exception as error:  # vispy raises various errors without a GL context
        print(f"  no viewer screenshot ({type(error).__name__}: {error}); the widget alone")
        widget.native.grab().save(str(path))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def show_in_grid(viewer: napari.Viewer) -> None:
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, len(viewer.layers))
    viewer.reset_view()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs/images")
    parser.add_argument("--plane", type=Path, default=FMD_PLANE)
    parser.add_argument("--parts", default="plane,stack,ome-zarr",
                        help="which pictures to make (default: all)")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    stack = synthetic_stack(t=2, c=2, z=3, size=96)
    if "plane" in parts:
        picture_plane(args)
    if "stack" in parts:
        picture_stack(args, stack)
    if "ome-zarr" in parts:
        picture_ome_zarr(args, stack)


def picture_plane(args) -> None:
    print(f"denoising {args.plane.name}")
    viewer = napari.Viewer(show=False)
    viewer.window.resize(1400, 600)
    raw = iio.imread(args.plane)
    # The result layer takes the input's contrast limits: the two look alike where they agree.
    viewer.add_image(raw, name=args.plane.stem, contrast_limits=(0, np.percentile(raw, 99.8)))
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FM2S denoise", area="right")
    denoise_in_viewer(viewer, widget)
    denoised = viewer.layers[-1].data
    show_in_grid(viewer)
    screenshot(viewer, widget, args.output / "napari-widget.png")
    path = plot_before_after(raw, denoised, args.output / "napari-before-after.png", zoom=96,
                             title=f"FMD {args.plane.stem} in napari: raw (left) and denoised "
                                   "by the fm2s widget (auto/fast, seed 0)")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    viewer.close()


def picture_stack(args, stack: np.ndarray) -> None:
    print("denoising a small demo stack")
    viewer = napari.Viewer(show=False)
    viewer.window.resize(1400, 600)
    viewer.add_image(stack, name="demo", axis_labels=("t", "c", "z", "y", "x"),
                     contrast_limits=(0, int(np.percentile(stack, 99.9))))
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FM2S denoise", area="right")
    denoise_in_viewer(viewer, widget)
    viewer.dims.current_step = (1, 1, 1, 0, 0)  # t=1, the filaments channel, z=1
    show_in_grid(viewer)
    screenshot(viewer, widget, args.output / "napari-stack.png")
    viewer.close()


def picture_ome_zarr(args, stack: np.ndarray) -> None:
    try:
        import napari_ome_zarr  # noqa: F401
    except ImportError:
        print("napari-ome-zarr is not installed: no OME-Zarr pictures")
        return
    print("denoising the demo stack as an OME-Zarr store opened with napari-ome-zarr")
    with tempfile.TemporaryDirectory() as tmp:
        store = write_ome_zarr(Path(tmp) / "demo.ome.zarr", stack, levels=3)
        viewer = napari.Viewer(show=False)
        viewer.window.resize(1400, 600)
        layers = viewer.open(store, plugin="napari-ome-zarr")
        print(f"  opened {len(layers)} layer(s), multiscale: {[la.multiscale for la in layers]}")
        for other in layers[1:]:  # one channel, raw and denoised side by side
            viewer.layers.remove(other)
        viewer.layers.selection.active = layers[0]
        widget = DenoiseWidget(viewer)
        viewer.window.add_dock_widget(widget, name="FM2S denoise", area="right")
        denoise_in_viewer(viewer, widget, args.output / "napari-ome-zarr-training.png")
        # The canvas stays black after a multiscale layer under Xvfb (grid or not), so the
        # result is shown as a picture of the full-resolution data: raw and denoised planes.
        raw = np.asarray(layers[0].data[0][1, 1])
        denoised = np.asarray(viewer.layers[-1].data[1, 1])
        path = plot_before_after(raw, denoised, args.output / "napari-ome-zarr.png", zoom=48,
                                 title="demo.ome.zarr opened with napari-ome-zarr, channel 0, "
                                       "t=1, z=1: raw (left) and denoised by the fm2s widget")
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
        viewer.close()


if __name__ == "__main__":
    main()
