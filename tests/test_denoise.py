import numpy as np
import pytest

import fm2s
from fm2s.denoise import denoise_planes, iter_denoise_planes
from fm2s.devices import resolve_device
from fm2s.intensity import training_boost
from fm2s.prepare import plane_seed
from fm2s.settings import make_settings


def run(image, settings, **kwargs):
    return fm2s.denoise(image, settings=settings, device="cpu", **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.float32,
                                   np.float64])
def test_dtype_and_shape_round_trip(plane8, tiny_settings, dtype):
    image = (plane8.astype(np.float64) / 255).astype(dtype) if np.dtype(dtype).kind == "f" \
        else plane8.astype(dtype)
    before = image.copy()
    out = run(image, tiny_settings)
    assert out.dtype == image.dtype and out.shape == image.shape
    np.testing.assert_array_equal(image, before)  # input untouched
    assert np.isfinite(out.astype(np.float64)).all()


def test_denoising_reduces_error_on_synthetic_plane():
    from fm2s.synthetic import clean_plane, noisy_plane

    clean = clean_plane((64, 64), seed=1)
    noisy = noisy_plane(clean, photons=20, seed=2)
    out = fm2s.denoise(noisy, steps=60, crop_size=48, device="cpu")
    truth = clean * 255
    # Mean absolute error over the noisy input's: fm2s 0.251 to 0.260 (seeds 0-5, 1 or 2
    # threads), a 3x3 median 0.444, a Gaussian of sigma 1 0.298 (issue 39). The bound sits
    # about halfway between fm2s's worst and that Gaussian. (The best Gaussian, sigma 1.8,
    # scores 0.214 against this short schedule: tests/test_quality_guard.py guards that.)
    assert np.abs(out - truth).mean() < 0.28 * np.abs(noisy - truth).mean()


def test_same_seed_same_output_and_seed_matters(plane8, tiny_settings):
    first = run(plane8, tiny_settings, seed=5)
    np.testing.assert_array_equal(first, run(plane8, tiny_settings, seed=5))
    assert not np.array_equal(first, run(plane8, tiny_settings, seed=6))


def test_batching_and_order_do_not_change_results(plane8, tiny_settings):
    others = [np.roll(plane8, s, axis=1) for s in (3, 7)]
    alone = run(plane8, tiny_settings, seed=1)
    forward = denoise_planes([others[0], plane8, others[1]], tiny_settings, seed=1, device="cpu")
    backward = denoise_planes(np.stack([others[1], plane8, others[0]]), tiny_settings, seed=1,
                              device="cpu")
    np.testing.assert_array_equal(forward[1], alone)
    np.testing.assert_array_equal(backward[1], alone)
    np.testing.assert_array_equal(forward[0], backward[2])


def test_explicit_keys_define_the_seeds(plane8, tiny_settings):
    results = list(iter_denoise_planes([plane8, plane8], tiny_settings, seed=3,
                                       keys=[(0, 0, 0), (0, 0, 1)], device="cpu"))
    assert [r.seed for r in results] == [plane_seed(3, (0, 0, 0)), plane_seed(3, (0, 0, 1))]
    assert not np.array_equal(results[0].image, results[1].image)
    assert all(r.seconds > 0 for r in results)


def test_uint16_times_257_matches_uint8_times_257(plane8, tiny_settings):
    out8 = run(plane8, tiny_settings, seed=2).astype(np.int64)
    out16 = run(plane8.astype(np.uint16) * 257, tiny_settings, seed=2).astype(np.int64)
    assert np.abs(out16 - out8 * 257).max() <= 129  # half an 8-bit step, plus rounding


def test_data_range_rescales_like_the_data(plane8, tiny_settings):
    twelve_bit = plane8.astype(np.uint16) * 16  # 12-bit data in a 16-bit container
    out = run(twelve_bit, tiny_settings, seed=2, data_range=255 * 16).astype(np.int64)
    out8 = run(plane8, tiny_settings, seed=2).astype(np.int64)
    assert np.abs(out - out8 * 16).max() <= 9


def test_channels_are_denoised_separately(plane8, tiny_settings):
    rgb = np.stack([plane8, np.flipud(plane8), plane8], axis=-1)
    out = run(rgb, tiny_settings, channel_axis=-1, seed=1)
    assert out.shape == rgb.shape
    np.testing.assert_array_equal(out[..., 0], run(plane8, tiny_settings, seed=1))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    first_axis = run(np.moveaxis(rgb, -1, 0), tiny_settings, channel_axis=0, seed=1)
    np.testing.assert_array_equal(np.moveaxis(first_axis, 0, -1), out)


@pytest.mark.parametrize("value", [0, 7])
def test_constant_plane_is_its_own_result(tiny_settings, value):
    plane = np.full((32, 32), value, dtype=np.uint16)
    np.testing.assert_array_equal(run(plane, tiny_settings), plane)


def mean_error(image, truth):
    return float(np.abs(image.astype(np.float64) - truth).mean())


