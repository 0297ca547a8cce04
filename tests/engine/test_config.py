"""Configs: the paper's defaults, and clear refusals naming the field."""

import dataclasses
import json
import math
import typing

import pytest

from mifo_engine.config import LearnConfig, SynthesisConfig
from mifo_engine.errors import ConfigError


def test_paper_defaults():
    c = LearnConfig()
    assert (c.reward_iterations, c.phase1_steps, c.phase2_steps, c.t_attn) == (200, 800, 400, 500)
    assert (c.lambda_reward, c.reward_alpha, c.lambda_penalty, c.lambda_rec) == (
        1e-2,
        0.5,
        2e-2,
        1.0,
    )
    assert (c.lr, c.adam_beta1, c.adam_beta2, c.weight_decay, c.lr_warmup_steps) == (
        5e-3,
        0.9,
        0.99,
        1e-2,
        10,
    )
    assert (c.beta_start, c.beta_end, c.train_timesteps) == (0.00085, 0.012, 1000)
    assert c.attn_loss_resolutions == (16, 32) and c.phase2_lr == 2e-6 and c.max_instances == 8
    s = SynthesisConfig()
    assert (s.steps, s.guidance_scale, s.guidance_steps, s.max_guidance_iters) == (50, 7.5, 15, 5)
    assert (s.alpha_max, s.alpha_mid, s.alpha_min, s.step_size_start, s.step_size_end) == (
        0.4,
        0.1,
        0.01,
        8.0,
        2.0,
    )
    assert (s.ca_weight, s.sa_weight, s.loss_threshold, s.refine_start, s.refine_every) == (
        1.5,
        0.5,
        0.2,
        15,
        5,
    )
    assert s.box_control and "the" in s.filler_words and "beach" not in s.filler_words


def test_attention_term_schedule():
    c = LearnConfig()
    assert [c.attn_term(i) for i in (0, 199, 200, 799)] == [
        "reward",
        "reward",
        "penalty",
        "penalty",
    ]
    assert LearnConfig(attn_loss="none").attn_term(0) == "none"
    assert LearnConfig(attn_loss="penalty").attn_term(0) == "penalty"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"phase1_steps": "many"}, "phase1_steps"),
        ({"phase1_steps": True}, "phase1_steps"),
        ({"phase2_mode": "half"}, "phase2_mode"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"init_words": "car"}, "init_words"),
        ({"attn_loss_resolutions": [16, "x"]}, "attn_loss_resolutions"),
    ],
)
def test_refusals_name_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        LearnConfig.from_mapping(values)
    assert err.value.field == field and err.value.fix


def test_json_lists_become_tuples_and_files_load(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps({"init_words": ["car", "dog"], "attn_loss_resolutions": [16], "seed": 3})
    )
    c = LearnConfig.from_file(path)
    assert c.init_words == ("car", "dog") and c.attn_loss_resolutions == (16,) and c.seed == 3
    assert LearnConfig.from_mapping(c.to_dict()) == c
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        LearnConfig.from_file(path)


def test_replace_validates():
    with pytest.raises(ConfigError):
        SynthesisConfig().replace(steps=0)
    assert SynthesisConfig().replace(num_images=2, seeds=[4, 9]).image_seeds() == [4, 9]
    assert SynthesisConfig(seed=5, num_images=3).image_seeds() == [5, 6, 7]


