"""The learning stage end to end on the tiny model (METHOD sections 2-3)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mifo_engine import attention as attention_mod
from mifo_engine import learning
from mifo_engine.concept import Concept
from mifo_engine.config import LearnConfig
from mifo_engine.errors import Canceled, ConfigError, InputError
from mifo_engine.inputs import prepare_inputs
from mifo_engine.learning import learn
from mifo_engine.synthesis import synthesize
from tests.engine.conftest import FAST_LEARN

PHASE1_ONLY = FAST_LEARN.replace(phase2=False)


def _table(base):
    return base.text_encoder.get_input_embeddings().weight


def _fingerprint(base):
    return {
        "processors": {k: type(v).__name__ for k, v in base.unet.attn_processors.items()},
        "vocab": _table(base).shape[0],
        "tokenizer": len(base.tokenizer),
        "unet": {k: v.clone() for k, v in base.unet.state_dict().items()},
        "text": {k: v.clone() for k, v in base.text_encoder.state_dict().items()},
        "grad": any(p.requires_grad for p in base.unet.parameters()),
    }


def _assert_same(a, b):
    assert a["processors"] == b["processors"]
    assert a["vocab"] == b["vocab"] and a["tokenizer"] == b["tokenizer"]
    assert a["grad"] == b["grad"]
    for key in ("unet", "text"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name


def test_concept_content(tiny_concept, tiny_base):
    assert [t.token for t in tiny_concept.tokens] == ["<asset0>", "<asset1>"]
    assert [t.name for t in tiny_concept.tokens] == ["left toy", "right toy"]
    assert tiny_concept.adaptation == "lora"
    assert tiny_concept.unet_weights and tiny_concept.text_encoder_weights
    dim = _table(tiny_base).shape[1]
    assert all(v.shape == (dim,) for v in tiny_concept.embeddings.values())
    for token in ("<asset0>", "<asset1>"):
        d = tiny_concept.diagnostics[token]
        assert 0.0 <= d["leakage_into_other_instances"] <= d["leakage_outside_mask"] <= 1.0
        assert tiny_concept.attention_maps[token].size == (
            tiny_base.resolution,
            tiny_base.resolution,
        )


def test_learning_leaves_the_base_model_as_it_was(tiny_base, scene):
    before = _fingerprint(tiny_base)
    learn(
        tiny_base, *scene, config=FAST_LEARN.replace(phase1_steps=3, phase2_steps=2, reward_steps=1)
    )
    _assert_same(before, _fingerprint(tiny_base))


def test_only_new_token_rows_change_in_phase1(tiny_base, scene):
    original = _table(tiny_base).detach().clone()
    seen = []

    def watch(p):
        if p.phase == "phase1" and p.step > 0:
            table = _table(tiny_base).detach()
            seen.append(
                (
                    torch.equal(table[: original.shape[0]], original),
                    table[original.shape[0] :].clone(),
                )
            )

    learn(tiny_base, *scene, config=PHASE1_ONLY, progress=watch)
    assert len(seen) == PHASE1_ONLY.phase1_steps
    assert all(unchanged for unchanged, _ in seen)
    assert not torch.equal(seen[0][1], seen[-1][1])  # the new rows did move


def test_attention_loss_only_below_t_attn(tiny_base, scene, monkeypatch):
    records = []
    real = attention_mod.CaptureController.record
    monkeypatch.setattr(
        attention_mod.CaptureController,
        "record",
        lambda self, *a: (records.append(1), real(self, *a)),
    )
    terms = []

    def watch(p):
        if p.phase == "phase1" and p.step > 0:
            terms.append(set(p.losses))

    learn(
        tiny_base,
        *scene,
        config=PHASE1_ONLY.replace(t_attn=0, diagnostic_timesteps=()),
        progress=watch,
    )
    assert terms and all(t == {"rec"} for t in terms)
    assert records == []  # no probabilities were materialised at all
    terms.clear()
    learn(tiny_base, *scene, config=PHASE1_ONLY.replace(t_attn=1000), progress=watch)
    assert terms[: PHASE1_ONLY.reward_steps] == [{"rec", "reward"}] * PHASE1_ONLY.reward_steps
    assert all(t == {"rec", "penalty"} for t in terms[PHASE1_ONLY.reward_steps :])


def test_same_seed_same_embeddings_other_seed_differs(tiny_base, scene):
    cfg = FAST_LEARN.replace(phase1_steps=4, reward_steps=1, phase2_steps=2)
    a = learn(tiny_base, *scene, config=cfg)
    b = learn(tiny_base, *scene, config=cfg)
    c = learn(tiny_base, *scene, config=cfg.replace(seed=1))
    for token in a.embeddings:
        assert torch.equal(a.embeddings[token], b.embeddings[token])
        assert not torch.equal(a.embeddings[token], c.embeddings[token])
    for name in a.unet_weights:
        assert torch.equal(a.unet_weights[name], b.unet_weights[name])


def test_init_words_start_from_the_word_embedding(tiny_base, scene):
    cfg = PHASE1_ONLY.replace(phase1_steps=0, init_words=("car", "dog"))
    concept = learn(tiny_base, *scene, config=cfg)
    tok = tiny_base.tokenizer
    for token, word in zip(("<asset0>", "<asset1>"), ("car", "dog"), strict=True):
        ids = tok(word, add_special_tokens=False).input_ids
        assert torch.allclose(concept.embeddings[token], _table(tiny_base)[ids].mean(0).float())
    assert [t.init_word for t in concept.tokens] == ["car", "dog"]


def test_bad_names_and_init_words(tiny_base, scene):
    with pytest.raises(InputError) as err:
        learn(tiny_base, *scene, names=["only one"], config=PHASE1_ONLY)
    assert err.value.field == "names"
    with pytest.raises(ConfigError) as err:
        learn(tiny_base, *scene, config=PHASE1_ONLY.replace(init_words=("car",)))
    assert err.value.field == "init_words"


def test_cancel_from_the_callback_stops_and_restores(tiny_base, scene):
    before = _fingerprint(tiny_base)

    def stop(p):
        return not (p.phase == "phase2" and p.step == 1)

    with pytest.raises(Canceled):
        learn(tiny_base, *scene, config=FAST_LEARN, progress=stop)
    _assert_same(before, _fingerprint(tiny_base))


def test_error_inside_the_loop_restores_the_base(tiny_base, scene):
    before = _fingerprint(tiny_base)

    def boom(p):
        if p.phase == "phase1" and p.step == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        learn(tiny_base, *scene, config=FAST_LEARN, progress=boom)
    _assert_same(before, _fingerprint(tiny_base))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_saved_concept_reproduces_the_trained_model_exactly(tiny_base, scene, tmp_path, mode):
    concept = learn(
        tiny_base,
        *scene,
        config=FAST_LEARN.replace(phase2_mode=mode, phase1_steps=3, reward_steps=1, phase2_steps=2),
    )
    prompt, boxes = (
        "a photo of <asset0> and <asset1>",
        {"<asset0>": [0, 0, 0.5, 1], "<asset1>": [0.5, 0, 1, 1]},
    )
    from mifo_engine.config import SynthesisConfig

    cfg = SynthesisConfig(steps=4, guidance_steps=2, seed=3)
    before = synthesize(tiny_base, concept, prompt, boxes, config=cfg).images[0]
    concept.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "concept.json").read_text())
    assert meta["adaptation"] == mode and meta["seed"] == 0
    assert meta["base_model"]["weights_hash"] == tiny_base.weights_hash
    assert {"torch", "diffusers", "transformers"} <= set(meta["versions"])
    assert meta["tokens"][0]["token"] == "<asset0>"
    if mode == "full":  # the token table is stored once, as the new tokens' rows only
        assert not [k for k in concept.text_encoder_weights if "token_embedding" in k]
    loaded = Concept.load(tmp_path / "c")
    after = synthesize(tiny_base, loaded, prompt, boxes, config=cfg).images[0]
    assert list(before.getdata()) == list(after.getdata())
    with torch.no_grad(), concept.applied(tiny_base) as tok_a:
        ids = tok_a(
            "a photo of <asset0>", padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        z = torch.randn(
            1,
            4,
            tiny_base.latent_size,
            tiny_base.latent_size,
            generator=torch.Generator().manual_seed(0),
        )
        out_a = tiny_base.unet(z, 10, encoder_hidden_states=tiny_base.text_encoder(ids)[0]).sample
    with torch.no_grad(), loaded.applied(tiny_base) as tok_b:
        out_b = tiny_base.unet(
            z,
            10,
            encoder_hidden_states=tiny_base.text_encoder(
                tok_b(
                    "a photo of <asset0>", padding="max_length", max_length=77, return_tensors="pt"
                ).input_ids
            )[0],
        ).sample
    assert torch.equal(out_a, out_b)


def test_the_concept_keeps_its_input_masks(tiny_concept, tiny_base, scene, tmp_path):
    image, masks = scene
    prepared = prepare_inputs(image, masks, resolution=tiny_base.resolution, config=FAST_LEARN)
    for kept, mask in zip(tiny_concept.input_masks, prepared.masks, strict=True):
        assert kept.mode == "L" and kept.size == tiny_concept.input_image.size
        assert torch.equal(torch.from_numpy(np.asarray(kept) > 127), mask > 0.5)
    tiny_concept.save(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "concept.json").read_text())
    assert meta["files"]["masks"] == {
        "<asset0>": "masks/asset0.png",
        "<asset1>": "masks/asset1.png",
    }
    loaded = Concept.load(tmp_path / "c")
    assert [np.asarray(m).tolist() for m in loaded.input_masks] == [
        np.asarray(m).tolist() for m in tiny_concept.input_masks
    ]


def test_save_refuses_a_non_empty_directory(tiny_concept, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        tiny_concept.save(tmp_path / "c")
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_prior_preservation_generates_class_images(tiny_base, scene):
    phases = []
    cfg = FAST_LEARN.replace(
        phase1_steps=2,
        reward_steps=1,
        phase2_steps=2,
        prior_preservation=True,
        class_prompt="a photo of a toy",
        num_class_images=2,
        class_image_steps=2,
    )
    losses = []

    def watch(p):
        phases.append(p.phase)
        if p.phase == "phase2" and p.losses:
            losses.append(set(p.losses))

    learn(tiny_base, *scene, config=cfg, progress=watch)
    assert "prior" in phases
    assert losses and all("prior" in s for s in losses)


def test_prior_preservation_below_the_native_resolution(tiny_base, scene):
    cfg = FAST_LEARN.replace(
        resolution=32,
        phase1_steps=1,
        reward_steps=1,
        phase2_steps=1,
        prior_preservation=True,
        class_prompt="a toy",
        num_class_images=1,
        class_image_steps=2,
    )
    concept = learn(tiny_base, *scene, config=cfg)
    assert concept.resolution == 32 and concept.latent_size == 16


def test_prior_preservation_needs_a_class_prompt():
    with pytest.raises(ConfigError) as err:
        LearnConfig(prior_preservation=True)
    assert err.value.field == "class_prompt"


def test_execution_options_on_cpu(tiny_base, scene):
    cfg = FAST_LEARN.replace(phase1_steps=2, reward_steps=1, phase2_steps=2)
    # recomputation and bf16 autocast both run on CPU too, and are in effect in every step
    seen = []

    def look(module, args, kwargs):
        seen.append(
            (
                module.is_gradient_checkpointing,
                torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
            )
        )

    hook = tiny_base.unet.register_forward_pre_hook(look, with_kwargs=True)
    try:
        concept = learn(
            tiny_base, *scene, config=cfg.replace(gradient_checkpointing="on", precision="bf16")
        )
    finally:
        hook.remove()
    training = seen[: cfg.phase1_steps + cfg.phase2_steps]  # the diagnostics pass comes last
    assert training == [(True, torch.bfloat16)] * len(training)
    assert not tiny_base.unet.is_gradient_checkpointing
    assert all(torch.isfinite(v).all() for v in concept.embeddings.values())
    with pytest.raises(ConfigError) as err:
        learn(tiny_base, *scene, config=cfg.replace(optimizer="adamw_fused"))
    assert err.value.field == "optimizer"


def test_frozen_text_encoder_in_phase2(tiny_base, scene):
    cfg = FAST_LEARN.replace(
        phase1_steps=2, reward_steps=1, phase2_steps=2, phase2_train_text_encoder=False
    )
    rows = []

    def watch(p):
        if p.phase in ("phase1", "phase2") and p.step == p.total:
            rows.append(_table(tiny_base)[-2:].detach().clone())

    concept = learn(tiny_base, *scene, config=cfg, progress=watch)
    assert torch.equal(rows[0], rows[1])  # phase 2 left the tokens alone
    lora_b = [v for k, v in concept.text_encoder_weights.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(v) == 0 for v in lora_b)
    assert any(torch.count_nonzero(v) for k, v in concept.unet_weights.items() if "lora_B" in k)


def test_separate_sampling_draws_one_instance_per_step(tiny_base, scene, monkeypatch):
    subsets = []
    real = learning._Run._prompt
    monkeypatch.setattr(
        learning._Run, "_prompt", lambda self, sub: (subsets.append(tuple(sub)), real(self, sub))[1]
    )
    cfg = PHASE1_ONLY.replace(phase1_steps=8, diagnostic_timesteps=())
    learn(tiny_base, *scene, config=cfg.replace(joint_sampling=False))
    steps = subsets[:8]  # the diagnostics then prompt with every instance
    assert {len(s) for s in steps} == {1} and {s[0] for s in steps} == {0, 1}
    subsets.clear()
    learn(tiny_base, *scene, config=cfg)  # joint: this seed draws both instances together too
    assert {len(s) for s in subsets[:8]} == {1, 2}


@pytest.mark.parametrize("attn_loss", ["reward", "penalty"])
def test_single_term_attention_losses_in_phase1(tiny_base, scene, attn_loss):
    terms = []

    def watch(p):
        if p.phase == "phase1" and p.step > 0:
            terms.append(set(p.losses))

    cfg = PHASE1_ONLY.replace(attn_loss=attn_loss, phase1_steps=4, diagnostic_timesteps=())
    learn(tiny_base, *scene, config=cfg, progress=watch)
    assert terms == [{"rec", attn_loss}] * 4  # reward_steps does not switch it


@pytest.mark.parametrize("changes", [{"phase2": False}, {"phase2_steps": 0}])
def test_no_phase2_means_adaptation_none(tiny_base, scene, tmp_path, changes):
    phases = set()
    cfg = FAST_LEARN.replace(phase1_steps=2, reward_steps=1, **changes)
    concept = learn(tiny_base, *scene, config=cfg, progress=lambda p: phases.add(p.phase))
    assert "phase2" not in phases
    assert concept.adaptation == "none"
    assert concept.unet_weights == {} and concept.text_encoder_weights == {}
    concept.save(tmp_path / "c")
    loaded = Concept.load(tmp_path / "c")
    assert loaded.adaptation == "none" and loaded.unet_weights == {}
    assert json.loads((tmp_path / "c" / "concept.json").read_text())["adaptation"] == "none"


def test_masks_are_resized_as_the_reference_does(tiny_base, scene, monkeypatch):
    # one instance, no flip: every step's union mask is instance 0's mask
    image, masks = scene
    cfg = PHASE1_ONLY.replace(
        phase1_steps=1, reward_steps=1, flip_prob=0.0, diagnostic_timesteps=()
    )
    seen = {}
    rec, reward = learning.masked_reconstruction_loss, learning.reward_loss

    def spy_rec(noise, pred, mask):
        seen["rec"] = mask.clone()
        return rec(noise, pred, mask)

    def spy_reward(attn, layer_masks, **kw):
        seen["reward"] = [m.clone() for m in layer_masks]
        return reward(attn, layer_masks, **kw)

    monkeypatch.setattr(learning, "masked_reconstruction_loss", spy_rec)
    monkeypatch.setattr(learning, "reward_loss", spy_reward)
    learn(tiny_base, image, masks[:1], config=cfg)

    full = prepare_inputs(image, masks[:1], resolution=tiny_base.resolution, config=cfg).masks
    full = full[:, None].float()
    latent = tiny_base.latent_size
    assert torch.equal(
        seen["rec"], F.interpolate(full, size=(latent, latent), mode="nearest")[0, 0]
    )
    assert {m.shape[-1] for m in seen["reward"]} == {8 * 8, 16 * 16}  # up blocks at 16 and 32
    for m in seen["reward"]:
        r = int(m.shape[-1] ** 0.5)
        ref = F.interpolate(full, size=(r, r), mode="bilinear", align_corners=False)
        assert torch.allclose(m, ref.flatten(1), atol=1e-6)
        old = F.interpolate(full, size=(r, r), mode="bilinear", antialias=True)
        assert not torch.allclose(m, old.flatten(1), atol=1e-3)  # the old masks differ
