import numpy as np
import pytest
import torch

from fm2s.noise import (
    correlate_rows,
    median_target,
    neighbour_corr,
    region_means,
    synthesize,
    synthesize_poisson_gaussian,
)


def test_region_means_ignore_padding_in_edge_tiles():
    plane = np.full((10, 7), 0.5, dtype=np.float32)
    means = region_means(plane, 4, (1e-5, 1.0))
    # 10 x 7 in 4 x 4 tiles: the edge tiles are 2 or 3 pixels wide; padding must not darken them.
    np.testing.assert_allclose(means, 0.5, rtol=1e-6)
    assert means.shape == plane.shape


def test_region_means_are_tile_means_and_clamped():
    plane = np.zeros((8, 8), dtype=np.float32)
    plane[:4, :4] = 0.8
    plane[4:, 4:] = np.arange(16, dtype=np.float32).reshape(4, 4) / 100
    means = region_means(plane, 4, (0.01, 0.5))
    assert means[0, 0] == np.float32(0.5)  # 0.8 clamped
    assert means[0, 7] == np.float32(0.01)  # 0.0 clamped
    np.testing.assert_allclose(means[7, 7], np.mean(np.arange(16) / 100), rtol=1e-6)


def test_median_target_is_a_reflected_median():
    plane = np.zeros((9, 9), dtype=np.float32)
    plane[4, 4] = 1.0
    assert median_target(plane, 3).max() == 0.0  # a lone hot pixel disappears


@pytest.mark.parametrize("shape", [(64, 81), (1, 7), (2, 2), (5, 1)])
def test_the_3x3_median_is_scipys_bitwise(shape):
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for plane in (rng.random(shape, dtype=np.float32),
                  rng.integers(0, 3, shape).astype(np.float32),  # ties everywhere
                  (rng.poisson(2.0, shape) / 7).astype(np.float32)):
        expected = ndimage.median_filter(plane, size=3, mode="reflect")
        got = median_target(plane, 3)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_synthesis_statistics_follow_the_formulas():
    """Per tile: mean c and variance c M / k_p + (k_g M / 255)^2 + c / lam_p (no clamping)."""
    c_low, c_high, size = 0.25, 0.6, 64
    target = np.full((size, 2 * size), c_low, dtype=np.float32)
    target[:, size:] = c_high
    means = region_means(target, size, (1e-5, 1.0))
    k_g, k_p, lam_p = 20.0, 50.0, 400.0
    t = torch.from_numpy(target)[None].expand(64, -1, -1).contiguous()  # 64 draws
    m = torch.from_numpy(means)
    gen = torch.Generator().manual_seed(0)
    noisy = synthesize(t, m, k_g=k_g, k_p=k_p, lam_p=lam_p, generator=gen).numpy()
    for c, tile in ((c_low, noisy[..., :size]), (c_high, noisy[..., size:])):
        expected = c * c / k_p + (k_g * c / 255) ** 2 + c / lam_p
        assert abs(tile.mean() - c) < 0.002
        assert abs(tile.var() / expected - 1) < 0.03, (c, tile.var(), expected)


