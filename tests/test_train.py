import numpy as np
import pytest
import torch

from fm2s import train
from fm2s.noise import median_target, region_means
from fm2s.settings import make_settings


def plane_data(plane8: np.ndarray, seed: int, settings) -> train.TrainingSet:
    noisy = plane8.astype(np.float32) / 255
    target = median_target(noisy, settings.median_size)
    means = region_means(target, settings.region_size, settings.mean_clamp)
    return train.TrainingSet(*([torch.from_numpy(a)] for a in (noisy, target, means)),
                             torch.Generator().manual_seed(seed),
                             torch.Generator().manual_seed(seed + 1))


def test_prefetched_samples_are_the_samples_drawn_in_turn(plane8, tiny_settings):
    crop = train.group_key(tiny_settings, plane8.shape)

    def samples():
        planes = [plane_data(plane8, s, tiny_settings) for s in (1, 7)]
        return train._samples(planes, tiny_settings, crop, torch.device("cpu"))

    in_turn, ahead = list(samples()), list(train._one_ahead(samples()))
    assert len(in_turn) == len(ahead) == tiny_settings.samples
    for (inputs, targets), (inputs_ahead, targets_ahead) in zip(in_turn, ahead, strict=True):
        torch.testing.assert_close(inputs, inputs_ahead, rtol=0, atol=0)
        torch.testing.assert_close(targets, targets_ahead, rtol=0, atol=0)


def test_training_restores_the_thread_count(plane8, tiny_settings):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train.fit([plane_data(plane8, 3, tiny_settings)], tiny_settings, torch.device("cpu"))
        assert torch.get_num_threads() == 2
        broken = make_settings("confocal", "fast", steps=4, crop_size=24, batch_size=2)
        planes = [plane_data(plane8, 3, broken)]
        planes[0].means = [planes[0].means[0][:5]]  # a crop no longer fits: fails mid-training
        with pytest.raises(RuntimeError):
            train.fit(planes, broken, torch.device("cpu"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_shared_network_draws_crops_from_all_its_planes(plane8, tiny_settings):
    """Several planes in one training set: each crop first draws its plane; one plane draws
    exactly what a network of its own draws."""
    settings = make_settings("confocal", "fast", steps=3, crop_size=16, batch_size=64)
    one = plane_data(plane8, 5, settings)
    alone = [t for t, _ in (train._draw_batch(one, settings, (16, 16)) for _ in range(3))]
    again = plane_data(plane8, 5, settings)
    assert all(torch.equal(a, train._draw_batch(again, settings, (16, 16))[0]) for a in alone)
    dark = plane_data((plane8 // 4).astype(np.uint8), 5, settings)
    both = plane_data(plane8, 5, settings)
    both.noisy, both.target, both.means = (one.noisy + dark.noisy, one.target + dark.target,
                                           one.means + dark.means)
    targets, _ = train._draw_batch(both, settings, (16, 16))
    means = targets.mean(dim=(1, 2, 3))
    bright_mean, dark_mean = float(one.target[0].mean()), float(dark.target[0].mean())
    split = (bright_mean + dark_mean) / 2
    assert (means > split).any() and (means < split).any()  # crops of both planes


@pytest.mark.parametrize("recipe", ["fast", "v2"])
def test_progress_callback_sees_every_step_and_changes_no_weight(plane8, recipe):
    """training_progress reports 0, then every optimiser step (warm-up included) of each
    grouped pass, and the trained weights are bitwise those of a run without it."""
    settings = make_settings("confocal", recipe, samples=3, steps_per_sample=2, crop_size=24,
                             batch_size=1 if recipe == "v2" else 2)
    total = settings.warmup_steps + 6
    device = torch.device("cpu")
    plain = train.fit([plane_data(plane8, s, settings) for s in (1, 2)], settings, device)
    calls = []
    with train.training_progress(lambda *call: calls.append(call)):
        watched = train.fit([plane_data(plane8, s, settings) for s in (1, 2)], settings, device)
    assert calls == [(done, total, 2) for done in range(total + 1)]
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)
    train.fit([plane_data(plane8, 1, settings)], settings, device)  # outside: not called
    assert len(calls) == total + 1


def test_progress_blocks_nest_and_an_error_stops_training(plane8, tiny_settings):
    outer, inner = [], []

    def stop(done, total, networks):
        if done == 2:
            raise KeyboardInterrupt

    with train.training_progress(lambda *c: outer.append(c)):
        with train.training_progress(lambda *c: inner.append(c)):
            train.fit([plane_data(plane8, 1, tiny_settings)], tiny_settings, torch.device("cpu"))
        with train.training_progress(stop), pytest.raises(KeyboardInterrupt):
            train.fit([plane_data(plane8, 1, tiny_settings)], tiny_settings, torch.device("cpu"))
    assert inner and not outer
    assert not train._progress_callbacks
