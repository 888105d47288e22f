"""The classical candidates of the ``sure-nlm`` blend, the blend's several-candidate SURE and
the empirical Wiener filter of the ``sure-nlm-wiener`` blend."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

import fm2s
from fm2s.blend import SURE_EPS, sure_weight, sure_weight_maps, sure_weights
from fm2s.classical import (
    WIENER_PATCH,
    dct_noise_variance,
    generalized_anscombe,
    inverse_generalized_anscombe,
    nlm_window,
    vst_nlm,
    vst_wiener,
)
from fm2s.noise import correlated_normal, lowfreq_gain
from fm2s.synthetic import clean_plane


def poisson_gaussian(clean, gain, read_var, seed):
    rng = np.random.default_rng(seed)
    return gain * rng.poisson(clean / gain) + rng.normal(0.0, np.sqrt(read_var), clean.shape)


@pytest.mark.parametrize("intensity", [3.0, 20.0, 200.0])
def test_anscombe_stabilises_the_variance_and_inverts_without_bias(intensity):
    gain, read_var = 2.0, 9.0
    z = poisson_gaussian(np.full(200_000, intensity), gain, read_var, seed=1)
    stabilised = generalized_anscombe(z, gain, read_var)
    assert stabilised.std() == pytest.approx(1.0, abs=0.08)
    # The unbiased inverse maps the transform's mean back to the intensity.
    back = inverse_generalized_anscombe(np.array([stabilised.mean()]), gain, read_var)[0]
    assert back == pytest.approx(intensity, rel=0.03, abs=0.3)


def psnr(truth, estimate):
    return 10 * np.log10(truth.max() ** 2 / np.mean((truth - estimate) ** 2))


@pytest.mark.parametrize(("gain", "read_var"), [(1.0, 4.0), (0.0, 25.0)])
def test_vst_nlm_denoises_poisson_gaussian_and_gaussian_planes(gain, read_var):
    truth = 100.0 * clean_plane((64, 64), seed=2)
    noisy = (poisson_gaussian(truth, gain, read_var, seed=3) if gain
             else truth + np.random.default_rng(3).normal(0, np.sqrt(read_var), truth.shape))
    before = noisy.copy()
    out = vst_nlm(noisy, gain, read_var)
    np.testing.assert_array_equal(noisy, before)
    assert out.shape == noisy.shape and out.dtype == np.float64
    assert psnr(truth, out) > psnr(truth, noisy) + 3.0


def test_the_nlm_patch_holds_as_many_independent_noise_samples_as_5x5_on_white_noise():
    assert nlm_window(1.0) == (5, 6)  # scikit-image's example
    assert nlm_window(lowfreq_gain(0.65)) == (11, 12)  # G = 5.0: 121 / 5 ~ 25 samples
    assert nlm_window(1e6) == (15, 16)


def test_larger_patches_denoise_correlated_noise_better():
    import torch

    truth = 100.0 * clean_plane((128, 128), seed=6)
    corr = 0.65
    noise = correlated_normal(truth.shape, corr, generator=torch.Generator().manual_seed(7))
    noisy = truth + 4.0 * noise.numpy().astype(np.float64)
    white = vst_nlm(noisy, 0.0, 16.0)
    matched = vst_nlm(noisy, 0.0, 16.0, lowfreq_gain(corr))
    assert psnr(truth, matched) > psnr(truth, white) + 0.5


def test_a_clean_guide_finds_the_alike_patches_better_than_the_noisy_plane():
    truth = 100.0 * clean_plane((64, 64), seed=2)
    noisy = poisson_gaussian(truth, 1.0, 4.0, seed=3)
    plain = vst_nlm(noisy, 1.0, 4.0)
    guided = vst_nlm(noisy, 1.0, 4.0, guide=truth)
    assert psnr(truth, guided) > psnr(truth, plain) + 1.0
    # The guide only weighs: a constant guide makes every offset alike, a box mean.
    flat = vst_nlm(noisy, 1.0, 4.0, guide=np.full_like(noisy, 50.0))
    assert psnr(truth, flat) < psnr(truth, guided)


def brute_force_guided_nlm(values, guide, patch_size, distance, h):
    """Guided non-local means by its definition: over the plane's own pixels only."""
    height, width = values.shape
    half = patch_size // 2
    out = np.empty_like(values)
    for y, x in np.ndindex(values.shape):
        total = weights = 0.0
        for dy, dx in np.ndindex(2 * distance + 1, 2 * distance + 1):
            dy, dx = dy - distance, dx - distance
            if not (0 <= y + dy < height and 0 <= x + dx < width):
                continue
            squares = [(guide[py, px] - guide[py + dy, px + dx]) ** 2
                       for py in range(y - half, y + half + 1)
                       for px in range(x - half, x + half + 1)
                       if 0 <= py < height and 0 <= px < width
                       and 0 <= py + dy < height and 0 <= px + dx < width]
            weight = np.exp(-np.mean(squares) / h**2)
            total += weight * values[y + dy, x + dx]
            weights += weight
        out[y, x] = total / weights
    return out


