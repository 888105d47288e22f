"""Noise estimation (fm2s.estimate) and preset="auto": accuracy, edge cases, provenance."""

import json

import numpy as np
import pytest
from scipy import ndimage, signal

import fm2s
from fm2s.estimate import auto_settings, estimate_noise, median_window, resolve_settings
from fm2s.noise import correlation_kernel
from fm2s.plane_noise import (
    _QUANTILE,
    _WINDOW,
    _bin,
    _chain_gain,
    _gamma_quantiles,
    _highpass,
    _window_dof,
)
from fm2s.settings import AUTO_FIELDS, Settings, make_settings
from fm2s.stack_noise import StackNoise
from fm2s.synthetic import clean_plane

# Stated tolerances (docs/noise-estimation.md): on 256 x 256 planes with structure, the noise
# std at the plane's mean within 12 %, the gain within 15 % where shot noise dominates, the
# correlation width within 0.15 px, and white noise found white (neighbour correlation < 0.1).
STD_TOL, GAIN_TOL, CORR_TOL = 0.12, 0.15, 0.15
FAST = dict(steps=8, crop_size=24, batch_size=2)


@pytest.fixture(scope="module")
def clean():
    return clean_plane((256, 256), seed=1)


def make_noisy(clean, photons, read, corr=0.0, dtype=np.uint16, seed=0):
    """Poisson-Gaussian noise (normal approximation) of variance clean/photons + read^2."""
    rng = np.random.default_rng(seed)
    pad = 24
    white = rng.normal(size=(clean.shape[0] + 2 * pad, clean.shape[1] + 2 * pad))
    noise = signal.fftconvolve(white, correlation_kernel(corr), mode="same")[pad:-pad, pad:-pad]
    values = clean + np.sqrt(clean / photons + read**2) * noise
    top = np.iinfo(dtype).max
    return np.clip(np.rint(values * top), 0, top).astype(dtype)


@pytest.mark.parametrize(
    ("photons", "read", "corr", "dtype"),
    [
        (30, 0.02, 0.0, np.uint16),
        (100, 0.01, 0.0, np.uint16),
        (300, 0.005, 0.0, np.uint8),
        (1e6, 0.02, 0.0, np.uint16),  # read noise only
        (30, 0.02, 0.7, np.uint16),  # wide-field-like correlation (neighbours ~0.6)
        (200, 0.01, 0.7, np.uint8),
        (50, 0.01, 1.0, np.uint16),
    ],
)
def test_recovers_known_noise(clean, photons, read, corr, dtype):
    est = estimate_noise(make_noisy(clean, photons, read, corr, dtype))
    true_std = np.sqrt(est.mean / photons + read**2)
    assert est.std == pytest.approx(true_std, rel=STD_TOL)
    if photons <= 300:  # shot noise dominates: the gain is identifiable
        assert est.gain == pytest.approx(1 / photons, rel=GAIN_TOL)
    if corr > 0:
        assert est.corr == pytest.approx(corr, abs=CORR_TOL)
    else:
        assert est.neighbour_corr < 0.1
    # DN units: the same fit times the data range
    assert est.gain_dn == pytest.approx(est.gain * est.data_range)
    assert est.read_var_dn == pytest.approx(est.read_var * est.data_range**2)
    assert est.std_dn == pytest.approx(est.std * est.data_range)


def test_multiscale_sees_correlated_variance(clean):
    """A pixel-level estimate would see a fraction of correlated noise; this one sees it all."""
    est = estimate_noise(make_noisy(clean, 1e6, 0.03, corr=0.7))
    assert est.std == pytest.approx(0.03, rel=STD_TOL)
    assert 0.5 < est.neighbour_corr < 0.7 and est.lowfreq_gain > 4


def test_weak_correlation_is_taken_as_white(clean):
    """Neighbour correlation below WEAK_CORR is not told apart from texture: white, std low.

    At width 0.4 px (neighbour correlation 0.09) the fine-scale chain gain is 0.78 of white
    noise's, so the white fit sees the pixel variance times about 0.78.
    """
    est = estimate_noise(make_noisy(clean, 1e6, 0.03, corr=0.4))
    assert est.corr == 0.0 and est.neighbour_corr == 0.0
    assert 0.03 * np.sqrt(0.78) * (1 - STD_TOL) < est.std < 0.03