@pytest.fixture(scope="module")
def pair():
    """A noisy 8-bit plane and its truth (0-255), for tests that must see a better plane."""
    from fm2s.synthetic import clean_plane, noisy_plane

    clean = clean_plane((48, 48), seed=5, blobs=8, filaments=3)
    return noisy_plane(clean, photons=20, seed=6), clean * 255


def test_planes_smaller_than_a_region_are_one_region(pair):
    noisy, truth = pair[0][:20, :20], pair[1][:20, :20]  # region_size is 75
    out = fm2s.denoise(noisy, preset="confocal", steps=40, crop_size=16, device="cpu")
    assert out.shape == (20, 20)
    assert mean_error(out, truth) < 0.8 * mean_error(noisy, truth)


@pytest.mark.parametrize("recipe", ["v1", "v2"])
def test_faithful_recipes_run(pair, recipe):
    noisy, truth = pair
    out = fm2s.denoise(noisy, preset="confocal", recipe=recipe, samples=3, steps_per_sample=15,
                       device="cpu")
    assert out.shape == noisy.shape and out.dtype == np.uint8
    assert mean_error(out, truth) < 0.8 * mean_error(noisy, truth)


def test_bfloat16_training_runs(pair):
    noisy, truth = pair
    out = fm2s.denoise(noisy, steps=40, crop_size=24, precision="bfloat16", device="cpu")
    assert out.dtype == np.uint8
    assert mean_error(out, truth) < 0.8 * mean_error(noisy, truth)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((0, 10), np.uint8), {}, "empty plane"),
        (np.zeros((5, 5), np.uint8) + 1, {}, "smaller than the network's receptive field"),
        (np.zeros((3, 32, 32), np.uint8), {}, "expected a 2D plane"),
        (np.zeros((32,), np.uint8), {}, "expected a 2D plane"),
        (np.full((32, 32), np.nan, np.float32), {}, "NaN or infinite"),
        (np.full((32, 32), np.inf, np.float64), {}, "NaN or infinite"),
        (np.full((32, 32), -1.0, np.float32), {}, "negative values"),
        (np.zeros((32, 32), bool), {}, "unsupported dtype bool"),
        (np.zeros((32, 32), np.complex64), {}, "unsupported dtype complex64"),
        (np.zeros((32, 32), object), {}, "unsupported dtype object"),
        (np.zeros((32, 32), np.uint8), {"preset": "nope"}, "unknown preset 'nope'"),
        (np.zeros((32, 32), np.uint8), {"recipe": "v9"}, "unknown recipe 'v9'"),
        (np.zeros((32, 32), np.uint8), {"kgg": 1}, "unknown setting 'kgg'"),
        (np.zeros((32, 32), np.uint8), {"device": "tpu"}, "device"),
        (np.zeros((32, 32), np.uint8), {"data_range": 0}, "data_range"),
        (np.zeros((32, 32, 3), np.uint8), {"channel_axis": 0, "steps": 1}, None),
    ],
)
def test_bad_input_raises_value_error(image, kwargs, message):
    if message is None:  # a 32 x 32 x 3 image with channel_axis=0 gives 3-pixel-wide planes
        message = "smaller than the network's receptive field"
    with pytest.raises(ValueError, match=message):
        fm2s.denoise(image, **{"device": "cpu", **kwargs})


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device|unsupported device|CUDA"):
        resolve_device("gpu0")


def test_settings_and_overrides_are_exclusive(plane8):
    with pytest.raises(ValueError, match="either settings or k_g, not both"):
        fm2s.denoise(plane8, settings=make_settings(), k_g=3)


@pytest.mark.parametrize("given", [{"preset": "confocal"}, {"recipe": "v2"}])
def test_settings_refuse_a_preset_or_recipe(plane8, given):
    with pytest.raises(ValueError, match=f"either settings or {next(iter(given))}"):
        fm2s.denoise(plane8, settings=make_settings(), **given)


def test_return_info_is_deprecated_for_denoise_result(plane8):
    options = dict(steps=5, crop_size=16, device="cpu", threads=1)
    with pytest.warns(DeprecationWarning, match="denoise_result"):
        old = fm2s.denoise(plane8, return_info=True, **options)
    new = fm2s.denoise_result(plane8, **options)
    np.testing.assert_array_equal(old.image, new.image)
    assert old.info == new.info


def test_more_keys_than_planes_is_an_error(plane8, tiny_settings):
    with pytest.raises(ValueError, match="more keys than planes"):
        denoise_planes([plane8], tiny_settings, keys=[1, 2], device="cpu")


