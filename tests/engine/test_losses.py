"""Learning losses (METHOD section 2, Eq. 1-5) against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from mifo_engine.losses import (
    leakage,
    masked_reconstruction_loss,
    penalty_loss,
    resize_masks,
    reward_loss,
    token_maps,
)


def test_reward_loss_hand_computed():
    attn = [torch.tensor([[0.2, 0.6], [0.1, 0.0]])]  # K=2 instances, P=2 pixels
    masks = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    # instance 0: ((0.5-0.2)^2 + (0-0.6)^2)/2 = (0.09+0.36)/2 = 0.225
    # instance 1: ((0-0.1)^2 + (0.5-0)^2)/2 = (0.01+0.25)/2 = 0.13
    got = reward_loss(attn, masks, alpha=0.5, weight=1e-2)
    assert got.item() == pytest.approx(1e-2 * (0.225 + 0.13))


def test_reward_loss_sums_over_layers():
    a = torch.tensor([[0.5, 0.0]])
    m = torch.tensor([[1.0, 0.0]])
    assert reward_loss([a, a], [m, m], alpha=0.5, weight=1.0).item() == pytest.approx(0.0)
    b = torch.tensor([[0.0, 0.0]])
    # per layer: ((0.5)^2 + 0)/2 = 0.125
    assert reward_loss([b, b], [m, m], alpha=0.5, weight=2.0).item() == pytest.approx(2.0 * 0.25)


def test_penalty_loss_hand_computed():
    attn = [torch.tensor([[0.2, 0.6], [0.1, 0.0]])]
    masks = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    # instance 0: (0 + 0.6^2)/2 = 0.18 ; instance 1: (0.1^2 + 0)/2 = 0.005
    got = penalty_loss(attn, masks, weight=2e-2)
    assert got.item() == pytest.approx(2e-2 * 0.185)


def test_penalty_ignores_attention_inside_the_mask():
    attn = [torch.tensor([[0.9, 0.0]])]
    masks = [torch.tensor([[1.0, 0.0]])]
    assert penalty_loss(attn, masks, weight=1.0).item() == 0.0


def test_masked_reconstruction_loss_hand_computed():
    noise = torch.zeros(1, 2, 1, 2)
    pred = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    mask = torch.tensor([[1.0, 0.0]])  # only the left latent pixel counts
    # squared masked errors: 1, 0, 9, 0 -> mean over 4 = 2.5
    assert masked_reconstruction_loss(noise, pred, mask).item() == pytest.approx(2.5)


def test_token_maps_picks_prompt_positions():
    maps = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)  # (B, P, T)
    out = token_maps(maps, [4, 1], sample=1)
    assert out.shape == (2, 3)
    assert torch.equal(out[0], maps[1, :, 4])
    assert torch.equal(out[1], maps[1, :, 1])


def test_resize_masks_bilinear_without_antialiasing():
    masks = torch.zeros(1, 8, 8)
    masks[0, :, 1] = 1.0  # one column on
    # 8 -> 2: output column 0 samples source x = 1.5, half-way between columns 1 and 2
    small = resize_masks(masks, 2, "bilinear")
    assert small.shape == (1, 2, 2)
    assert small[0, :, 0].tolist() == [0.5, 0.5] and small[0, :, 1].tolist() == [0.0, 0.0]
    # an antialiased resize (the old choice) spreads the column over its whole 4-pixel cell
    old = F.interpolate(masks[:, None], size=(2, 2), mode="bilinear", antialias=True)
    assert old[0, 0, 0, 0].item() == pytest.approx(0.25, abs=0.05)
    # 8 -> 4: x = 0.5 (columns 0 and 1) and 2.5 (columns 2 and 3)
    assert resize_masks(masks, 4, "bilinear")[0, 0].tolist() == [0.5, 0.0, 0.0, 0.0]


def test_resize_masks_nearest_takes_the_pixel_at_the_floor():
    masks = torch.zeros(1, 8, 8)
    masks[0, :, 1] = 1.0
    masks[0, :, 4] = 1.0
    # 8 -> 2: source columns floor(0 * 4) = 0 and floor(1 * 4) = 4
    assert resize_masks(masks, 2, "nearest")[0].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert resize_masks(masks, 8, "nearest") is masks


def test_leakage_shares():
    attn = torch.tensor([[0.5, 0.3, 0.2], [0.0, 1.0, 0.0]])  # N=2 tokens, P=3 pixels
    masks = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    outside, others = leakage(attn, masks)
    assert outside.tolist() == pytest.approx([0.5, 0.0])
    assert others.tolist() == pytest.approx([0.3, 0.0])


def _toy_attention(steps_reward: int, steps_penalty: int) -> torch.Tensor:
    """Appendix F toy: per-pixel learnable logits over [background, instance 0, instance 1]."""
    torch.manual_seed(0)
    pixels = 30
    masks = torch.zeros(3, pixels)
    masks[0, 20:] = 1.0  # background
    masks[1, :10] = 1.0
    masks[2, 10:20] = 1.0
    logits = (0.1 * torch.randn(pixels, 3)).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for step in range(steps_reward + steps_penalty):
        attn = logits.softmax(-1).T  # (3 tokens, P)
        if step < steps_reward:
            loss = reward_loss([attn], [masks], alpha=0.5, weight=1e-2)
        else:
            loss = penalty_loss([attn], [masks], weight=2e-2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logits.detach().softmax(-1).T


def test_appendix_f_reward_only_leaves_attention_on_the_other_instance():
    attn = _toy_attention(1500, 0)
    on_other = torch.cat([attn[2, :10], attn[1, 10:20]])
    # closed form of the reward optimum: every non-target token keeps (1 - alpha) / 3
    assert on_other.mean().item() == pytest.approx((1 - 0.5) / 3, abs=0.02)
    assert on_other.min().item() > 0.1


def test_appendix_f_penalty_drives_it_to_near_zero():
    attn = _toy_attention(200, 1500)
    on_other = torch.cat([attn[2, :10], attn[1, 10:20]])
    own = torch.cat([attn[1, :10], attn[2, 10:20]])
    assert on_other.max().item() < 0.02
    assert own.min().item() > 0.95
    assert not math.isnan(own.sum().item())


def test_leakage_counts_attention_on_pixels_two_instances_share():
    """Two masks of the same pixels: each token's attention lies on the other instance too,
    so the share inside other instances is all of it, not near zero."""
    attn = torch.tensor([[0.25, 0.25, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])
    same = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    outside, others = leakage(attn, same)
    assert outside.tolist() == pytest.approx([0.5, 0.0])
    assert others.tolist() == pytest.approx([0.5, 1.0])
    # Half-overlapping masks: pixel 1 belongs to both; it counts as another's for each.
    half = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    _, others = leakage(attn, half)
    assert others.tolist() == pytest.approx([0.25 + 0.5, 0.5 + 0.5])
