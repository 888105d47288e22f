"""The empirical Wiener filter's matrix products (issue 41) against its definition: a direct
float64 computation with scipy's 2-D DCT, one patch at a time."""

import numpy as np
import pytest
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

import fm2s.classical as classical
from fm2s.classical import (
    WIENER_KAISER_BETA,
    WIENER_PATCH,
    dct_noise_variance,
    generalized_anscombe,
    inverse_generalized_anscombe,
    vst_wiener,
)
from fm2s.synthetic import clean_plane


def reference_wiener(plane, pilot, gain, read_var, line_corr=0.0):
    """vst_wiener as its docstring defines it, in float64: every patch's orthonormal 2-D DCT
    shrunk by p^2 / (p^2 + s^2), weighed by 1 / sum(shrink^2 s^2), put back through the
    inverse DCT with a separable Kaiser window."""
    size = WIENER_PATCH
    pad = size - 1
    values = np.pad(generalized_anscombe(plane, gain, read_var), pad, mode="reflect")
    guide = np.pad(generalized_anscombe(pilot, gain, read_var), pad, mode="reflect")
    coefficients = scipy.fft.dctn(sliding_window_view(values, (size, size)), axes=(2, 3),
                                  norm="ortho")
    spectrum = scipy.fft.dctn(sliding_window_view(guide, (size, size)), axes=(2, 3),
                              norm="ortho") ** 2
    noise = dct_noise_variance(line_corr, size)
    shrink = spectrum / (spectrum + noise)
    weight = 1.0 / np.maximum((shrink**2 * noise).sum(axis=(2, 3)), 1e-8)
    window = np.outer(*(2 * [np.kaiser(size, WIENER_KAISER_BETA)]))
    patches = scipy.fft.idctn(shrink * coefficients, axes=(2, 3), norm="ortho") * window
    total, weights = np.zeros_like(values), np.zeros_like(values)
    corners_y, corners_x = weight.shape
    for i in range(size):
        for j in range(size):
            total[i:i + corners_y, j:j + corners_x] += weight * patches[:, :, i, j]
            weights[i:i + corners_y, j:j + corners_x] += weight * window[i, j]
    inner = (slice(pad, pad + plane.shape[0]), slice(pad, pad + plane.shape[1]))
    return inverse_generalized_anscombe(total[inner] / weights[inner], gain, read_var)


def planes(shape, seed=0):
    rng = np.random.default_rng(seed)
    truth = 40.0 * clean_plane(shape, seed=seed) + 2.0
    noisy = rng.poisson(truth).astype(np.float64) + rng.normal(0.0, 1.0, shape)
    pilot = truth + rng.normal(0.0, 0.5, shape)
    return noisy, pilot


@pytest.mark.parametrize("shape", [(8, 8), (9, 13), (31, 20), (40, 57), (70, 64)])
@pytest.mark.parametrize("line_corr", [0.0, 0.3])
def test_the_wiener_filter_is_its_definition(shape, line_corr):
    noisy, pilot = planes(shape)
    expected = reference_wiener(noisy, pilot, 1.0, 1.0, line_corr)
    got = vst_wiener(noisy, pilot, 1.0, 1.0, line_corr)
    assert got.shape == shape and got.dtype == np.float64
    # float32 products against float64: rounding only
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize(("band", "slack"), [(1, 0), (3, 1), (5, 48), (10_000, 48)])
def test_the_wiener_filter_in_any_bands_is_its_definition(monkeypatch, band, slack):
    """Bands of rows of patches, buffers that slide after every band or never, the whole plane
    at once (as on a GPU): the same sums."""
    noisy, pilot = planes((45, 38), seed=3)
    expected = reference_wiener(noisy, pilot, 1.0, 1.0, 0.2)
    monkeypatch.setattr(classical, "WIENER_CPU_BAND", band)
    monkeypatch.setattr(classical, "WIENER_SLACK_ROWS", slack)
    got = vst_wiener(noisy, pilot, 1.0, 1.0, 0.2)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * np.abs(expected).max())


def test_the_wiener_filter_is_bitwise_deterministic():
    noisy, pilot = planes((96, 83), seed=4)
    first = vst_wiener(noisy, pilot, 1.0, 1.0)
    np.testing.assert_array_equal(vst_wiener(noisy, pilot, 1.0, 1.0), first)


def test_white_noise_takes_no_products_by_one():
    """The white-noise path leaves out the products by s^2 = 1, which change no float."""
    noise = dct_noise_variance(0.0, WIENER_PATCH)
    assert np.all(noise.astype(np.float32) == 1.0)
