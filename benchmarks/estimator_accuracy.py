"""Accuracy of ``fm2s.estimate_noise`` on the FMD ``test_mix`` images, against noisy - truth.

Run by hand (about 30 s):

    python benchmarks/estimator_accuracy.py

For every image of ``test_mix/{raw,avg2,avg4,avg8,avg16}`` it compares the estimated noise std
at the plane's mean (``std_dn``) and neighbour correlation with those of the residual
``noisy - gt`` over the whole image. That residual also holds the ground truth's own noise and
drift between captures, so at avg8-16 it is not pure noise. Prints a Markdown table per level
and microscope type, and the RMS of log(estimated / true) and the worst ratio over all images.

The last column, "seen by high-pass", is the share of the residual's variance that the
estimator's fine-scale high-pass can see if the noise follows the fitted correlation model: the
residual's high-pass energy per unit variance over the model's chain gain. Below 1, part of the
residual's power lies at frequencies the estimator does not measure (on wide-field planes about
a fifth: a broad noise component no single-plane estimator can tell from the image).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage, signal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto_levels import LEVELS  # noqa: E402
from quality import DATA  # noqa: E402

import fm2s  # noqa: E402
from fm2s.estimate import noise_kernel  # noqa: E402
from fm2s.planeio import read_image  # noqa: E402


def residual_stats(residual: np.ndarray) -> tuple[float, float, float]:
    """(std, mean of the lag-1 correlations along rows and along columns, their difference)
    of a zero-mean residual."""
    var = residual.var()
    along_rows = (residual[:, 1:] * residual[:, :-1]).mean() / var
    along_columns = (residual[1:] * residual[:-1]).mean() / var
    return (float(np.sqrt(var)), float((along_rows + along_columns) / 2),
            float(along_rows - along_columns))


#: The estimator's fine-scale high-pass (second differences in x times second differences in
#: y), computed here on its own so that the benchmark checks the estimator's model, not its code.
HIGHPASS = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def highpass_share(residual: np.ndarray, est) -> float:
    """High-pass energy per unit variance of a zero-mean residual, over the model's."""
    energy = (ndimage.correlate(residual, HIGHPASS, mode="reflect")[1:-1, 1:-1] ** 2).mean()
    model = (signal.convolve2d(noise_kernel(est.corr, est.line_corr), HIGHPASS) ** 2).sum()
    return float(energy / residual.var() / model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    rows = defaultdict(list)  # (level, group) -> [(true std, nc, row excess, est ..., seen)]
    for path in sorted((args.data / "gt").glob("*.png")):
        truth = read_image(path).astype(np.float64)
        group = path.name.split("_")[0]
        for level in LEVELS:
            noisy = read_image(args.data / level / path.name)
            est = fm2s.estimate_noise(noisy)
            residual = noisy.astype(np.float64) - truth
            residual -= residual.mean()
            rows[(level, group)].append((*residual_stats(residual), est.std_dn,
                                         est.neighbour_corr, est.line_corr,
                                         highpass_share(residual, est)))
    print("| level | microscope | true std (DN) | estimated std (DN) | est/true (min-max) "
          "| true neighbour corr | estimated | true row - column corr | line_corr "
          "| seen by high-pass |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    logs = []
    for level, group in sorted(rows, key=lambda k: (LEVELS.index(k[0]), k[1])):
        true_std, true_nc, true_rows, est_std, est_nc, est_line, seen = (
            np.array(rows[(level, group)]).T)
        ratio = est_std / true_std
        logs += list(np.log(ratio))
        print(f"| {level} | {group} | {true_std.mean():.2f} | {est_std.mean():.2f} "
              f"| {ratio.mean():.2f} ({ratio.min():.2f}-{ratio.max():.2f}) "
              f"| {true_nc.mean():.2f} | {est_nc.mean():.2f} | {true_rows.mean():.3f} "
              f"| {est_line.mean():.3f} | {seen.mean():.2f} |")
    logs = np.array(logs)
    print(f"\n{logs.size} images: RMS of log(est/true) {np.sqrt((logs**2).mean()):.3f}, "
          f"ratios {np.exp(logs.min()):.2f}-{np.exp(logs.max()):.2f}")


if __name__ == "__main__":
    main()