def row_correlated_noisy(clean, photons, read, rho, *, along_rows=True, seed=0):
    """uint16 plane whose noise (variance clean/photons + read^2) has lag-1 correlation `rho`
    between neighbours along rows (or along columns), as a moving average of two pixels."""
    rng = np.random.default_rng(seed)
    beta = (1 - np.sqrt(1 - 4 * rho**2)) / (2 * rho)
    white = rng.normal(size=(clean.shape[0] + 1, clean.shape[1] + 1))
    neighbour = white[1:, :-1] if along_rows else white[:-1, 1:]
    noise = (white[1:, 1:] + beta * neighbour) / np.sqrt(1 + beta**2)
    values = clean + np.sqrt(clean / photons + read**2) * noise
    return np.clip(np.rint(values * 65535), 0, 65535).astype(np.uint16)


@pytest.mark.parametrize(("photons", "rho"), [(100, 0.1), (100, 0.2), (30, 0.1)])
def test_scan_line_correlation_is_measured(clean, photons, rho):
    """Noise correlated along rows (a point scanner's detector bandwidth) is measured, and
    the pixel variance with it: a white fit would see 1 - 4/3 rho of it (std 0.86x at 0.2)."""
    est = estimate_noise(row_correlated_noisy(clean, photons, 0.01, rho))
    assert est.line_corr == pytest.approx(rho, abs=0.03)
    assert est.neighbour_corr < 0.3
    assert est.std == pytest.approx(np.sqrt(est.mean / photons + 0.01**2), rel=0.08)


def test_white_and_column_correlated_noise_have_no_line_correlation(clean):
    """White noise gives none; correlation along columns is not measured (reads as none)."""
    assert estimate_noise(make_noisy(clean, 100, 0.01)).line_corr < 0.01
    across = row_correlated_noisy(clean, 100, 0.01, 0.1, along_rows=False)
    assert estimate_noise(across).line_corr == 0.0


def test_no_row_correlation_from_texture_at_the_rounding_noise_level(clean):
    """Noise far below the rounding noise: texture smoother along rows than across fills the
    flattest windows, and read as row correlation it hit the cap (0.3) before the guard."""
    rng = np.random.default_rng(6)
    texture = ndimage.gaussian_filter(rng.normal(size=clean.shape), (0.4, 1.0))
    plane = clean * 200 + 10 + 0.3 * texture / texture.std() + rng.normal(0, 0.1, clean.shape)
    assert estimate_noise(np.clip(np.rint(plane), 0, 255).astype(np.uint8)).line_corr == 0.0


@pytest.mark.parametrize("photons", [1000, 3000])
def test_fine_texture_is_not_counted_as_noise(clean, photons):
    """Fine texture everywhere (as on two-photon cells at low noise): white noise found white.

    The level-set fit without the texture test put such texture into a correlated-noise
    component and overestimated the std by 13-17 % here (1.5-2.2x on FMD two-photon avg16).
    """
    rng = np.random.default_rng(4)
    texture = ndimage.gaussian_filter(rng.normal(size=clean.shape), 1.5)
    textured = np.clip(clean * (1 + 0.15 * texture / texture.std()) + 0.05, 0, 1)
    noise = np.sqrt(textured / photons + 1e-6) * rng.normal(size=clean.shape)
    plane = np.clip(np.rint((textured + noise) * 65535), 0, 65535).astype(np.uint16)
    est = estimate_noise(plane)
    assert est.std == pytest.approx(np.sqrt(est.mean / photons + 1e-6), rel=0.08)
    assert est.neighbour_corr < 0.1 and est.line_corr < 0.02


@pytest.mark.parametrize(("corr", "scale"), [(0.0, 1), (0.0, 2), (0.7, 1), (0.7, 2)])
def test_window_quantile_factor_matches_simulation(corr, scale):
    """The gamma approximation of the low quantile of noise-only window energies."""
    rng = np.random.default_rng(0)
    noise = signal.fftconvolve(rng.normal(size=(560, 560)), correlation_kernel(corr),
                               mode="valid")[:512, :512]
    binned = _bin(noise, scale)
    hp = _highpass(binned)
    cut = _WINDOW // 2
    energy = ndimage.uniform_filter(hp * hp, _WINDOW)[cut:-cut, cut:-cut]
    simulated = np.quantile(energy, _QUANTILE) / _chain_gain(corr, scale)
    assert _gamma_quantiles(_window_dof(corr, scale))[0] == pytest.approx(simulated, rel=0.02)


