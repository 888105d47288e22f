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
  (:func:`fm2s.synthetic.synthetic_stack`, axes ``tczyx``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imageio.v3 as iio
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from fm2s.napari_widget import DenoiseWidget
from fm2s.report import plot_before_after
from fm2s.synthetic import synthetic_stack

ROOT = Path(__file__).resolve().parents[1]
FMD_PLANE = ROOT.parent / "shared/data/fmd/test_mix/raw/Confocal_BPAE_B_1.png"


def denoise_in_viewer(viewer: napari.Viewer, widget: DenoiseWidget) -> None:
    """Press Run and let Qt run until the result layer is there (or the run failed)."""
    start = time.perf_counter()
    widget.run()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.02)
    print(f"  {widget._status.value} ({time.perf_counter() - start:.0f} s)")


def screenshot(viewer: napari.Viewer, widget: DenoiseWidget, path: Path) -> None:
    """The whole window, or the widget alone where the canvas cannot draw (no OpenGL)."""
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
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)

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

    print("denoising a small demo stack")
    viewer = napari.Viewer(show=False)
    viewer.window.resize(1400, 600)
    stack = synthetic_stack(t=2, c=2, z=3, size=96)
    viewer.add_image(stack, name="demo", axis_labels=("t", "c", "z", "y", "x"),
                     contrast_limits=(0, int(np.percentile(stack, 99.9))))
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FM2S denoise", area="right")
    denoise_in_viewer(viewer, widget)
    viewer.dims.current_step = (1, 1, 1, 0, 0)  # t=1, the filaments channel, z=1
    show_in_grid(viewer)
    screenshot(viewer, widget, args.output / "napari-stack.png")
    viewer.close()


if __name__ == "__main__":
    main()
