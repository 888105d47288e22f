import json

import pytest

from fm2s.settings import PRESETS, RECIPES, Settings, make_settings, parse_overrides


def test_presets_match_reference_table():
    assert PRESETS["confocal"] == dict(channels=2, region_size=75, median_size=3, k_g=200.0,
                                       k_p=30.0, lam_p=70.0)
    assert PRESETS["widefield"]["median_size"] == 11
    assert PRESETS["widefield"]["lam_p"] == 2000.0
    assert PRESETS["base"]["channels"] == 6 and PRESETS["base"]["region_size"] == 5
    assert PRESETS["v1"]["lam_p"] == 60.0


def test_recipes_reproduce_published_schedules():
    v1, v2 = make_settings("v1", "v1"), make_settings("confocal", "v2")
    assert v1.total_steps == 3750 and v1.lr_milestones == (1500, 3000) and v1.lr_gamma == 0.25
    assert v1.kernel_size == 3 and v1.mean_clamp == (0.01, 0.20)
    assert v2.warmup_steps == 5 and v2.samples == 450 and v2.steps_per_sample == 5
    assert v2.warmup_steps + v2.total_steps == 2255
    assert v2.kernel_size == 5 and v2.mean_clamp == (1e-5, 0.15)
    assert v2.crop_size == 0 and v2.batch_size == 1 and v2.precision == "float32"


def test_round_trip_dict_and_json():
    settings = make_settings("twophoton", "fast", k_g=150, steps=40)
    assert Settings.from_dict(settings.to_dict()) == settings
    assert Settings.from_json(settings.to_json()) == settings
    assert json.loads(settings.to_json())["k_g"] == 150
    assert settings.digest() == Settings.from_json(settings.to_json()).digest()
    assert settings.digest() != settings.replace(k_g=151).digest()


def test_steps_override_sets_samples():
    settings = make_settings(steps=25)
    assert settings.samples == 25 and settings.steps_per_sample == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_settings("confocl"), "unknown preset 'confocl'"),
        (lambda: make_settings(recipe="v3"), "unknown recipe 'v3'"),
        (lambda: make_settings(kg=1), "unknown setting 'kg'"),
        (lambda: make_settings(median_size=4), "must be odd"),
        (lambda: make_settings(channels=0), "channels must be an integer >= 1"),
        (lambda: make_settings(lam_p=0), "must be > 0"),
        (lambda: make_settings(mean_clamp=(0, 1)), "mean_clamp"),
        (lambda: make_settings(lr_schedule="cosine"), "unknown lr_schedule"),
        (lambda: make_settings(precision="float16"), "unknown precision"),
        (lambda: make_settings(steps=0), "steps must be"),
        (lambda: make_settings("auto", noise_line_corr=0.5), "noise_line_corr in"),
        (lambda: Settings.from_dict({"bogus": 1}), "unknown keys 'bogus'"),
        (lambda: Settings.from_dict({"preset": "confocal"}), "missing keys .*'channels'"),
        (lambda: parse_overrides(["k_g"]), "expected KEY=VALUE"),
    ],
)
def test_invalid_settings_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_every_preset_and_recipe_combination_is_valid():
    for preset in PRESETS:
        for recipe in RECIPES:
            assert make_settings(preset, recipe).preset == preset


def test_parse_overrides_reads_json_and_plain_strings():
    overrides = parse_overrides(["k_g=150", "precision=bfloat16", 'lr_schedule="step"',
                                 "mean_clamp=[0.01, 0.2]", "turn_average=false", "k_g = 151"])
    assert overrides == dict(k_g=151, precision="bfloat16", lr_schedule="step",
                             mean_clamp=[0.01, 0.2], turn_average=False)
    assert make_settings(**overrides).mean_clamp == (0.01, 0.2)


def test_steps_is_the_step_count_of_every_network_shared_or_not():
    """--set steps=N trains every network N steps: a group's shared one too, not N per plane
    up to group_samples (3,000)."""
    from fm2s.networks import unit_samples

    settings = make_settings(steps=60)
    assert settings.group_samples == 60
    assert [unit_samples(settings, planes) for planes in (1, 4, 64)] == [60, 60, 60]
    default = make_settings()
    assert [unit_samples(default, planes) for planes in (1, 2, 64)] == [1500, 3000, 3000]
    explicit = make_settings(steps=60, group_samples=600)
    assert [unit_samples(explicit, planes) for planes in (1, 4, 64)] == [60, 240, 600]
    assert make_settings(recipe="v2", steps=60).group_samples == 0  # a network per plane
