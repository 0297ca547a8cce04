"""Learning and synthesis with the default layer settings on base models of other shapes than
SD 2.1's: UNets of 2, 3 and 4 levels (one with two layers per block), an SD 1.x-like text
encoder width and v prediction, each loaded from a diffusers directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mifo_engine.concept import Concept
from mifo_engine.config import LearnConfig, SynthesisConfig
from mifo_engine.errors import ConfigError
from mifo_engine.layers import (
    AttnStructure,
    learn_blocks,
    synthesis_blocks,
    unet_attention_layers,
)
from mifo_engine.learning import learn
from mifo_engine.models import LoadedBase, attention_structure, load_base_model
from mifo_engine.synthesis import synthesize
from tests.helpers.models import SHAPES, save_shape

# The layer settings are the defaults: only the step counts are cut to one or two per phase.
LEARN = LearnConfig(
    phase1_steps=2, reward_steps=1, phase2_steps=1, t_attn=1000, diagnostic_timesteps=(100,)
)
SYNTH = SynthesisConfig(
    steps=3, guidance_steps=2, max_guidance_iters=1, refine_start=1, refine_every=1, kmeans_inits=2
)
PROMPT = "a photo of <asset0> and <asset1>"
BOXES = {"<asset0>": (0.0, 0.0, 0.5, 1.0), "<asset1>": (0.5, 0.0, 1.0, 1.0)}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shaped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = save_shape(SHAPES[request.param], tmp_path_factory.mktemp(request.param) / "model")
    return request.param, folder, load_base_model(str(folder))


def test_default_layer_settings_name_blocks_the_model_has(shaped) -> None:
    _, folder, base = shaped
    structure = attention_structure(str(folder))
    assert structure.latent_size == base.latent_size == 16
    assert learn_blocks(structure, LearnConfig()).phase1
    assert synthesis_blocks(structure, SynthesisConfig()).refine is not None


def test_learns_and_synthesises_with_the_default_layer_settings(
    shaped, scene, tmp_path: Path
) -> None:
    name, _, base = shaped
    image, masks = scene
    concept = learn(base, image, masks, config=LEARN)
    assert concept.latent_size == 16 and concept.resolution == 32
    assert set(concept.diagnostics) == {"<asset0>", "<asset1>"}
    assert all(0 <= d["leakage_outside_mask"] <= 1 for d in concept.diagnostics.values())
    concept = Concept.load(concept.save(tmp_path / name))
    result = synthesize(base, concept, PROMPT, BOXES, config=SYNTH)
    assert [im.size for im in result.images] == [(32, 32)]
    assert len(result.guidance_losses) == SYNTH.guidance_steps
    assert all(0 <= v <= 1 for v in result.in_box_share[0].values())


def test_a_setting_the_model_lacks_is_refused_before_any_work(shaped, scene) -> None:
    _, _, base = shaped
    image, masks = scene
    ups = len(AttnStructure.from_layers(_layers(base), base.latent_size).blocks["up"])
    missing = 16 << ups  # the first decoder side past this model's finest
    seen: list = []
    config = LEARN.replace(attn_loss_resolutions=[16, missing])
    with pytest.raises(ConfigError) as caught:
        learn(base, image, masks, config=config, progress=seen.append)
    assert caught.value.field == "attn_loss_resolutions"
    assert f"up {missing}," in caught.value.message
    assert seen == []  # refused before the first step
    concept = learn(base, image, masks, config=LEARN.replace(phase1_steps=1, phase2=False))
    config = SYNTH.replace(loss_layers=[["mid", 8], ["up", missing]])
    with pytest.raises(ConfigError) as caught:
        synthesize(base, concept, PROMPT, BOXES, config=config, progress=seen.append)
    assert caught.value.field == "loss_layers"
    assert seen == []


def _layers(base: LoadedBase) -> list:
    return unet_attention_layers(base.unet.attn_processors, base.unet.config, base.latent_size)
