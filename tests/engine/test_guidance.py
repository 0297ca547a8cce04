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
    optimise_latent,
    out_of_box_penalty,
    step_size,
    subject_masses,
)
from mifo_engine.refine import (
    MeanMap,
    assign_clusters,
    kmeans,
    normalise_columns,
    soft_cross_attention_masks,
)

KM = {"iters": 100, "tol": 1e-4}


@pytest.mark.parametrize(
    ("tau", "expected"), [(0, 0.4), (3, 0.1), (9, 0.055), (15, 0.01), (20, 0.01)]
)
def test_decay_weight_eq11(tau, expected):
    assert decay_weight(tau, SynthesisConfig()) == pytest.approx(expected)


def test_decay_weight_linear_part_and_switch_off():
    assert decay_weight(1, SynthesisConfig()) == pytest.approx(0.3)
    assert decay_weight(9, SynthesisConfig(alpha_decay=False)) == pytest.approx(0.4)


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


def _quadratic(calls):
    def loss_at(z):
        calls.append(float(z.detach()))
        loss = (z**2).sum()
        return loss, float(loss.detach())

    return loss_at


def test_the_update_that_gets_under_the_threshold_is_applied():
    # L = z^2, grad 2z, step 0.25: each update halves z. From z = 1: L = 1 (update -> 0.5),
    # L = 0.25 < 0.3 (update still applied -> 0.25), then the check stops the loop.
    calls = []
    z, normalised = optimise_latent(
        torch.tensor(1.0), _quadratic(calls), step=0.25, iters=5, threshold=0.3
    )
    assert calls == [1.0, 0.5]
    assert z.item() == pytest.approx(0.25)  # the old loop stopped at 0.5, dropping the update
    assert normalised == pytest.approx(0.25)  # the loss measured last, at z = 0.5


def test_every_guided_step_makes_at_least_one_update():
    calls = []
    z, normalised = optimise_latent(
        torch.tensor(0.5), _quadratic(calls), step=0.25, iters=5, threshold=0.3
    )
    assert calls == [0.5] and z.item() == pytest.approx(0.25) and normalised == 0.25
    calls.clear()
    z, _ = optimise_latent(torch.tensor(8.0), _quadratic(calls), step=0.25, iters=3, threshold=0.3)
    assert calls == [8.0, 4.0, 2.0] and z.item() == pytest.approx(1.0)  # iters caps the updates


def test_mean_map_keeps_every_step_since_the_first():
    m = MeanMap()
    assert m.mean() is None
    m.add(torch.tensor([1.0, 4.0]))
    m.add(torch.tensor([3.0, 0.0]))
    assert m.mean().tolist() == [2.0, 2.0] and m.count == 2
    m.add(torch.tensor([5.0, 2.0]))  # after a refinement: still the mean of all three
    assert m.mean().tolist() == [3.0, 2.0]


def test_self_attention_columns_are_divided_by_their_maximum_over_pixels():
    maps = torch.tensor([[[1.0, 4.0], [2.0, 2.0]]])  # (B, P=2 query pixels, K=2 keys)
    assert normalise_columns(maps, 0.0).tolist() == [[[0.5, 1.0], [1.0, 0.5]]]
    assert normalise_columns(maps, 1e-5)[0, 1, 0].item() == pytest.approx(2.0 / (2.0 + 1e-5))


def test_kmeans_separates_two_blobs_deterministically():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.randn(20, 2, generator=gen) * 0.1, torch.randn(20, 2, generator=gen) * 0.1 + 5]
    )[None]
    labels, centroids = kmeans(x, 2, inits=1, generator=torch.Generator().manual_seed(1), **KM)
    assert labels[0, :20].unique().numel() == 1 and labels[0, 20:].unique().numel() == 1
    assert labels[0, 0] != labels[0, 20]
    again, _ = kmeans(x, 2, inits=1, generator=torch.Generator().manual_seed(1), **KM)
    assert torch.equal(labels, again)
    warm, _ = kmeans(
        x, 2, inits=1, generator=torch.Generator().manual_seed(99), init=centroids, **KM
    )
    assert torch.equal(labels, warm)


def test_kmeans_keeps_the_start_with_the_lowest_inertia():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0, 20.0, 21.0])[None, :, None]  # (B=1, N=6, D=1)
    # started at 0, 1 and 10, Lloyd ends in {0}, {1}, {10, 11, 20, 21}: inertia 101
    bad = torch.tensor([[[0.0], [1.0], [10.0]]])
    labels, centroids = kmeans(x, 3, inits=1, generator=torch.Generator(), init=bad, **KM)
    assert labels[0].tolist() == [0, 1, 2, 2, 2, 2]
    assert centroids.flatten().tolist() == [0.0, 1.0, 15.5]
    # 100 random starts find the pairs: inertia 6 * 0.5^2 = 1.5
    labels, centroids = kmeans(x, 3, inits=100, generator=torch.Generator().manual_seed(0), **KM)
    pairs = labels[0].view(3, 2)
    assert (pairs[:, 0] == pairs[:, 1]).all() and pairs[:, 0].unique().numel() == 3
    assert sorted(centroids.flatten().tolist()) == [0.5, 10.5, 20.5]


def test_kmeans_stops_after_iters_updates():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0])[None, :, None]
    init = torch.tensor([[[0.0], [1.0]]])
    # one update from (0, 1): {0} and {1, 10, 11} -> centroids 0 and 22/3
    _, centroids = kmeans(x, 2, iters=1, tol=0.0, inits=1, generator=torch.Generator(), init=init)
    assert centroids.flatten().tolist() == pytest.approx([0.0, 22 / 3])


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
    soft = soft_cross_attention_masks(ca, region, sharpness=10.0, offset=0.2, eps=1e-5)
    # map / (max + eps), sigmoid(10 * (x - 0.2)), then min-max rescaled (+ eps), times region
    sig = [1 / (1 + math.exp(-10 * (v / (1 + 1e-5) - 0.2))) for v in (0.0, 1.0)]
    assert soft[0, 0, 2] == 0
    assert soft[0, 0, 0].item() == 0.0  # the old sigmoid alone left 0.12 here
    assert soft[0, 0, 1].item() == pytest.approx((sig[1] - sig[0]) / (sig[1] - sig[0] + 1e-5))
