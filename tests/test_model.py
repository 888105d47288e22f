import numpy as np
import pytest
import torch

from fm2s.model import FM2SNet, count_parameters
from fm2s.train import extract_model, predict


@pytest.mark.parametrize(("channels", "kernel", "count"),
                         [(2, 3, 3278), (1, 5, 3529), (2, 5, 4430)])
def test_parameter_counts_match_the_papers(channels, kernel, count):
    assert count_parameters(FM2SNet(channels, kernel)) == count


def test_grouped_models_are_independent_copies():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    grouped = FM2SNet(2, 5, models=3)
    grouped.reset_parameters(gens)
    assert count_parameters(grouped) == 3 * 4430
    alone = FM2SNet(2, 5)
    alone.reset_parameters([torch.Generator().manual_seed(2)])
    second = extract_model(grouped, 1)
    for a, b in zip(alone.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(1, 6, 20, 20)
    with torch.no_grad():
        np.testing.assert_allclose(grouped(x)[:, 2:4], second(x[:, 2:4]), rtol=1e-5, atol=1e-6)


def test_tiled_prediction_equals_full_frame():
    net = FM2SNet(2, 5)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    plane = np.random.default_rng(0).random((70, 53), dtype=np.float32)
    full = predict(net, plane, torch.device("cpu"), tile=512)
    tiled = predict(net, plane, torch.device("cpu"), tile=16)
    np.testing.assert_allclose(tiled, full, atol=1e-6)
    assert full.min() >= 0 and full.max() <= 1


def test_turn_average_is_the_mean_of_the_plane_and_its_half_turn():
    net = FM2SNet(2, 5)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    plane = np.random.default_rng(1).random((40, 33), dtype=np.float32)
    cpu = torch.device("cpu")
    plain = predict(net, plane, cpu)
    turned = predict(net, np.ascontiguousarray(plane[::-1, ::-1]), cpu)[::-1, ::-1]
    assert np.abs(plain - turned).max() > 1e-3  # the network alone is not turn-invariant
    averaged = predict(net, plane, cpu, tile=16, turn_average=True)
    np.testing.assert_allclose(averaged, (plain + turned) / 2, atol=1e-6)
    half_turned = predict(net, np.ascontiguousarray(plane[::-1, ::-1]), cpu, turn_average=True)
    np.testing.assert_allclose(half_turned[::-1, ::-1], averaged, atol=1e-6)


def _members(planes, settings, keys):
    from fm2s.prepare import prepare_plane

    return [prepare_plane(p, settings, k) for p, k in zip(planes, keys, strict=True)]


def _train_apply(prepared, pack):
    from fm2s.networks import TrainingUnit, apply_network, train_networks
    from fm2s.prepare import plane_seed

    cpu = torch.device("cpu")
    units = [TrainingUnit((p,), plane_seed(0, p.key)) for p in prepared]
    networks = train_networks(units, cpu, pack=pack)
    return [apply_network(n, p, plane_seed(0, p.key), cpu)
            for n, p in zip(networks, prepared, strict=True)]


def test_grouped_training_matches_training_alone(plane8):
    """The CUDA path trains several networks in one grouped pass; each must be its own."""
    from fm2s.settings import make_settings

    settings = make_settings(steps=4, crop_size=24, batch_size=2, precision="float32")
    planes = [plane8, np.fliplr(plane8).copy()]
    together = _train_apply(_members(planes, settings, "ab"), pack=2)
    alone = [_train_apply(_members([p], settings, k), pack=1)[0]
             for p, k in zip(planes, "ab", strict=True)]
    for joint, single in zip(together, alone, strict=True):
        assert joint.seed == single.seed
        diff = np.abs(joint.image.astype(int) - single.image.astype(int))
        assert diff.max() <= 1  # float rounding of grouped kernels may move a value by one step


def test_grouped_planes_of_different_boosts_match_training_alone(plane8):
    """12-bit planes in uint16 whose peaks sit in different powers of two train at different
    boosts; a group must split by boost and give each plane what it gets alone, blend included."""
    from fm2s.intensity import training_boost
    from fm2s.settings import make_settings

    settings = make_settings("auto", steps=4, crop_size=24, batch_size=2, precision="float32",
                             gain=4e-4, read_var=1e-7)
    bright = plane8.astype(np.uint16) * 16  # peak about 4080 of 65535: boost 16
    planes = [bright, bright // 2, np.fliplr(bright).copy()]  # boosts 16, 32, 16
    prepared = _members(planes, settings, "abc")
    assert [training_boost(p.noisy, settings) for p in prepared] == [16.0, 32.0, 16.0]
    together = _train_apply(prepared, pack=3)
    alone = [_train_apply(_members([p], settings, k), pack=1)[0]
             for p, k in zip(planes, "abc", strict=True)]
    for joint, single in zip(together, alone, strict=True):
        assert joint.seed == single.seed and joint.key == single.key
        assert 0.0 <= joint.info["blend"] <= 1.0
        assert abs(joint.info["blend"] - single.info["blend"]) < 1e-5
        diff = np.abs(joint.image.astype(int) - single.image.astype(int))
        assert diff.max() <= 1


def test_batched_prediction_gives_each_plane_its_own_result():
    """CUDA applies a chunk's planes in padded batches; a plane's output must not depend on
    its companions (or on the padding)."""
    from fm2s.train import predict_batch

    net = FM2SNet(2, 5)
    net.reset_parameters([torch.Generator().manual_seed(0)])
    planes = np.random.default_rng(2).random((3, 45, 38), dtype=np.float32)
    cpu = torch.device("cpu")
    batched = predict_batch(net, planes, cpu, tile=16, turn_average=True, batch=5)
    assert batched.shape == planes.shape
    for plane, out in zip(planes, batched, strict=True):
        np.testing.assert_allclose(out, predict(net, plane, cpu, turn_average=True), atol=1e-6)


def test_a_stack_applied_in_batches_gets_the_pixels_of_plane_by_plane(monkeypatch, tmp_path):
    """engine.apply_model with the CUDA batching (forced on the CPU) against one plane at a
    time: same networks chosen, blend weights and pixels (within float rounding)."""
    import fm2s.engine as engine
    from fm2s.settings import make_settings
    from fm2s.stacks import open_stack
    from fm2s.synthetic import write_synthetic_stack

    path = write_synthetic_stack(tmp_path / "s.ome.tif", t=3, c=2, z=2, size=48, seed=1)
    settings = make_settings("auto", steps=4, crop_size=24, batch_size=2, precision="float32")
    cpu = torch.device("cpu")
    with open_stack(path) as stack:
        model = engine.train_stack(stack, settings, seed=0, device=cpu)
        alone = list(engine.apply_model(stack, model, device=cpu))
        monkeypatch.setattr(engine, "inference_batch", lambda device, shape: 5)
        batched = list(engine.apply_model(stack, model, device=cpu))
    assert len(batched) == len(alone) == 12
    for a, b in zip(alone, batched, strict=True):
        assert a.key == b.key and a.seed == b.seed
        assert a.info["network"] == b.info["network"]
        assert abs(a.info["blend"] - b.info["blend"]) < 1e-5
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def _one_job_and_two(path, settings):
    """A stack denoised by engine.denoise_stack_planes (the planes it read, in order, and its
    results), and by engine.train_stack then engine.apply_model (the model, and results)."""
    import fm2s.engine as engine
    from fm2s.stacks import open_stack

    cpu = torch.device("cpu")
    with open_stack(path) as stack:
        reads = []
        original = stack.read_plane

        def counted(key):
            reads.append(tuple(key))
            return original(key)

        stack.read_plane = counted
        together = dict(engine.denoise_stack_planes(stack, settings, seed=0, device=cpu))
        stack.read_plane = original
        model = engine.train_stack(stack, settings, seed=0, device=cpu)
        apart = dict(zip(stack.plane_keys(), engine.apply_model(stack, model, device=cpu),
                         strict=True))
    return reads, together, model, apart


def test_a_stack_denoised_group_by_group_reads_each_plane_once(tmp_path):
    """denoise_stack_planes trains on a group's planes and applies its network to the same
    planes: read once, with the pixels of train_stack followed by apply_model."""
    from fm2s.settings import make_settings
    from fm2s.synthetic import write_synthetic_stack

    path = write_synthetic_stack(tmp_path / "s.ome.tif", t=2, c=2, z=2, size=40, seed=3)
    settings = make_settings("confocal", steps=4, crop_size=24, batch_size=2,
                             precision="float32", group_size=2)
    reads, together, _, apart = _one_job_and_two(path, settings)
    assert sorted(reads) == sorted(together)
    assert together.keys() == apart.keys()
    for key, result in together.items():
        np.testing.assert_array_equal(result.image, apart[key].image)
        assert result.info == apart[key].info


@pytest.mark.parametrize("preset", ["confocal", "auto"])
def test_a_group_larger_than_its_training_planes_denoises_every_plane(tmp_path, monkeypatch,
                                                                      preset):
    """A group trains on its evenly spaced training planes (engine.TRAINING_PIXELS) and its
    network denoises the others too, read once each as they are applied, with the pixels of
    train_stack followed by apply_model (the workflow's jobs); the planes it never saw
    improve as much as those it trained on."""
    import tifffile

    import fm2s.engine as engine
    from fm2s.settings import make_settings
    from fm2s.synthetic import clean_plane, noisy_plane

    clean = np.stack([clean_plane((48, 48), seed=i % 3, blobs=6) for i in range(7)])
    noisy = np.stack([noisy_plane(c, seed=10 + i) for i, c in enumerate(clean)])
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, noisy[None, None], ome=True, metadata={"axes": "TCZYX"})
    monkeypatch.setattr(engine, "TRAINING_PIXELS", 3 * 48 * 48)
    settings = make_settings(preset, steps=60, crop_size=24, batch_size=4,
                             precision="float32", group_size=7)
    reads, together, model, apart = _one_job_and_two(path, settings)
    if preset == "confocal":  # auto also reads the planes its noise model samples
        assert sorted(reads) == sorted(together)
    assert [k[2] for k in model.networks["group-0"].trained_on] == [0, 3, 6]
    assert set(model.networks) == {"group-0"}
    assert {entry["network"] for entry in model.planes.values()} == {"group-0"}
    assert all(entry["input_sha256"] for entry in model.planes.values())
    errors = {}
    for key, result in together.items():
        np.testing.assert_array_equal(result.image, apart[key].image)
        assert result.info == apart[key].info
        truth = clean[key.z] * 255
        errors[key.z] = (np.mean((result.image - truth) ** 2), np.mean((noisy[key.z] - truth) ** 2))
    for z, (denoised, raw) in errors.items():
        assert denoised < 0.5 * raw, z  # every plane got better
    unseen = np.mean([errors[z][0] / errors[z][1] for z in (1, 2, 4, 5)])
    seen = np.mean([errors[z][0] / errors[z][1] for z in (0, 3, 6)])
    assert unseen < 1.2 * seen