def test_estimate_is_finite_on_degenerate_planes():
    dark = np.zeros((64, 64), np.uint8)
    constant = np.full((64, 64), 77, np.uint16)
    saturated = np.full((64, 64), 255, np.uint8)
    saturated[::7, ::5] = 200
    sparse = np.zeros((64, 64), np.uint8)
    sparse[3, 4] = 9
    for plane in (dark, constant, saturated, sparse, np.zeros((32, 40), np.float32)):
        est = estimate_noise(plane)
        values = [v for v in est.to_dict().values() if isinstance(v, float)]
        assert np.isfinite(values).all()
        assert est.gain >= 0 and est.std >= 0
    assert estimate_noise(constant).levels == 0 and estimate_noise(constant).std == 0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 64)), "too small"),
        (np.zeros((16, 16, 3)), "2D plane"),
        (np.zeros((32, 32), bool), "unsupported dtype"),
        (np.full((32, 32), np.nan), "NaN"),
        (-np.ones((32, 32)), "negative"),
    ],
)
def test_estimate_rejects_bad_input(image, message):
    with pytest.raises(ValueError, match=message):
        estimate_noise(image)


def test_estimate_rejects_bad_data_range():
    with pytest.raises(ValueError, match="data_range"):
        estimate_noise(np.zeros((32, 32), np.uint8), data_range=0)


def test_auto_maps_estimate_to_settings(clean):
    white = estimate_noise(make_noisy(clean, 50, 0.01))
    correlated = estimate_noise(make_noisy(clean, 1e6, 0.03, corr=0.7))
    s = auto_settings(white)
    assert s.preset == "auto" and not s.needs_estimate and s.noise_model == "poisson-gaussian"
    assert (s.gain, s.read_var, s.noise_corr) == (white.gain, white.read_var, white.corr)
    rows = estimate_noise(row_correlated_noisy(clean, 100, 0.01, 0.1))
    assert auto_settings(rows).noise_line_corr == rows.line_corr > 0.05
    assert s.median_size == 3 and median_window(correlated) in (7, 9)
    assert auto_settings(correlated).median_size == median_window(correlated)


def test_auto_overrides_are_kept(clean):
    settings = make_settings("auto", median_size=5, steps=10)
    assert "median_size" not in settings.auto_fields and settings.needs_estimate
    resolved, _ = resolve_settings(make_noisy(clean, 1e6, 0.03, corr=0.7), settings)
    assert resolved.median_size == 5 and resolved.noise_corr > 0.5


def test_settings_round_trip_and_old_digests_unchanged():
    auto = make_settings("auto")
    assert set(auto.auto_fields) == set(AUTO_FIELDS)
    assert Settings.from_json(auto.to_json()) == auto
    # Fields added for auto are left out of a preset's dict, so existing digests are unchanged.
    confocal = make_settings("confocal")
    assert "noise_model" not in confocal.to_dict() and "auto_fields" not in confocal.to_dict()
    with pytest.raises(ValueError, match="auto_fields"):
        make_settings("auto", auto_fields=("k_g",))
    with pytest.raises(ValueError, match="noise_model"):
        make_settings("confocal", noise_model="gamma")


@pytest.mark.parametrize("kind", ["dark", "constant", "saturated", "sparse", "float"])
def test_auto_denoise_never_nan_on_degenerate_planes(kind):
    plane = {
        "dark": np.zeros((40, 40), np.uint8),
        "constant": np.full((40, 40), 1000, np.uint16),
        "saturated": np.where(np.indices((40, 40)).sum(0) % 9 == 0, 250, 255).astype(np.uint8),
        "sparse": np.pad(np.ones((2, 2), np.uint8) * 3, 19),
        "float": np.linspace(0, 1, 1600, dtype=np.float32).reshape(40, 40),
    }[kind]
    result = fm2s.denoise_result(plane, preset="auto", device="cpu", **FAST)
    assert result.image.dtype == plane.dtype and result.image.shape == plane.shape
    assert np.isfinite(result.image.astype(np.float64)).all()
    json.dumps(result.info, allow_nan=False)  # finite, JSON-able info