def test_precision_choice():
    import torch

    from fm2s.train import uses_bfloat16

    cpu = torch.device("cpu")
    assert not uses_bfloat16(make_settings(precision="float32"), cpu)
    assert uses_bfloat16(make_settings(precision="bfloat16"), cpu)
    assert make_settings(recipe="v2").precision == "float32"  # faithful recipes stay float32
    assert uses_bfloat16(make_settings(), cpu) == bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_warns_when_16_bit_data_use_few_levels(plane8, tiny_settings, caplog):
    twelve_bit = plane8.astype(np.uint16) * 16
    with caplog.at_level("WARNING", logger="fm2s.denoise"):
        run(twelve_bit, tiny_settings)
    assert "Pass data_range" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fm2s.denoise"):
        run(twelve_bit, tiny_settings, data_range=4095)
    assert "data_range" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fm2s.denoise"):  # auto has no fixed scale
        fm2s.denoise(twelve_bit, preset="auto", steps=2, crop_size=16, device="cpu")
    assert "data_range" not in caplog.text


def test_training_boost_brings_the_peak_into_the_upper_half():
    auto, confocal = make_settings("auto"), make_settings("confocal")
    assert training_boost(np.array([[0.0, 0.7]]), auto) == 1.0
    assert training_boost(np.array([[0.0, 0.5]]), auto) == 2.0
    assert training_boost(np.array([[0.0, 4095 / 65535]]), auto) == 16.0  # 12-bit in uint16
    assert training_boost(np.array([[0.0, 0.0]]), auto) == 1.0
    assert training_boost(np.array([[0.0, 0.01]]), confocal) == 1.0  # lam_p fixes the scale


def test_auto_trains_the_same_network_wherever_the_data_sit_in_the_dtype(plane8):
    # A 12-bit plane and the same plane x 16 (filling uint16): the noise model pinned (scaled
    # to each plane's [0, 1] units) and one key, both train on the same boosted plane with
    # the same draws, so the results agree up to x 16 and rounding.
    twelve_bit = plane8.astype(np.uint16) * 16
    full = twelve_bit * 16
    common = dict(steps=20, crop_size=24, batch_size=2, median_size=3, noise_corr=0.0,
                  noise_line_corr=0.0, blend="none")
    gain, read_var = 2e-4, 1e-6  # on the [0, 1] scale of `full`
    small = make_settings("auto", gain=gain / 16, read_var=read_var / 256, **common)
    large = make_settings("auto", gain=gain, read_var=read_var, **common)
    out_small = denoise_planes([twelve_bit], small, keys=["p"], device="cpu")[0]
    out_large = denoise_planes([full], large, keys=["p"], device="cpu")[0]
    assert np.abs(out_large.astype(np.int64) - 16 * out_small.astype(np.int64)).max() <= 8
    assert np.abs(out_large.astype(np.int64) - full).mean() > 100  # it did denoise


@pytest.mark.slow  # 42 s on 2 shared CPU cores; 211 s in the run of issue 39
def test_a_large_plane_is_applied_in_regions_without_seams(monkeypatch, caplog):
    """Above REGION_PIXELS the blend runs region by region (bounded memory): the plane gets
    about the pixels of the whole-plane blend, no worse along the regions' borders."""
    import importlib

    import torch

    from fm2s.prepare import prepare_plane
    from fm2s.synthetic import clean_plane, noisy_plane

    engine = importlib.import_module("fm2s.networks")
    clean = clean_plane((200, 300), seed=3)
    noisy = noisy_plane(clean, photons=40, seed=1, dtype=np.uint16)
    truth = clean * 65535
    cpu = torch.device("cpu")
    prepared = prepare_plane(noisy, make_settings("auto", steps=150), key=(0, 0, 0))
    network = engine.train_networks([engine.TrainingUnit((prepared,), 1)], cpu)[0]
    whole = engine.apply_network(network, prepared, 7, cpu)
    monkeypatch.setattr(engine, "REGION_PIXELS", 100 * 100)
    monkeypatch.setattr(engine, "REGION_SIDE", 128)
    with caplog.at_level("INFO", logger="fm2s.denoise"):
        parts = engine.apply_network(network, prepared, 7, cpu)
    assert "regions" not in whole.info and parts.info["regions"] == 2 * 3
    assert [r.getMessage().split(": ")[1].split(",")[0] for r in caplog.records] == [
        f"region {k}/6" for k in range(1, 7)]  # progress of a long plane
    assert parts.image.dtype == noisy.dtype and parts.image.shape == noisy.shape

    def squared_error(image):
        return (image.astype(np.float64) - truth) ** 2

    noisy_error = squared_error(noisy).mean()
    assert squared_error(parts.image).mean() < 0.1 * noisy_error  # denoised: > +10 dB
    assert squared_error(parts.image).mean() < 1.05 * squared_error(whole.image).mean()
    borders = np.zeros(noisy.shape, bool)
    borders[92:108] = True  # the regions' cores meet at row 100 and columns 100 and 200
    borders[:, 92:108] = borders[:, 192:208] = True
    assert (squared_error(parts.image)[borders].mean()
            < 1.1 * squared_error(whole.image)[borders].mean())
    for name in ("blend", "blend_nlm", "blend_guided_nlm"):
        assert abs(parts.info[name] - whole.info[name]) < 0.1
    again = engine.apply_network(network, prepared, 7, cpu)
    np.testing.assert_array_equal(again.image, parts.image)
