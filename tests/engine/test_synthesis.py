"""The synthesis stage on the tiny model (METHOD section 4)."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from mifo_engine.attention import unet_attention_layers
from mifo_engine.config import SynthesisConfig
from mifo_engine.controller import BoundedController
from mifo_engine.errors import Cancelled, LayoutError
from mifo_engine.guidance import decay_weight, guidance_loss
from mifo_engine.layout import validate_synthesis_request
from mifo_engine.learning import learn
from mifo_engine.models import load_base_model
from mifo_engine.sampling import ddim_scheduler, encode_text, image_generators, initial_latents
from mifo_engine.synthesis import _controlled_layers, _optimise, synthesize
from tests.engine.conftest import FAST_LEARN

PROMPT = "a photo of <asset0> and <asset1> at the beach"
BOXES = {"<asset0>": [0.0, 0.0, 0.5, 0.5], "<asset1>": [0.5, 0.5, 1.0, 1.0]}
FAST = SynthesisConfig(steps=6, guidance_steps=3, refine_start=3, refine_every=2)


def _processor_types(base):
    return {k: type(v).__name__ for k, v in base.unet.attn_processors.items()}


def test_images_previews_and_diagnostics(tiny_base, tiny_concept):
    result = synthesize(
        tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(num_images=2, seed=5)
    )
    assert result.seeds == [5, 6]
    assert len(result.images) == 2 and result.images[0].size == (tiny_base.resolution,) * 2
    assert result.previews[0].size[0] >= 256
    assert set(result.diagnostics[0]) == {"<asset0>", "<asset1>"}
    assert all(0.0 < v < 1.0 for d in result.diagnostics for v in d.values())
    assert len(result.guidance_losses) == FAST.guidance_steps
    assert list(result.images[0].getdata()) != list(result.images[1].getdata())


def test_boxes_by_instance_name(tiny_base, tiny_concept):
    named = {"left toy": BOXES["<asset0>"], "right toy": BOXES["<asset1>"]}
    a = synthesize(tiny_base, tiny_concept, PROMPT, named, config=FAST)
    b = synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST)
    assert list(a.images[0].getdata()) == list(b.images[0].getdata())


def test_deterministic_and_explicit_seeds(tiny_base, tiny_concept):
    a = synthesize(
        tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(num_images=2, seed=11)
    )
    b = synthesize(
        tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(num_images=1, seeds=(12,))
    )
    again = synthesize(
        tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(num_images=2, seed=11)
    )
    assert [list(i.getdata()) for i in a.images] == [list(i.getdata()) for i in again.images]
    # an image depends on its own seed only, not on its place in the batch
    assert torch.allclose(_pixels(a.images[1]), _pixels(b.images[0]), atol=2)


def _pixels(image):
    return torch.tensor(list(image.getdata()), dtype=torch.float32)


def test_without_boxes_matches_the_diffusers_pipeline(tiny_base, tiny_concept):
    cfg = SynthesisConfig(steps=5, seed=3)
    ours = synthesize(tiny_base, tiny_concept, PROMPT, None, config=cfg).images[0]
    with tiny_concept.applied(tiny_base) as tokenizer:
        pipe = StableDiffusionPipeline(
            vae=tiny_base.vae,
            text_encoder=tiny_base.text_encoder,
            tokenizer=tokenizer,
            unet=tiny_base.unet,
            scheduler=DDIMScheduler.from_config(tiny_base.scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        size = tiny_base.resolution
        theirs = pipe(
            PROMPT,
            height=size,
            width=size,
            num_inference_steps=5,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(3)],
        ).images[0]
    assert (_pixels(ours) - _pixels(theirs)).abs().max() <= 1


def test_processors_restored_after_a_run_and_after_an_error(tiny_base, tiny_concept):
    before = _processor_types(tiny_base)
    synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST)
    assert _processor_types(tiny_base) == before

    def boom(p):
        if p.step == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST, progress=boom)
    assert _processor_types(tiny_base) == before
    assert tiny_base.text_encoder.get_input_embeddings().weight.shape[0] == len(tiny_base.tokenizer)


def test_cancel_from_the_callback(tiny_base, tiny_concept):
    seen = []

    def stop(p):
        seen.append(p)
        return p.step < 2

    with pytest.raises(Cancelled):
        synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST, progress=stop)
    assert seen[-1].step == 2 and seen[-1].total == FAST.steps
    assert "guidance" in seen[1].losses


def _controller(tiny_base, tiny_concept, cfg):
    layout = validate_synthesis_request(tiny_concept.metadata(), PROMPT, BOXES, tiny_base.tokenizer)
    latent = tiny_concept.latent_size
    layers = unet_attention_layers(tiny_base.unet.attn_processors, tiny_base.unet.config, latent)
    loss, refine = _controlled_layers(layers, cfg, latent)
    return layout, layers, loss, refine


def test_controller_biases_by_branch_and_mode(tiny_base, tiny_concept):
    cfg = SynthesisConfig()
    with tiny_concept.applied(tiny_base) as tokenizer:
        layout, layers, loss, refine = _controller(tiny_base, tiny_concept, cfg)
        _, ids = encode_text(tiny_base, tokenizer, PROMPT)
        ctl = BoundedController(layout, tokenizer, ids, 1, cfg, tiny_base.device, loss, refine)
    cross = next(lay for lay in layers if lay.kind == "cross" and lay.resolution == 8)
    self_ = next(lay for lay in layers if lay.kind == "self" and lay.resolution == 8)
    a0 = ids.index(tokenizer.convert_tokens_to_ids("<asset0>"))
    a1 = ids.index(tokenizer.convert_tokens_to_ids("<asset1>"))
    eot = ids.index(tokenizer.eos_token_id)
    in0, in1, bg = 0, 63, 7  # (0,0) in box 0, (7,7) in box 1, (0,7) background at 8x8
    bias = ctl.bias(cross, 2, 64, 77, torch.float32)
    assert bias.shape == (2, 1, 64, 77)
    assert torch.all(bias[0] == 0)  # unconditional branch unbounded
    cond = bias[1, 0]
    assert cond[in0, a0] == 0 and cond[in0, a1] == float("-inf") and cond[in1, a1] == 0
    assert cond[bg, a0] == float("-inf") and cond[bg, eot] == float("-inf") and cond[in0, eot] == 0
    sa = ctl.bias(self_, 2, 64, 64, torch.float32)
    assert torch.equal(sa[0], sa[1])  # self-attention bounded in both branches
    assert sa[1, 0, in0, in1] == float("-inf") and sa[1, 0, in0, bg] == 0 and sa[1, 0, bg, in1] == 0
    ctl.mode = "optimize"
    opt = ctl.bias(cross, 1, 64, 77, torch.float32)[0, 0]
    assert opt.shape == (64, 77)
    assert opt[bg, a0] == 0 and opt[bg, eot] == 0 and opt[in0, a1] == float("-inf")


def test_one_gradient_iteration_lowers_the_loss(tiny_base, tiny_concept):
    cfg = SynthesisConfig(max_guidance_iters=1, loss_threshold=0.0)
    with tiny_concept.applied(tiny_base) as tokenizer, torch.no_grad():
        layout, layers, loss_layers, refine = _controller(tiny_base, tiny_concept, cfg)
        cond, ids = encode_text(tiny_base, tokenizer, PROMPT)
        ctl = BoundedController(
            layout, tokenizer, ids, 1, cfg, tiny_base.device, loss_layers, refine
        )
        from mifo_engine.attention import MifoAttnProcessor, installed_processors

        z = initial_latents(tiny_base, image_generators([0]), tiny_concept.latent_size)
        t = ddim_scheduler(tiny_base, 50).timesteps[0]

        def loss_at(latents):
            ctl.mode = "optimize"
            with torch.enable_grad():
                tiny_base.unet(latents, t, encoder_hidden_states=cond)
                ca, sa = ctl.masses()
            ctl.mode = "denoise"
            return float(guidance_loss(ca, sa, decay_weight(0, cfg), cfg))

        with installed_processors(
            tiny_base.unet, {lay.name: MifoAttnProcessor(lay, ctl) for lay in layers}
        ):
            before = loss_at(z)
            moved, normalised = _optimise(tiny_base, ctl, z, t, cond, 0, cfg)
            after = loss_at(moved)
    assert normalised == pytest.approx(before / 2, rel=1e-4)
    assert not torch.equal(moved, z)
    assert after < before


def test_box_control_raises_the_in_box_attention_share(scene):
    # Random tiny weights give almost uniform attention, which no latent can move; a trained
    # model's attention is peaked. Sharpen the queries so the tiny model behaves like one.
    base = load_base_model("tiny")
    with torch.no_grad():
        for name, module in base.unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                module.to_q.weight.mul_(8.0)
    concept = learn(
        base, *scene, config=FAST_LEARN.replace(phase2=False, phase1_steps=2, reward_steps=1)
    )
    cfg = SynthesisConfig(steps=20, num_images=2, seed=0)
    on = synthesize(base, concept, PROMPT, BOXES, config=cfg).diagnostics
    off = synthesize(
        base, concept, PROMPT, BOXES, config=cfg.replace(box_control=False)
    ).diagnostics
    for with_control, without in zip(on, off, strict=True):
        for token in BOXES:
            assert with_control[token] > without[token] + 0.02, (on, off)


def test_every_ablation_switch_changes_the_result(tiny_base, tiny_concept):
    # the refinement starts inside this short run (FAST), so every switch has something to do
    default = synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST)
    for switch in (
        "sa_control",
        "ca_control",
        "in_box_term",
        "out_box_term",
        "weight_decay",
        "mask_refinement",
    ):
        result = synthesize(
            tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(**{switch: False})
        )
        assert _pixels(result.images[0]).ne(_pixels(default.images[0])).any(), switch


def test_save_writes_images_previews_and_record(tiny_base, tiny_concept, tmp_path):
    result = synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=FAST.replace(num_images=2))
    out = result.save(tmp_path / "s")
    record = json.loads((out / "synthesis.json").read_text())
    assert record["seeds"] == [0, 1] and record["prompt"] == PROMPT
    assert record["boxes"]["<asset0>"] == {"name": "left toy", "box": BOXES["<asset0>"]}
    assert {p.name for p in out.iterdir()} == {
        "synthesis.json",
        "image_00.png",
        "image_01.png",
        "preview_00.png",
        "preview_01.png",
    }
    assert "torch" in record["versions"]


@pytest.mark.parametrize(
    ("prompt", "boxes", "field", "words"),
    [
        (
            "a photo of <asset0>",
            {"<asset1>": [0, 0, 0.5, 0.5]},
            "boxes[<asset1>]",
            "does not mention",
        ),
        ("a photo of <asset7>", {}, "prompt", "<asset0> (left toy)"),
        (
            "a photo of <asset0>",
            {"<asset9>": [0, 0, 0.5, 0.5]},
            "boxes[<asset9>]",
            "<asset1> (right toy)",
        ),
        (
            "a photo of <asset0>",
            {"<asset0>": [0, 0, 1.5, 0.5]},
            "boxes[<asset0>]",
            "outside [0, 1]",
        ),
        (
            "a photo of <asset0>",
            {"<asset0>": [-0.1, 0, 0.5, 0.5]},
            "boxes[<asset0>]",
            "outside [0, 1]",
        ),
        ("a photo of <asset0>", {"<asset0>": [0.5, 0, 0.2, 0.5]}, "boxes[<asset0>]", "inverted"),
        (
            "a photo of <asset0>",
            {"<asset0>": [0.1, 0.1, 0.2, 0.9]},
            "boxes[<asset0>]",
            "smaller than one cell",
        ),
        (
            "a photo of <asset0>",
            {"<asset0>": [0, 0, 0.5, 0.5], "left toy": [0.5, 0, 1, 0.5]},
            "boxes[left toy]",
            "Two boxes",
        ),
        ("a photo of <asset0>", {"<asset0>": [0, 0, 0.5]}, "boxes[<asset0>]", "four numbers"),
        ("a photo of <asset0> " + "very " * 80, {}, "prompt", "limit is 77"),
        ("   ", {}, "prompt", "empty"),
    ],
)
def test_layout_errors(tiny_base, tiny_concept, prompt, boxes, field, words):
    with pytest.raises(LayoutError) as err:
        synthesize(tiny_base, tiny_concept, prompt, boxes, config=FAST)
    assert err.value.field == field
    assert words in str(err.value)
    assert err.value.fix


def test_overlapping_boxes_are_allowed(tiny_base, tiny_concept):
    boxes = {"<asset0>": [0.0, 0.0, 0.7, 0.7], "<asset1>": [0.3, 0.3, 1.0, 1.0]}
    assert synthesize(tiny_base, tiny_concept, PROMPT, boxes, config=FAST).images


def test_refinement_turns_self_attention_clusters_into_subject_masks(tiny_base, tiny_concept):
    cfg = SynthesisConfig(num_clusters=1)
    with tiny_concept.applied(tiny_base) as tokenizer:
        layout, layers, loss, refine = _controller(tiny_base, tiny_concept, cfg)
        _, ids = encode_text(tiny_base, tokenizer, PROMPT)
        ctl = BoundedController(layout, tokenizer, ids, 1, cfg, tiny_base.device, loss, refine)
    res = refine[0].resolution  # 8x8 on the tiny model
    grid = torch.arange(res * res)
    rows, cols = grid // res, grid % res
    # self-attention: pixels attend within their quadrant-row blocks -> two clear clusters
    top = (rows < res // 2).float()
    sa = torch.where(top[:, None].bool(), top[None, :], 1 - top[None, :]) / (res * res / 2)
    # subject 0's cross-attention peaks in its box (top-left); subject 1's is flat
    ca0 = ((rows < res // 2) & (cols < res // 2)).float()
    ca = torch.stack([ca0, torch.zeros(res * res)])[None]
    ctl._refine_sa, ctl._refine_ca, ctl._refine_count = sa[None], ca, 1
    before = ctl.regions(res).clone()
    ctl.refine()
    after = ctl.regions(res)[0]
    # each subject now owns the cluster that overlaps its box: masks spill beyond the boxes
    assert (
        after[0].view(res, res)[: res // 2].all() and not after[0].view(res, res)[res // 2 :].any()
    )
    assert (
        after[1].view(res, res)[res // 2 :].all() and not after[1].view(res, res)[: res // 2].any()
    )
    assert not torch.equal(after[0], before[0, 0]) and not torch.equal(after[1], before[0, 1])
    # every layer follows the refined masks from now on
    coarse = ctl.regions(res // 2)[0].view(2, res // 2, res // 2)
    assert coarse[0, : res // 4].all() and coarse[1, res // 4 :].all()


def test_eta_noise_comes_from_each_image_seed(tiny_base, tiny_concept):
    cfg = FAST.replace(eta=1.0, seed=21)
    a = synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=cfg).images[0]
    torch.manual_seed(12345)  # the global generator must not matter
    b = synthesize(tiny_base, tiny_concept, PROMPT, BOXES, config=cfg).images[0]
    assert list(a.getdata()) == list(b.getdata())