def test_auto_denoise_info_and_determinism(clean):
    noisy = make_noisy(clean[:64, :64], 40, 0.01, dtype=np.uint8)
    first = fm2s.denoise_result(noisy, preset="auto", seed=3, device="cpu", threads=1, **FAST)
    again = fm2s.denoise(noisy, preset="auto", seed=3, device="cpu", threads=1, **FAST)
    np.testing.assert_array_equal(first.image, again)
    info = first.info
    assert info["source"] == "plane" and 0.0 <= info["blend"] <= 1.0
    assert info["settings"]["noise_model"] == "poisson-gaussian"
    assert info["estimate"]["std_dn"] > 0
    resolved, est = resolve_settings(noisy, recipe="fast", **FAST)
    assert resolved.to_dict() == info["settings"] and est.to_dict() == info["estimate"]
    # the resolved settings reproduce the same image
    np.testing.assert_array_equal(
        fm2s.denoise(noisy, settings=resolved, seed=3, device="cpu", threads=1), first.image)


def test_stack_uses_one_model_per_channel(clean):
    class Stack:  # the two methods StackNoise needs
        def __init__(self):
            self.reads = []

        def plane_keys(self):
            return [(t, 0, 0) for t in range(4)]

        def read_plane(self, key):
            self.reads.append(tuple(key))
            return make_noisy(clean[:128, :128], 40, 0.01, dtype=np.uint8, seed=key[0])

    stack = Stack()
    noise = StackNoise(stack)
    planes = [stack.read_plane(k) for k in stack.plane_keys()]
    results = list(fm2s.iter_denoise_planes(planes, make_settings("auto", **FAST), device="cpu",
                                            keys=stack.plane_keys(), noise_reference=noise))
    assert stack.reads.count((0, 0, 0)) == 2  # once as a plane, once for the model
    assert [r.info["source"] for r in results] == ["stack"] * 4
    assert [r.info["segment"] for r in results] == [0] * 4
    assert {json.dumps(r.info["settings"], sort_keys=True) for r in results} == {
        json.dumps(results[0].info["settings"], sort_keys=True)}
    record = noise.record()["0"]
    assert record["planes"] == 4 and record["sampled"] == 4 and record["changes"] == []
    assert record["segments"][0]["first"] == "0,0,0" and record["segments"][0]["last"] == "3,0,0"


def test_auto_recorded_in_provenance_and_independent_of_chunking(tmp_path):
    import tifffile

    from fm2s._provenance import format_provenance, provenance
    from fm2s.jobs import assemble_chunks, denoise_chunk, plan_jobs, train_groups
    from fm2s.ome import open_ome_zarr
    from fm2s.pipeline import denoise_stack
    from fm2s.synthetic import synthetic_stack

    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(source, synthetic_stack(1, 2, 3, 32, seed=5), ome=True,
                     metadata={"axes": "TCZYX"})
    settings = make_settings("auto", steps=2, crop_size=16, batch_size=1)
    direct = denoise_stack(source, tmp_path / "direct.ome.zarr", settings=settings, seed=7,
                           device="cpu", progress=False)
    record = provenance(direct)
    estimate = record["estimate"]
    assert record["settings"] == settings.to_dict()  # as requested; the choices follow
    assert set(estimate["channels"]) == {"0", "1"}
    assert estimate["channels"]["1"]["segments"][0]["fitted_planes"] == 3
    assert set(estimate["planes"]) == {f"0,{c},{z}" for c in range(2) for z in range(3)}
    plane = estimate["planes"]["0,1,2"]
    assert plane["source"] == "stack" and plane["segment"] == 0 and 0 <= plane["blend"] <= 1
    assert plane["median_size"] >= 3 and plane["plane_std_dn"] > 0
    assert "noise:     channel 0" in format_provenance(direct)

    parts = [tmp_path / f"chunk-{i}.npz" for i in range(2)]
    models = [train_groups(source, tmp_path / f"training-{i}.npz", settings=settings, groups=g,
                           seed=7) for i, g in enumerate(plan_jobs(source, settings, 4).trainings)]
    denoise_chunk(source, parts[0], settings=settings, models=models, start=0, stop=4, seed=7)
    denoise_chunk(source, parts[1], settings=settings, models=models, start=4, stop=6, seed=7)
    out = assemble_chunks(source, parts, tmp_path / "chunked.ome.zarr", settings=settings,
                          seed=7)
    for a, b in zip(open_ome_zarr(out)[0], open_ome_zarr(direct)[0], strict=True):
        np.testing.assert_array_equal(a.compute(), b.compute())
    assert provenance(out)["estimate"] == estimate
