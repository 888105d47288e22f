"""One noise model per acquisition (fm2s.stack_noise): pooled fit, changes, segments."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from fm2s.plane_noise import estimate_noise, fit_evidence, plane_evidence
from fm2s.stack_noise import StackNoise, fit_channel, plane_shift, sample_indices
from fm2s.stacks import PlaneKey
from fm2s.synthetic import clean_plane

SHAPE = (96, 96)


def noisy(clean, gain_dn, read_dn, seed, offset_dn=0.0):
    """uint16 plane: Poisson counts of ``clean * 4000 / gain_dn`` photons times the gain,
    plus normal read noise and a dark offset (DN)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(clean * 4000.0 / gain_dn) * gain_dn
    values = counts + offset_dn + rng.normal(0.0, read_dn, clean.shape)
    return np.clip(np.rint(values), 0, 65535).astype(np.uint16)


def time_lapse(count, *, seed=0, gain=lambda t: 20.0, brightness=lambda t: 1.0):
    """Planes of one moving scene, each with its own noise draw."""
    return [noisy(0.2 + 0.8 * clean_plane(SHAPE, seed=3, phase=0.05 * t) * brightness(t),
                  gain(t), 30.0, seed=1000 * seed + t, offset_dn=100.0) for t in range(count)]


def channel_of(planes, sample=32):
    keys = [PlaneKey(t, 0, 0) for t in range(len(planes))]
    return fit_channel(keys, lambda key: planes[key.t], sample=sample)


def test_sample_indices_are_spread_and_fixed():
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    chosen = sample_indices(1000, 32)
    assert chosen[0] == 0 and chosen[-1] == 999 and len(chosen) == 32
    assert chosen == sample_indices(1000, 32)


def test_single_plane_channel_is_the_planes_own_estimate():
    plane = time_lapse(1)[0]
    channel = channel_of([plane])
    segment = channel.segments[0]
    assert segment.own and channel.changes == ()
    assert segment.estimate_for(plane) == estimate_noise(plane)


def test_pooled_fit_of_one_plane_is_the_plane_estimate():
    plane = time_lapse(1)[0]
    assert fit_evidence([plane_evidence(plane)]) == estimate_noise(plane)


@pytest.mark.parametrize("seed", range(10))
def test_no_change_found_on_a_stationary_stack(seed):
    channel = channel_of(time_lapse(12, seed=seed))
    assert channel.changes == () and len(channel.segments) == 1


def test_bleaching_time_lapse_stays_one_group():
    # half the brightness by the end, one camera: the signal moves along one noise model
    channel = channel_of(time_lapse(16, brightness=lambda t: 1.0 - 0.5 * t / 15))
    assert channel.changes == () and len(channel.segments) == 1


def test_exposure_change_keeps_the_model():
    # twice the light from plane 8 on, same camera gain: not a change of the noise model
    channel = channel_of(time_lapse(16, brightness=lambda t: 0.5 if t < 8 else 1.0))
    assert channel.changes == ()


@pytest.mark.parametrize(("count", "at", "sample"), [(12, 5, 32), (24, 11, 6)])
def test_gain_change_found_at_its_plane(count, at, sample):
    # the camera's gain 2.5x higher from plane `at` on (a setting switched mid-acquisition);
    # with `sample` below the plane count the plane is found by bisection
    planes = time_lapse(count, gain=lambda t: 16.0 if t < at else 40.0)
    channel = channel_of(planes, sample=sample)
    assert [c["at"] for c in channel.changes] == [f"{at},0,0"]
    assert channel.changes[0]["variance_ratio"] > 1.6
    first, second = channel.segments
    assert first.last == PlaneKey(at - 1, 0, 0) and second.first == PlaneKey(at, 0, 0)
    assert second.model.gain_dn / first.model.gain_dn == pytest.approx(2.5, rel=0.25)


