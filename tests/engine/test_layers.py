"""Which attention layers each part of the method reads, on UNets of any depth, and the
refusal of a configuration naming layers a model lacks (mifo_engine.layers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mifo_engine.builtin import build_unet_on_meta, sd21_unet_config, tiny_configs
from mifo_engine.config import LearnConfig, SynthesisConfig
from mifo_engine.errors import ConfigError, ModelLoadError
from mifo_engine.layers import (
    AttnStructure,
    check_layers,
    check_supported,
    learn_blocks,
    pick,
    reference_sides,
    synthesis_blocks,
    unet_attention_layers,
)
from mifo_engine.learning import _layers
from mifo_engine.synthesis import _controlled_layers
from tests.helpers.models import SHAPES

SD21_SIDES = {"down": (16, 32, 64), "mid": (8,), "up": (16, 32, 64)}


def _names(blocks: str, attentions: range, attn: str) -> list[str]:
    return [f"{blocks}.attentions.{a}.transformer_blocks.0.{attn}.processor" for a in attentions]


def _layers_of(config: dict, latent: int) -> list:
    unet = build_unet_on_meta(config)
    return unet_attention_layers(unet.attn_processors, unet.config, latent)


@pytest.fixture(scope="module")
def sd21_unet():
    return build_unet_on_meta(sd21_unet_config())


def test_the_reference_sides_are_read_from_sd21s_config() -> None:
    assert reference_sides() == {"down": 16, "mid": 8, "up": 16}


def test_on_sd21_learning_reads_todays_layers_one_by_one(sd21_unet) -> None:
    """Phase 1: the 6 cross-attention layers of up_blocks 1 and 2; phase 2: those of
    down_blocks.2 and up_blocks.1; diagnostics: every decoder cross-attention layer."""
    layers, blocks = _layers(SimpleNamespace(unet=sd21_unet), LearnConfig(), 64)
    assert [lay.name for lay in pick(layers, "cross", blocks.phase1)] == _names(
        "up_blocks.1", range(3), "attn2"
    ) + _names("up_blocks.2", range(3), "attn2")
    assert [lay.name for lay in pick(layers, "cross", blocks.phase2)] == _names(
        "down_blocks.2", range(2), "attn2"
    ) + _names("up_blocks.1", range(3), "attn2")
    assert [lay.name for lay in pick(layers, "cross", blocks.diagnostics)] == [
        name for b in (1, 2, 3) for name in _names(f"up_blocks.{b}", range(3), "attn2")
    ]


def test_on_sd21_synthesis_reads_todays_layers_one_by_one(sd21_unet) -> None:
    """Loss: the mid block and the first decoder block at 16x16, cross then self; refinement:
    that decoder block, self then cross."""
    layers = unet_attention_layers(sd21_unet.attn_processors, sd21_unet.config, 64)
    loss, refine = _controlled_layers(layers, SynthesisConfig(), 64)
    assert [lay.name for lay in loss] == [
        *_names("mid_block", range(1), "attn2"),
        *_names("up_blocks.1", range(3), "attn2"),
        *_names("mid_block", range(1), "attn1"),
        *_names("up_blocks.1", range(3), "attn1"),
    ]
    assert [lay.name for lay in refine] == _names("up_blocks.1", range(3), "attn1") + _names(
        "up_blocks.1", range(3), "attn2"
    )
    assert {lay.resolution for lay in loss} == {8, 16}


def _by_scaled_side(layers: list, kind: str, place: str, side: int, latent: int) -> list:
    """The rule before layers were ranked: the side scaled to the latent, at that place."""
    want = max(1, side * latent // 64)
    return [
        lay for lay in layers if lay.kind == kind and lay.place == place and lay.resolution == want
    ]


@pytest.mark.parametrize(
    ("config", "latents"),
    [(sd21_unet_config(), (64, 96, 32)), (tiny_configs()[0], (32, 16, 8))],
    ids=["sd21", "tiny"],
)
def test_on_sd21s_layout_every_side_names_the_layers_it_named_before(config, latents) -> None:
    for latent in latents:
        layers = _layers_of(config, latent)
        structure = AttnStructure.from_layers(layers, latent)
        for place, sides in SD21_SIDES.items():
            for side in sides:
                block = structure.block_at(place, side)
                assert block is not None, (place, side)
                for kind in ("cross", "self"):
                    before = _by_scaled_side(layers, kind, place, side, latent)
                    assert pick(layers, kind, {(place, block)}) == before, (latent, place, side)
                    assert before


@pytest.mark.parametrize(
    "config",
    [sd21_unet_config(), tiny_configs()[0], *(s.unet_config() for s in SHAPES.values())],
    ids=["sd21", "tiny", *SHAPES],
)
def test_the_structure_from_the_config_is_the_loaded_unets(config) -> None:
    """What the HTTP front end reads from unet/config.json, without torch, is what the engine
    finds on the loaded UNet."""
    for latent in (64, 16):
        from_unet = AttnStructure.from_layers(_layers_of(config, latent), latent)
        assert AttnStructure.from_unet_config(config, latent) == from_unet


def test_on_two_levels_each_rank_counts_from_the_coarsest_block() -> None:
    config = SHAPES["two_levels"].unet_config()
    structure = AttnStructure.from_unet_config(config, 32)
    assert structure.blocks == {"down": (1, 0), "mid": (0,), "up": (0, 1)}
    assert (
        structure.offers()
        == "down 16 (16x16), 32 (32x32); mid 8 (16x16); up 16 (16x16), 32 (32x32)"
    )
    learn = learn_blocks(structure, LearnConfig())
    assert learn.phase1 == {("up", 0), ("up", 1)}
    assert learn.phase2 == {("down", 1), ("up", 0)}
    assert learn.diagnostics == {("up", 0), ("up", 1)}
    synth = synthesis_blocks(structure, SynthesisConfig())
    assert synth.loss == (("mid", 0), ("up", 0)) and synth.refine == ("up", 0)
    assert structure.block_at("up", 64) is None and structure.block_at("up", 24) is None


def _two_levels() -> AttnStructure:
    return AttnStructure.from_unet_config(SHAPES["two_levels"].unet_config(), 32)


@pytest.mark.parametrize(
    ("cfg", "field", "fix"),
    [
        (SynthesisConfig(loss_layers=(("mid", 8), ("up", 64))), "loss_layers", "16, 32 at up"),
        (SynthesisConfig(loss_layers=()), "loss_layers", "at least one"),
        (SynthesisConfig(refine_resolution=8), "refine_resolution", "16, 32 at up"),
        (SynthesisConfig(refine_place="mid"), "refine_resolution", "8 at mid"),
        (LearnConfig(attn_loss_resolutions=(16, 64)), "attn_loss_resolutions", "16, 32 at up"),
        (LearnConfig(attn_loss_resolutions=()), "attn_loss_resolutions", "at least one"),
        (LearnConfig(phase2_attn_resolutions=(24,)), "phase2_attn_resolutions", "16, 32 at down"),
        (LearnConfig(phase2_attn_places=("up", "mid")), "phase2_attn_places", "8 at mid"),
    ],
)
def test_a_config_naming_what_the_model_lacks_is_refused_with_what_it_offers(
    cfg, field, fix
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_layers(_two_levels(), cfg)
    assert caught.value.field == field
    assert fix in caught.value.fix
    assert "up 16 (16x16), 32 (32x32)" in caught.value.message


@pytest.mark.parametrize(
    "cfg",
    [
        LearnConfig(attn_loss="none", attn_loss_resolutions=(64,)),
        LearnConfig(phase2=False, phase2_attn_resolutions=(64,)),
        LearnConfig(phase2_steps=0, phase2_attn_places=("mid",)),
        SynthesisConfig(mask_refinement=False, refine_resolution=64),
        SynthesisConfig(box_control=False, refine_resolution=64),
    ],
)
def test_fields_of_a_part_that_does_not_run_are_not_checked(cfg) -> None:
    check_layers(_two_levels(), cfg)


def test_each_named_place_and_side_must_name_something_somewhere() -> None:
    """As before, places and sides combine: down 16 and mid 8 are taken, down 8 and mid 16
    name nothing and are not refused, since each entry names a block at some place."""
    sd21 = AttnStructure.from_unet_config(sd21_unet_config(), 64)
    cfg = LearnConfig(phase2_attn_places=("down", "mid"), phase2_attn_resolutions=(16, 8))
    assert learn_blocks(sd21, cfg).phase2 == {("down", 2), ("mid", 0)}


def test_a_model_without_mid_cross_attention_refuses_the_default_loss_layers() -> None:
    config = {**SHAPES["two_levels"].unet_config(), "mid_block_type": None}
    structure = AttnStructure.from_unet_config(config, 32)
    assert structure.blocks["mid"] == ()
    check_layers(structure, LearnConfig())  # learning reads no mid layer by default
    with pytest.raises(ConfigError) as caught:
        check_layers(structure, SynthesisConfig())
    assert caught.value.field == "loss_layers" and "mid none" in caught.value.message
    assert "another place than mid" in caught.value.fix
    with pytest.raises(ConfigError, match="attn_loss_place"):
        check_layers(structure, LearnConfig(attn_loss_place="mid", attn_loss_resolutions=(8,)))


def test_a_unet_the_method_cannot_run_on_is_a_model_load_error() -> None:
    plain_up = {**SHAPES["two_levels"].unet_config(), "up_block_types": ["UpBlock2D"] * 2}
    with pytest.raises(ModelLoadError, match="no cross-attention in its up blocks"):
        check_supported(plain_up, AttnStructure.from_unet_config(plain_up, 16), "m")
    sdxl = {**sd21_unet_config(), "addition_embed_type": "text_time"}
    with pytest.raises(ModelLoadError, match="SDXL") as caught:
        check_supported(sdxl, AttnStructure.from_unet_config(sdxl, 64), "m")
    assert "1.x or 2.x" in (caught.value.fix or "")