def test_reward_steps_default_to_the_first_quarter_of_phase_1():
    """Any phase-1 length keeps the paper's reward-then-penalty shape (200 + 600 of 800);
    a run shorter than 200 steps must not silently become reward-only."""
    assert LearnConfig().reward_steps is None and LearnConfig().reward_iterations == 200
    short = LearnConfig(phase1_steps=40)
    assert short.reward_iterations == 10
    assert [short.attn_term(i) for i in (0, 9, 10, 39)] == ["reward"] * 2 + ["penalty"] * 2
    assert LearnConfig().replace(phase1_steps=8).reward_iterations == 2  # follows phase1_steps
    assert [LearnConfig(phase1_steps=n).reward_iterations for n in (0, 1, 2, 3, 6)] == [
        0,
        0,
        1,
        1,
        2,
    ]
    assert LearnConfig.from_mapping({"phase1_steps": 100}).reward_iterations == 25
    assert (
        LearnConfig.from_mapping({"phase1_steps": 100, "reward_steps": None}).reward_iterations
        == 25
    )
    explicit = LearnConfig(phase1_steps=40, reward_steps=40)  # given: used as given
    assert explicit.reward_iterations == 40 and explicit.attn_term(39) == "reward"
    again = LearnConfig.from_mapping(json.loads(json.dumps(short.to_dict())))
    assert again == short and again.reward_iterations == 10
    with pytest.raises(ConfigError) as info:
        LearnConfig(reward_steps=-1)
    assert info.value.field == "reward_steps" and "null" in (info.value.fix or "")


def _float_fields(cls):
    hints = typing.get_type_hints(cls)
    return [
        f.name
        for f in dataclasses.fields(cls)
        if hints[f.name] is float or float in typing.get_args(hints[f.name])
    ]


@pytest.mark.parametrize(
    ("cls", "name"),
    [(LearnConfig, n) for n in _float_fields(LearnConfig)]
    + [(SynthesisConfig, n) for n in _float_fields(SynthesisConfig)],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_nan_and_infinities(cls, name, value):
    """NaN passes every comparison-based check (`nan > 0` and `nan < 0` are both false) and
    infinities pass the one-sided ones: neither must reach a run, a database or a log."""
    for build in (lambda: cls(**{name: value}), lambda: cls.from_mapping({name: value})):
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.field == name and "finite" in (err.value.fix or "")
    with pytest.raises(ConfigError):
        cls().replace(**{name: value})
    with pytest.raises(ConfigError):  # an int no float can hold is no finite number either
        cls(**{name: 10**400})


def test_float_fields_are_found():
    assert {"lr", "mask_threshold", "beta_end"} <= set(_float_fields(LearnConfig))
    assert {"guidance_scale", "eta", "ca_mask_offset"} <= set(_float_fields(SynthesisConfig))


def test_reference_defaults_where_the_method_is_silent():
    s = SynthesisConfig()
    assert (s.kmeans_inits, s.kmeans_iters, s.kmeans_tol, s.map_norm_eps) == (100, 100, 1e-4, 1e-5)
    for name, value in (
        ("kmeans_inits", 0),
        ("kmeans_iters", 0),
        ("kmeans_tol", -1.0),
        ("map_norm_eps", 0.0),
    ):
        with pytest.raises(ConfigError) as err:
            SynthesisConfig(**{name: value})
        assert err.value.field == name and name in (err.value.fix or "")


def test_alpha_decay_accepts_its_deprecated_name(tmp_path):
    """Stored options of older jobs say `weight_decay` for the synthesis alpha decay switch."""
    old = SynthesisConfig.from_mapping({"weight_decay": False})
    assert old == SynthesisConfig(alpha_decay=False)
    assert "weight_decay" not in old.to_dict() and old.to_dict()["alpha_decay"] is False
    assert SynthesisConfig().replace(weight_decay=False) == old
    path = tmp_path / "synthesis.json"
    path.write_text(json.dumps({"weight_decay": False, "steps": 3}))
    assert SynthesisConfig.from_file(path) == SynthesisConfig(alpha_decay=False, steps=3)
    with pytest.raises(ConfigError) as caught:
        SynthesisConfig.from_mapping({"weight_decay": False, "alpha_decay": True})
    assert caught.value.field == "weight_decay" and "alpha_decay" in caught.value.fix
    assert LearnConfig.from_mapping({"weight_decay": 0.5}).weight_decay == 0.5  # AdamW's, unchanged