def test_models_are_in_dn_whatever_the_planes_scale():
    # float planes are scaled by their own maximum: the model must still be one in DN
    planes = [p.astype(np.float32) * (1.0 + 0.5 * (t % 2)) for t, p in enumerate(time_lapse(6))]
    channel = channel_of(planes)
    segment = channel.segments[0]
    bright, dim = (segment.estimate_for(planes[t]) for t in (1, 0))
    assert bright.gain_dn == pytest.approx(dim.gain_dn) and bright.data_range != dim.data_range


def test_plane_shift_is_near_zero_for_its_own_noise():
    planes = time_lapse(8)
    pooled = fit_evidence([plane_evidence(p) for p in planes])
    shifts = [plane_shift(plane_evidence(p), pooled)[0] for p in planes]
    assert np.ptp(shifts) < 0.3


def test_stack_noise_is_lazy_and_per_channel():
    planes = {(0, c, z): noisy(0.3 + 0.5 * clean_plane(SHAPE, seed=z), 10.0 * (c + 1), 20.0,
                               seed=10 * c + z) for c in range(2) for z in range(3)}

    class Stack:
        reads = 0

        def plane_keys(self):
            return sorted(planes)

        def read_plane(self, key):
            Stack.reads += 1
            return planes[tuple(key)]

    noise = StackNoise(Stack())
    assert noise((0, 1, 2)).channel == 1 and Stack.reads == 3 and list(noise.channels) == [1]
    record = noise.record()["1"]
    assert record["segments"][0]["gain_dn"] == pytest.approx(20.0, rel=0.3)


MITOCHECK = (Path(__file__).resolve().parents[2] / "shared" / "data" / "neubias_training_resources"
             / "image_data" / "mitocheck-movie")


@pytest.mark.skipif(not MITOCHECK.is_dir(), reason="needs ../shared/data (real MitoCheck movie)")
def test_frames_of_one_movie_get_one_noise_class():
    # 30 frames of 190 x 211 pixels from one camera: fm2s 0.8.3 fitted 8 of them as correlated
    # noise and 22 as white; one plane's evidence must not flip the model class
    frames = sorted(MITOCHECK.glob("*.tif"))
    assert len(frames) == 30
    classes = {estimate_noise(tifffile.imread(f)).corr > 0 for f in frames}
    assert classes == {False}


def test_float_planes_of_different_scales_share_one_network():
    # float planes brighter than 1 are each divided by their own maximum; one camera's planes
    # still share one noise model (in DN) and one network, trained on the brightest's scale
    from fm2s.devices import resolve_device
    from fm2s.engine import denoise_stack_planes
    from fm2s.settings import make_settings
    from fm2s.stacks import stack_from_array

    rng = np.random.default_rng(4)
    clean = np.stack([(0.2 + 0.8 * clean_plane((64, 64), seed=3, phase=0.1 * t)) * (300 + 200 * t)
                      for t in range(4)])
    planes = rng.poisson(clean).astype(np.float32)
    settings = make_settings(steps=60, crop_size=24, batch_size=2)
    with stack_from_array(planes, "tyx") as stack:
        results = dict(denoise_stack_planes(stack, settings, seed=0,
                                            device=resolve_device("cpu")))
    assert {r.info["network"] for r in results.values()} == {"group-0"}
    assert len({r.data_range for r in results.values()}) == 4
    gains = {round(r.info["estimate"]["gain_dn"], 6) for r in results.values()}
    assert len(gains) == 1 and gains.pop() == pytest.approx(1.0, rel=0.3)
    for t in range(4):
        image = results[(t, 0, 0)].image
        assert np.abs(image - clean[t]).mean() < 0.8 * np.abs(planes[t] - clean[t]).mean()


def test_large_planes_are_measured_on_a_centred_crop_except_alone():
    from fm2s.stack_noise import EVIDENCE_PIXELS, _centre

    big = time_lapse(1)[0]
    big = np.tile(big, (12, 12))  # 1152 x 1152 pixels
    crop = _centre(big)
    assert crop.size <= EVIDENCE_PIXELS and crop.shape[0] == crop.shape[1] > 1000
    # a channel of one plane keeps the plane's own estimate, measured on all of it
    assert channel_of([big]).segments[0].estimate_for(big) == estimate_noise(big)
