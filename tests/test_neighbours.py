"""Stack mode (issue 43): neighbouring planes in the SURE blend, guarded by its risk estimate."""

import numpy as np
import pytest
import tifffile

from fm2s.devices import resolve_device
from fm2s.engine import apply_model, denoise_stack_planes, train_stack
from fm2s.neighbours import apply_with_neighbours, face_weights, neighbour_axis, neighbour_keys
from fm2s.networks import apply_network
from fm2s.prepare import prepare_plane
from fm2s.settings import make_settings
from fm2s.stacks import open_stack
from fm2s.synthetic import clean_plane

CPU = resolve_device("cpu")
PHOTONS = 20.0


def psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def captures(truth, seed):
    """8-bit Poisson captures (PHOTONS at 1.0) of clean planes in [0, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.poisson(truth * PHOTONS) / PHOTONS * 255), 0, 255).astype(
        np.uint8)


def write(path, planes, axes="T"):
    data = planes[:, None, None] if axes == "T" else planes[None, None]
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX"})
    return path


@pytest.fixture(scope="module")
def settings():
    return make_settings("auto", steps=300, crop_size=32)


@pytest.fixture(scope="module")
def field():
    return clean_plane((96, 96), seed=11, blobs=10, filaments=4) * 0.9 + 0.05


def both_modes(path, settings):
    """{mode: [image per plane]}: one training, applied in plane mode and stack mode."""
    with open_stack(path) as stack:
        model = train_stack(stack, settings.replace(neighbours="auto"), seed=0, device=CPU)
        out = {}
        for mode in ("off", "auto"):
            model.settings = settings.replace(neighbours=mode)
            out[mode] = [r.image for r in apply_model(stack, model, device=CPU)]
    return out


def test_neighbour_keys_follow_the_stack_axis():
    assert neighbour_axis((5, 2, 1, 8, 8)) == "t"
    assert neighbour_axis((3, 1, 4, 8, 8)) == "z"
    assert neighbour_axis((1, 3, 1, 8, 8)) is None
    assert neighbour_keys((0, 1, 0), (5, 2, 1, 8, 8)) == [(1, 1, 0), (2, 1, 0)]
    assert neighbour_keys((2, 0, 0), (5, 1, 1, 8, 8)) == [(1, 0, 0), (3, 0, 0), (0, 0, 0),
                                                          (4, 0, 0)]
    assert neighbour_keys((1, 0, 3), (2, 1, 4, 8, 8)) == [(1, 0, 2), (1, 0, 1)]
    assert neighbour_keys((0, 0, 0), (1, 2, 1, 8, 8)) == []


def test_settings_validate_and_keep_old_digests():
    assert make_settings().neighbours == "auto"  # the fast recipe: stack mode
    assert make_settings(recipe="v2").neighbours == "off"  # the paper's recipes: planes alone
    with pytest.raises(ValueError, match="neighbours"):
        make_settings(neighbours="sometimes")
    assert "neighbours" not in make_settings(recipe="v2").to_dict()  # old digests hold


def test_no_neighbours_is_plane_mode_bitwise(settings, field, tmp_path):
    planes = captures(np.stack([field] * 2), 1)
    path = write(tmp_path / "two.ome.tif", planes)
    with open_stack(path) as stack:
        model = train_stack(stack, settings, seed=0, device=CPU)
    network = next(iter(model.networks.values()))
    prepared = prepare_plane(planes[0], network.settings, (0, 0, 0))
    prepared.info = None
    alone = apply_network(network, prepared, 5, CPU)
    same = apply_with_neighbours(network, prepared, 5, CPU, [])
    assert np.array_equal(alone.image, same.image)


def test_one_plane_per_channel_is_unchanged_to_the_bit(settings, field, tmp_path):
    planes = captures(np.stack([field, field[::-1]]), 2)
    path = tmp_path / "channels.ome.tif"
    tifffile.imwrite(path, planes[None, :, None], ome=True, metadata={"axes": "TCZYX"})
    with open_stack(path) as stack:
        off = {k: r.image for k, r in denoise_stack_planes(
            stack, settings.replace(neighbours="off"), device=CPU)}
        on = {k: r.image for k, r in denoise_stack_planes(
            stack, settings.replace(neighbours="auto"), device=CPU)}
    assert off.keys() == on.keys()
    for key in off:
        assert np.array_equal(off[key], on[key])


def test_static_stack_gains_over_plane_mode(settings, field, tmp_path):
    truth = np.stack([field] * 5)
    out = both_modes(write(tmp_path / "static.ome.tif", captures(truth, 3)), settings)
    clean = np.clip(np.rint(field * 255), 0, 255)
    gains = [psnr(s, clean) - psnr(p, clean) for s, p in zip(out["auto"], out["off"], strict=False)]
    # Measured: +1.3 (last plane, two neighbours) to +3.6 dB per plane, +2.4 on average (5
    # captures, 20 photons at 1.0).
    assert min(gains) > 1.0, gains
    assert np.mean(gains) > 2.0, gains


@pytest.mark.parametrize("step", [2, 12])
def test_moving_stack_is_not_worse_than_plane_mode(settings, tmp_path, step):
    big = clean_plane((96, 200), seed=12, blobs=20, filaments=6) * 0.9 + 0.05
    truth = np.stack([big[:, step * t:step * t + 96] for t in range(5)])  # pixels per frame
    out = both_modes(write(tmp_path / "moving.ome.tif", captures(truth, 4)), settings)
    clean = np.clip(np.rint(truth * 255), 0, 255)
    gaps = [psnr(s, c) - psnr(p, c)
            for s, p, c in zip(out["auto"], out["off"], clean, strict=True)]
    assert min(gaps) > -0.05, gaps


def test_result_is_independent_of_chunks_and_runs(settings, field, tmp_path):
    path = write(tmp_path / "z.ome.tif", captures(np.stack([field] * 5), 5), axes="Z")
    chosen = settings.replace(neighbours="auto")
    with open_stack(path) as stack:
        model = train_stack(stack, chosen, seed=0, device=CPU)
        keys = stack.plane_keys()
        whole = [r.image for r in apply_model(stack, model, keys, device=CPU)]
        chunks = [r.image for part in (keys[:2], keys[2:3], keys[3:])
                  for r in apply_model(stack, model, part, device=CPU)]
        again = [r.image for r in apply_model(stack, model, keys[::-1], device=CPU)][::-1]
        streamed = {k: r.image for k, r in denoise_stack_planes(stack, chosen, device=CPU)}
    for a, b, c, key in zip(whole, chunks, again, keys, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)
        assert np.array_equal(a, streamed[key])


def test_guard_gives_plane_mode_where_the_neighbours_differ():
    rng = np.random.default_rng(0)
    truth = np.full((64, 64), 0.5)
    noisy = truth + rng.normal(0, 0.05, truth.shape)
    plane = truth + rng.normal(0, 0.03, truth.shape)  # an estimate of its own
    other = np.full((64, 64), 0.8)  # the neighbours show something else
    variance = np.full(truth.shape, 0.05**2)
    probe = rng.normal(0, 0.05, truth.shape)
    weights = face_weights(noisy, [plane, other], probe, [plane, other], variance, 0.0, 32)
    assert weights[0].min() > 0.999 and weights[1].max() < 0.001
    weights = face_weights(noisy, [plane, truth], probe, [plane, truth], variance, 0.0, 32)
    assert weights[1].mean() > 0.5  # the same structure, less noise: taken


def test_drift_finds_whole_pixel_shifts_and_leaves_none_alone():
    from fm2s.neighbours import drift, moved_by

    big = clean_plane((128, 200), seed=12)
    rng = np.random.default_rng(1)
    plane = big[:, 20:148]
    for shift in (0, 1, 3, -5, 7):
        other = big[:, 20 + shift:148 + shift] + rng.normal(0, 0.1, plane.shape)
        assert drift(plane, other) == (0, shift)
        assert np.array_equal(moved_by(big[:, 20 + shift:148 + shift], (0, shift))[:, 10:-10],
                              plane[:, 10:-10])


def test_drifts_of_raw_neighbours_do_not_depend_on_their_scale_or_on_what_came_before():
    from fm2s.neighbours import _NEIGHBOUR_SPECTRA, drifts

    big = 1000.0 * clean_plane((128, 200), seed=13)
    rng = np.random.default_rng(2)
    plane = big[:, 20:148] / 1000.0  # a result on the plane's scale; neighbours in DN
    noisy = [big[:, 20 + s:148 + s] + rng.normal(0, 20.0, plane.shape) for s in (2, -3, 0)]
    raw = [np.round(np.clip(n, 0, None)).astype(np.uint16) for n in noisy]
    _NEIGHBOUR_SPECTRA.spectra.clear()
    first = drifts(plane, raw)
    assert first == [(0, 2), (0, -3), (0, 0)]
    assert len(_NEIGHBOUR_SPECTRA.spectra) == 3
    again = drifts(plane, [r.copy() for r in raw[::-1]])  # other arrays, the same bytes: hits
    assert again == first[::-1] and len(_NEIGHBOUR_SPECTRA.spectra) == 3
    assert drifts(plane, [r.astype(np.float64) * 0.01 for r in raw]) == first
