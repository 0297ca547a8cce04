"""Latent-optimisation terms and schedules (Eq. 6-15) against hand-computed values."""

import math

import pytest
import torch

from mifo_engine.config import SynthesisConfig
from mifo_engine.guidance import (
    attention_term,
    decay_weight,
    guidance_loss,
    in_box_reward,
    out_of_box_penalty,
    step_size,
    subject_masses,
)
from mifo_engine.refine import assign_clusters, kmeans, soft_cross_attention_masks


@pytest.mark.parametrize(
    ("tau", "expected"), [(0, 0.4), (3, 0.1), (9, 0.055), (15, 0.01), (20, 0.01)]
)
def test_decay_weight_eq11(tau, expected):
    assert decay_weight(tau, SynthesisConfig()) == pytest.approx(expected)


def test_decay_weight_linear_part_and_switch_off():
    assert decay_weight(1, SynthesisConfig()) == pytest.approx(0.3)
    assert decay_weight(9, SynthesisConfig(weight_decay=False)) == pytest.approx(0.4)


def test_step_size_from_8_to_2():
    cfg = SynthesisConfig()
    assert step_size(0, cfg) == pytest.approx(8.0)
    assert step_size(14, cfg) == pytest.approx(2.0)
    assert step_size(7, cfg) == pytest.approx(5.0)


def test_subject_masses_hand_computed():
    # B=1, Q=3 pixels, K=2 keys; pixel 0 in subject 0's box, pixel 2 background
    attn = torch.tensor([[[0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]])
    context = torch.tensor([[[1.0, 0.0]]])  # subject 0's context is key 0
    regions = torch.tensor([[[True, False, False]]])
    bg = torch.tensor([[False, False, True]])  # pixel 1 belongs to another subject
    fg, out = subject_masses(attn, context, regions, bg)
    assert fg.item() == pytest.approx(0.6)
    assert out.item() == pytest.approx(0.3)


def test_reward_and_penalty_terms():
    fg, bg = torch.tensor([3.0]), torch.tensor([1.0])
    assert in_box_reward(fg, bg).item() == pytest.approx((1 - 3 / 4) ** 2)
    assert out_of_box_penalty(bg).item() == pytest.approx(math.log(2.0))


def test_guidance_loss_eq14_and_switches():
    fg, bg = torch.tensor([[3.0]]), torch.tensor([[1.0]])
    r, p = (1 - 0.75) ** 2, math.log(2.0)
    cfg = SynthesisConfig()
    assert guidance_loss((fg, bg), (fg, bg), 0.4, cfg).item() == pytest.approx(
        1.5 * (r + 0.4 * p) + 0.5 * (r + 0.4 * p)
    )
    assert guidance_loss((fg, bg), None, 0.4, cfg).item() == pytest.approx(1.5 * (r + 0.4 * p))
    no_in = SynthesisConfig(in_box_term=False)
    assert attention_term(fg, bg, 0.4, no_in).item() == pytest.approx(0.4 * p)
    no_out = SynthesisConfig(out_box_term=False)
    assert attention_term(fg, bg, 0.4, no_out).item() == pytest.approx(r)


def test_kmeans_separates_two_blobs_deterministically():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(20, 2, generator=gen) * 0.1, torch.randn(20, 2, generator=gen) * 0.1 + 5]
    )[None]
    labels, centroids = kmeans(x, 2, iters=20, generator=torch.Generator().manual_seed(1))
    assert labels[0, :20].unique().numel() == 1 and labels[0, 20:].unique().numel() == 1
    assert labels[0, 0] != labels[0, 20]
    again, _ = kmeans(x, 2, iters=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(labels, again)
    warm, _ = kmeans(x, 2, iters=20, generator=torch.Generator().manual_seed(99), init=centroids)
    assert torch.equal(labels, warm)


def test_cluster_assignment_by_overlap_score():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    soft = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]])
    masks = assign_clusters(labels, 3, soft, threshold=0.2)
    # cluster 0 -> subject 0 (score 1); cluster 1 -> subject 1 (1/min(2,1) = 1); cluster 2 dropped
    assert masks[0, 0].tolist() == [True, True, False, False, False, False]
    assert masks[0, 1].tolist() == [False, False, True, True, False, False]


def test_soft_cross_attention_masks_stay_in_region():
    ca = torch.tensor([[[0.0, 1.0, 0.5]]])
    region = torch.tensor([[[True, True, False]]])
    soft = soft_cross_attention_masks(ca, region, sharpness=10.0, offset=0.2)
    assert soft[0, 0, 2] == 0
    assert soft[0, 0, 1].item() == pytest.approx(1 / (1 + math.exp(-8)))
    assert soft[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(2)))