#: Non-local means and the Wiener filter on a CPU: the fused kernels (fm2s.cpu_kernels) and
#: torch's operations, which are what a GPU runs.
FUSED_PATHS = pytest.mark.parametrize("fused", ["1", "0"], ids=["fused", "torch"])


@FUSED_PATHS
@pytest.mark.parametrize(("shape", "patch_size", "distance"), [((11, 14), 3, 2), ((4, 13), 5, 6)])
def test_guided_nlm_follows_its_definition_up_to_the_borders(monkeypatch, fused, shape,
                                                              patch_size, distance):
    from fm2s.classical import NLM_H, _guided_nl_means

    monkeypatch.setenv("FM2S_FUSED_KERNELS", fused)

    rng = np.random.default_rng(5)
    guide = rng.normal(0.0, 1.0, shape).cumsum(axis=1)
    values = guide + rng.normal(0.0, 1.0, shape)
    # The search distance is clamped to the plane (4 rows: 3 at most).
    reach = min(distance, shape[0] - 1, shape[1] - 1)
    expected = brute_force_guided_nlm(values, guide, patch_size, reach, NLM_H)
    got = _guided_nl_means(values, guide, patch_size, distance, torch.device("cpu"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@FUSED_PATHS
@pytest.mark.parametrize(("shape", "patch_size", "distance"),
                         [((40, 57), 5, 6), ((33, 30), 11, 12), ((3, 20), 5, 6), ((2, 3), 5, 6)])
def test_classical_nlm_is_scikit_images_fast_mode(monkeypatch, fused, shape, patch_size,
                                                  distance):
    from skimage.restoration import denoise_nl_means

    from fm2s.classical import NLM_H, _nl_means

    monkeypatch.setenv("FM2S_FUSED_KERNELS", fused)

    rng = np.random.default_rng(7)
    values = 3.0 * clean_plane(shape, seed=8) + rng.normal(0.0, 1.0, shape)
    expected = denoise_nl_means(values, patch_size=patch_size, patch_distance=distance, h=NLM_H,
                                sigma=1.0, fast_mode=True)
    got = _nl_means(values, patch_size, distance, torch.device("cpu"))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert np.abs(got - values).mean() > 0.1  # it smooths


@FUSED_PATHS
@pytest.mark.parametrize("patch_size", [5, 11])
def test_nlm_in_bands_of_rows_equals_nlm_at_once(monkeypatch, fused, patch_size):
    import fm2s.classical as classical

    monkeypatch.setenv("FM2S_FUSED_KERNELS", fused)
    rng = np.random.default_rng(9)
    values = 3.0 * clean_plane((150, 70), seed=10) + rng.normal(0.0, 1.0, (150, 70))
    guide = values + rng.normal(0.0, 0.5, values.shape)
    distance = patch_size + 1
    cpu = torch.device("cpu")
    whole = (classical._nl_means(values, patch_size, distance, cpu),
             classical._guided_nl_means(values, guide, patch_size, distance, cpu))
    monkeypatch.setattr(classical, "NLM_BAND_PIXELS", 1)  # bands of 64 rows: three of them
    banded = (classical._nl_means(values, patch_size, distance, cpu),
              classical._guided_nl_means(values, guide, patch_size, distance, cpu))
    for got, expected in zip(banded, whole, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("patch_size", [5, 11])
def test_fused_nlm_equals_torchs_passes_to_float32_rounding(monkeypatch, patch_size):
    import fm2s.classical as classical

    rng = np.random.default_rng(11)
    shape = (173, 190)
    values = 20.0 * clean_plane(shape, seed=12) + rng.normal(0.0, 1.0, shape)
    guide = 20.0 * clean_plane(shape, seed=12)
    distance, cpu = patch_size + 1, torch.device("cpu")
    results = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("FM2S_FUSED_KERNELS", fused)
        results[fused] = (classical._nl_means(values, patch_size, distance, cpu),
                          classical._guided_nl_means(values, guide, patch_size, distance, cpu))
    for got, expected in zip(results["1"], results["0"], strict=True):
        # float32 sums in another order: a few ulp of values up to about 20
        np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
        assert np.abs(got - values).mean() > 0.3  # both smooth


def test_fused_nlm_does_not_depend_on_the_number_of_threads(monkeypatch):
    import fm2s.classical as classical

    rng = np.random.default_rng(13)
    values = 3.0 * clean_plane((300, 90), seed=14) + rng.normal(0.0, 1.0, (300, 90))
    guide = values + rng.normal(0.0, 0.5, values.shape)
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):  # one band; three bands computed in parallel threads
            torch.set_num_threads(count)
            results.append((classical._nl_means(values, 5, 6, cpu),
                            classical._guided_nl_means(values, guide, 5, 6, cpu)))
    finally:
        torch.set_num_threads(threads)
    for got, expected in zip(*results, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_the_fused_wiener_filter_does_not_depend_on_the_number_of_threads():
    rng = np.random.default_rng(25)
    truth = 40.0 * clean_plane((300, 70), seed=26) + 5.0
    noisy = rng.poisson(truth).astype(np.float64)
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 3):  # one band; three bands computed in parallel threads
            torch.set_num_threads(count)
            results.append(vst_wiener(noisy, truth, 1.0, 0.0))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(results[0], results[1])


def test_fused_nlm_runs_where_numba_cannot_cache_it():
    # A read-only install with no writable cache folder: numba finds no place for its cache
    # (no "locator"), and the kernels compile in the process instead.
    code = (
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []\n"
        "import numpy as np, torch\n"
        "from fm2s import classical, cpu_kernels\n"
        "values = np.arange(400.0).reshape(20, 20) % 7\n"
        "out = classical._nl_means(values, 5, 6, torch.device('cpu'))\n"
        "print(type(cpu_kernels.nl_means_band._cache).__name__, float(np.abs(out).sum()))\n")
    import fm2s.classical as classical

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    kind, total = done.stdout.split()
    values = np.arange(400.0).reshape(20, 20) % 7
    expected = classical._nl_means(values, 5, 6, torch.device("cpu"))
    assert kind == "NullCache" and float(total) == float(np.abs(expected).sum())


def test_the_fast_exponential_is_schraudolphs():
    from fm2s.classical import _fast_exp

    distance = torch.linspace(0.0, 20.0, 2001)
    got = _fast_exp(distance).double()
    exact = torch.exp(-distance.double())
    assert torch.all((got / exact - 1).abs() < 0.06)
    assert torch.all(got[1:] <= got[:-1])
    # fast_exp.h at 0: the high word 1072632447 over a zero low word.
    assert float(got[0]) == pytest.approx(2.0 ** -1 * (1 + 987775 / 2**20), abs=1e-7)


@pytest.mark.parametrize(("plane", "gain", "read_var", "message"), [
    (np.zeros((4, 4, 2)), 1.0, 1.0, "2D plane"),
    (np.zeros((8, 8)), 0.0, 0.0, "no noise model"),
    (np.zeros((8, 8)), -1.0, 1.0, "no noise model"),
])
def test_vst_nlm_rejects_what_it_cannot_denoise(plane, gain, read_var, message):
    with pytest.raises(ValueError, match=message):
        vst_nlm(plane, gain, read_var)


def test_vst_nlm_rejects_a_guide_of_another_shape():
    with pytest.raises(ValueError, match="guide of shape"):
        vst_nlm(np.ones((8, 8)), 1.0, 1.0, guide=np.ones((8, 9)))


def smoothing_candidates(sigma=10.0, seed=5, truth=None, filters=None):
    """A plane (`truth`, default a synthetic cell plane) with white Gaussian noise and two
    linear smoothers of it (`filters`), at the plane and at a probe step: the setting where
    SURE is exact up to the probe's Monte-Carlo error."""
    truth = 255.0 * clean_plane((96, 96), seed=4) if truth is None else truth
    rng = np.random.default_rng(seed)
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    probe = rng.normal(0.0, sigma, truth.shape)
    filters = filters or [lambda p: ndimage.gaussian_filter(p, 1.0),
                          lambda p: ndimage.uniform_filter(p, 5)]
    candidates = [f(noisy) for f in filters]
    moved = [f(noisy + SURE_EPS * probe) for f in filters]
    variance = np.full(truth.shape, sigma**2)
    return truth, noisy, candidates, moved, probe, variance


def test_one_candidate_weight_is_the_single_blend_weight():
    _, noisy, candidates, moved, probe, variance = smoothing_candidates()
    for candidate, shifted in zip(candidates, moved, strict=True):
        weights = sure_weights(noisy, [candidate], probe, [shifted], variance, 0.0)
        expected = sure_weight(noisy, candidate, probe, shifted, variance, 0.0)
        assert weights[0] == pytest.approx(expected, rel=1e-9)


def test_two_candidate_weights_reach_the_oracle_risk():
    truth, noisy, candidates, moved, probe, variance = smoothing_candidates()
    weights = sure_weights(noisy, candidates, probe, moved, variance, 0.0)
    assert (weights >= 0).all() and weights.sum() <= 1 + 1e-9

    def mse(w):
        blend = noisy + sum(wk * (c - noisy) for wk, c in zip(w, candidates, strict=True))
        return float(np.mean((blend - truth) ** 2))

    grid = [(a, b) for a in np.linspace(0, 1, 41) for b in np.linspace(0, 1, 41) if a + b <= 1]
    oracle = min(mse(w) for w in grid)
    assert mse(weights) <= 1.03 * oracle
    assert mse(weights) < min(mse((1, 0)), mse((0, 1)), mse((0, 0)))


def test_without_the_input_the_weights_are_the_least_risk_point_where_they_sum_to_one():
    # Weak noise: the blend of the whole simplex keeps some of the input.
    truth, noisy, candidates, moved, probe, variance = smoothing_candidates(sigma=3.0)
    assert sure_weights(noisy, candidates, probe, moved, variance, 0.0).sum() < 0.99
    weights = sure_weights(noisy, candidates, probe, moved, variance, 0.0, keep_input=False)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)

    def mse(w):
        blend = noisy + sum(wk * (c - noisy) for wk, c in zip(w, candidates, strict=True))
        return float(np.mean((blend - truth) ** 2))

    oracle = min(mse((a, 1 - a)) for a in np.linspace(0, 1, 101))
    assert mse(weights) <= 1.03 * oracle


def test_weights_are_zero_without_noise():
    _, noisy, candidates, moved, probe, variance = smoothing_candidates()
    assert not sure_weights(noisy, candidates, probe, moved, 0 * variance, 0.0).any()


def test_one_tile_gives_the_plane_weights_everywhere():
    _, noisy, candidates, moved, probe, variance = smoothing_candidates()
    maps = sure_weight_maps(noisy, candidates, probe, moved, variance, 0.0, tile=1000)
    plane = sure_weights(noisy, candidates, probe, moved, variance, 0.0)
    assert maps.shape == (2, *noisy.shape)
    np.testing.assert_allclose(maps, plane[:, None, None] * np.ones_like(maps), atol=1e-12)


def test_tile_weights_suit_each_region_of_a_mixed_plane():
    """Left half flat, right half fine texture: a strong smoother suits the one, a light one
    the other; per tile the blend takes each where it belongs, and beats one plane weight."""
    y, x = np.mgrid[0:96, 0:192]
    mixed = 100.0 + np.where(x >= 96, 60.0 * np.sin(1.3 * x) * np.cos(1.1 * y), 0.0)
    filters = [lambda p: ndimage.uniform_filter(p, 9), lambda p: ndimage.gaussian_filter(p, 0.6)]
    truth, noisy, candidates, moved, probe, variance = smoothing_candidates(
        seed=3, truth=mixed, filters=filters)
    maps = sure_weight_maps(noisy, candidates, probe, moved, variance, 0.0, tile=32)
    assert maps.min() >= 0 and maps.sum(0).max() <= 1 + 1e-9
    assert maps[0, :, :64].mean() > 0.9 and maps[0, :, 128:].mean() < 0.1
    plane = sure_weights(noisy, candidates, probe, moved, variance, 0.0)

    def mse(weights):
        blend = noisy + sum(w * (c - noisy) for w, c in zip(weights, candidates, strict=True))
        return float(np.mean((blend - truth) ** 2))

    assert mse(maps) < 0.8 * mse(plane)


def test_tile_weights_are_each_tiles_own_least_risk_point():
    """All tiles are solved at once; each gets the weights it would get alone, degenerate
    ones included (no noise, candidates equal to the input, two equal candidates)."""
    from fm2s.blend import least_risk_weights

    rng = np.random.default_rng(2)
    k, count = 3, 40
    factors = rng.normal(size=(count, k, 6))
    factors[5] = 0.0  # every candidate equals the input
    factors[7, 2] = factors[7, 1]  # two equal candidates: singular systems
    gram = np.einsum("pkn,pjn->kjp", factors, factors)
    drive = rng.normal(size=(k, count))
    total = rng.uniform(0.5, 2.0, count)
    total[9] = 0.0  # no noise
    for keep_input in (True, False):
        together = least_risk_weights(gram, drive, total, keep_input)
        alone = np.stack([least_risk_weights(gram[:, :, p], drive[:, p], total[p], keep_input)
                          for p in range(count)], axis=1)
        np.testing.assert_allclose(together, alone, atol=1e-12)
        assert not together[:, 9].any()
        assert (together >= 0).all() and together.sum(axis=0).max() <= 1 + 1e-9


def test_sure_weight_maps_rejects_a_tile_without_pixels():
    _, noisy, candidates, moved, probe, variance = smoothing_candidates()
    with pytest.raises(ValueError, match="tile must be >= 1"):
        sure_weight_maps(noisy, candidates, probe, moved, variance, 0.0, tile=0)
    with pytest.raises(ValueError, match="sure_tile must be an integer >= 0"):
        fm2s.make_settings(preset="auto", sure_tile=-1)


def test_sure_nlm_blend_denoises_and_reports_its_weights():
    from fm2s.synthetic import noisy_plane

    truth = 255 * clean_plane((64, 64), seed=1)
    noisy = noisy_plane(clean_plane((64, 64), seed=1), photons=20, seed=2)
    result = fm2s.denoise_result(noisy, steps=40, crop_size=48, device="cpu", blend="sure-nlm")
    weights = [result.info[k] for k in ("blend", "blend_nlm", "blend_guided_nlm")]
    assert min(weights) >= 0 and sum(weights) <= 1 + 1e-6
    assert result.info["settings"]["blend"] == "sure-nlm"
    assert psnr(truth, result.image.astype(float)) > psnr(truth, noisy.astype(float)) + 3.0


def test_dct_noise_variance_matches_sampled_scan_line_noise():
    import scipy.fft
    import torch

    from fm2s.noise import correlate_rows

    assert np.allclose(dct_noise_variance(0.0), 1.0)
    line_corr = 0.3
    noise = correlate_rows(torch.randn((4000, 7, 8), generator=torch.Generator().manual_seed(4),
                                       dtype=torch.float64), line_corr).numpy()[:, :, 1:]
    # Columns 1..7 have a left neighbour: a 7-wide patch of the correlated noise.
    sampled = scipy.fft.dctn(noise, axes=(1, 2), norm="ortho").var(axis=0)
    expected = dct_noise_variance(line_corr, 7)
    np.testing.assert_allclose(sampled, expected, rtol=0.1)
    # Neighbours that move together: more power at low horizontal frequencies, the same in all.
    assert expected[:, 0].mean() > 1.4 > 0.6 > expected[:, -1].mean()
    assert expected.sum() == pytest.approx(49.0)


@pytest.mark.parametrize(("gain", "read_var"), [(1.0, 4.0), (0.0, 25.0)])
def test_the_wiener_filter_improves_on_its_pilot(gain, read_var):
    truth = 100.0 * clean_plane((96, 96), seed=2)
    noisy = (poisson_gaussian(truth, gain, read_var, seed=3) if gain
             else truth + np.random.default_rng(3).normal(0, np.sqrt(read_var), truth.shape))
    pilot = vst_nlm(noisy, gain, read_var)
    before = (noisy.copy(), pilot.copy())
    out = vst_wiener(noisy, pilot, gain, read_var)
    np.testing.assert_array_equal(noisy, before[0])
    np.testing.assert_array_equal(pilot, before[1])
    assert out.shape == noisy.shape and out.dtype == np.float64
    assert psnr(truth, out) > psnr(truth, pilot) + 0.3
    # A noise-free pilot: what the filter keeps of the plane is signal.
    oracle = vst_wiener(noisy, truth, gain, read_var)
    assert psnr(truth, oracle) > psnr(truth, pilot) + 1.0


@pytest.mark.parametrize("line_corr", [0.0, 0.4])
def test_the_fused_wiener_filter_equals_torchs_to_float32_rounding(monkeypatch, line_corr):
    rng = np.random.default_rng(23)
    truth = 40.0 * clean_plane((90, 133), seed=24) + 5.0
    noisy = rng.poisson(truth).astype(np.float64)
    results = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("FM2S_FUSED_KERNELS", fused)
        results[fused] = vst_wiener(noisy, truth, 1.0, 0.0, line_corr)
    # the same float32 sums in another order
    np.testing.assert_allclose(results["1"], results["0"], rtol=1e-5, atol=1e-4)
    def rmse(x):
        return np.sqrt(np.mean((x - truth) ** 2))

    for filtered in results.values():  # both bring the plane closer to the truth
        assert rmse(filtered) < 0.5 * rmse(noisy)


def test_the_wiener_filter_rejects_bad_shapes():
    plane = np.ones((32, 32))
    with pytest.raises(ValueError, match="pilot of shape"):
        vst_wiener(plane, np.ones((32, 31)), 1.0, 1.0)
    with pytest.raises(ValueError, match="at least"):
        vst_wiener(np.ones((WIENER_PATCH - 1, 32)), np.ones((WIENER_PATCH - 1, 32)), 1.0, 1.0)
    with pytest.raises(ValueError, match="no noise model"):
        vst_wiener(plane, plane, 0.0, 0.0)


def test_the_wiener_refinement_runs_on_white_noise_only():
    from fm2s.synthetic import noisy_plane

    truth = 255 * clean_plane((64, 64), seed=1)
    noisy = noisy_plane(clean_plane((64, 64), seed=1), photons=20, seed=2)
    kwargs = dict(steps=40, crop_size=48, device="cpu")
    refined = fm2s.denoise_result(noisy, **kwargs)
    assert refined.info["settings"]["blend"] == "sure-nlm-wiener"  # auto's default
    assert refined.info["wiener"] is True
    blended = fm2s.denoise_result(noisy, blend="sure-nlm", **kwargs)
    assert "wiener" not in blended.info
    assert psnr(truth, refined.image.astype(float)) > psnr(truth, blended.image.astype(float))
    correlated = fm2s.denoise_result(noisy, noise_corr=0.8, **kwargs)
    assert correlated.info["wiener"] is False


def test_blend_weights_are_chosen_per_tile_on_white_noise_only():
    from fm2s.synthetic import noisy_plane

    truth = 255 * clean_plane((64, 64), seed=1)
    noisy = noisy_plane(clean_plane((64, 64), seed=1), photons=20, seed=2)
    kwargs = dict(steps=40, crop_size=48, device="cpu")
    tiled = fm2s.denoise_result(noisy, **kwargs)
    assert tiled.info["sure_tile"] == 32  # auto's default
    whole = fm2s.denoise_result(noisy, sure_tile=0, **kwargs)
    assert whole.info["sure_tile"] == 0
    assert not np.array_equal(tiled.image, whole.image)
    for result in (tiled, whole):
        weights = [result.info[k] for k in ("blend", "blend_nlm", "blend_guided_nlm")]
        assert min(weights) >= 0 and sum(weights) <= 1 + 1e-6
        assert psnr(truth, result.image.astype(float)) > psnr(truth, noisy.astype(float)) + 3.0
    correlated = fm2s.denoise_result(noisy, noise_corr=0.8, **kwargs)
    assert correlated.info["sure_tile"] == 0
    # A correlated model misses part of the noise: none of the input is kept.
    weights = [correlated.info[k] for k in ("blend", "blend_nlm", "blend_guided_nlm")]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert psnr(truth, correlated.image.astype(float)) > psnr(truth, noisy.astype(float)) + 3.0