def test_synthesis_is_reproducible_and_in_range():
    target = torch.rand(2, 32, 32)
    means = torch.full((32, 32), 0.1)
    draws = [synthesize(target, means, k_g=200, k_p=30, lam_p=70,
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].min() >= 0 and draws[0].max() <= 1


@pytest.mark.parametrize("gain, read_var", [(0.01, 1e-4), (0.013, -1.7e-4)])
def test_white_poisson_gaussian_draws_are_poisson_counts_with_the_fitted_variance(gain, read_var):
    """White noise: mean c, variance a c + b, and shot noise skewed like Poisson counts."""
    c = np.float32(0.06)
    target = torch.full((256, 256), float(c))
    noisy = synthesize_poisson_gaussian(target, gain=gain, read_var=read_var, corr=0.0,
                                        generator=torch.Generator().manual_seed(0)).numpy()
    rate = (c + min(read_var, 0.0) / gain) / gain  # photons per pixel: 6 and 3.6
    noise = noisy.astype(np.float64) - c
    assert abs(noise.mean()) < 0.002
    assert noise.var() == pytest.approx(gain * c + read_var, rel=0.03)
    skew = (noise**3).mean() / noise.var() ** 1.5
    shot_share = gain * c / (gain * c + max(read_var, 0.0))
    assert skew == pytest.approx(shot_share**1.5 / np.sqrt(rate), rel=0.15)
    if read_var < 0:  # no read noise to smear the counts: every value is on the count lattice
        counts = noise / gain + rate
        assert np.abs(counts - np.rint(counts)).max() < 1e-3


def test_poisson_gaussian_draws_are_noise_free_below_the_offset_and_in_range():
    target = torch.linspace(0, 1, 64 * 64).reshape(64, 64)
    noisy = synthesize_poisson_gaussian(target, gain=0.02, read_var=-2e-4, corr=0.0,
                                        generator=torch.Generator().manual_seed(1))
    dark = target < 0.01  # a c + b <= 0: no noise at all
    assert torch.equal(noisy[dark], target[dark])
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_correlated_poisson_gaussian_draws_have_the_fitted_variance_and_correlation():
    target = torch.full((384, 384), 0.3)
    gain, read_var, corr = 0.01, 1e-4, 0.7
    noisy = synthesize_poisson_gaussian(target, gain=gain, read_var=read_var, corr=corr,
                                        generator=torch.Generator().manual_seed(2)).numpy()
    noise = noisy.astype(np.float64) - 0.3
    assert noise.var() == pytest.approx(gain * 0.3 + read_var, rel=0.05)
    neighbour = (noise[:, 1:] * noise[:, :-1]).mean() / noise.var()
    assert neighbour == pytest.approx(neighbour_corr(corr), abs=0.02)


@pytest.mark.parametrize(("corr", "read_var"), [(0.0, -1e-4), (0.0, 1e-4), (0.7, 1e-4)])
def test_row_correlation_is_added_to_both_kinds_of_draw(corr, read_var):
    """noise_line_corr: the fitted variance kept, neighbours along rows correlated by it more
    than neighbours along columns."""
    target = torch.full((384, 384), 0.3)
    gain, line = 0.01, 0.1
    noisy = synthesize_poisson_gaussian(target, gain=gain, read_var=read_var, corr=corr,
                                        line_corr=line,
                                        generator=torch.Generator().manual_seed(4)).numpy()
    noise = noisy.astype(np.float64) - 0.3
    along_rows = (noise[:, 1:] * noise[:, :-1]).mean() / noise.var()
    along_columns = (noise[1:] * noise[:-1]).mean() / noise.var()
    assert noise.var() == pytest.approx(gain * 0.3 + read_var, rel=0.05)
    if corr == 0:
        assert along_rows == pytest.approx(line, abs=0.01) and abs(along_columns) < 0.01
    else:  # the rows' average of already correlated neighbours: less excess than on white
        assert along_columns == pytest.approx(neighbour_corr(corr), abs=0.02)
        assert 0.02 < along_rows - along_columns < line


def test_correlate_rows_keeps_white_noise_variance():
    white = torch.randn(512, 512, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert correlate_rows(white, 0.0) is white
    rows = correlate_rows(white, 0.2).numpy()
    assert rows.var() == pytest.approx(1.0, rel=0.02)
    assert (rows[:, 1:] * rows[:, :-1]).mean() == pytest.approx(0.2, abs=0.01)
    assert np.array_equal(rows[:, 0], white.numpy()[:, 0])


def test_poisson_gaussian_draws_keep_their_variance_with_a_vanishing_gain():
    """Counts beyond float32 precision (or int64 range) fall back to the normal approximation."""
    target = torch.rand(128, 128)
    for gain in (1e-9, 1e-20, 1e-40):
        noisy = synthesize_poisson_gaussian(target, gain=gain, read_var=1e-4, corr=0.0,
                                            generator=torch.Generator().manual_seed(3))
        inside = (target > 0.1) & (target < 0.9)  # away from the clamp at 0 and 1
        assert torch.isfinite(noisy).all()
        assert (noisy - target)[inside].var().item() == pytest.approx(1e-4, rel=0.05)
