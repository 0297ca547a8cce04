"""Bounded-attention regions and visibility masks on hand-made boxes (METHOD section 4)."""

import torch

from mifo_engine.bounded import (
    TokenGroups,
    box_regions,
    cross_attention_visibility,
    mask_regions,
    self_attention_visibility,
    to_bias,
    token_groups,
)

# A 4x4 layer; box 0 is the top-left quarter, box 1 the bottom-right quarter.
BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
IN0, IN1, BG = 0 * 4 + 1, 3 * 4 + 2, 0 * 4 + 3  # pixel (0,1), (3,2), (0,3)
# [BOS, a, photo, of, <asset0>, and, <asset1>, EOT, pad, pad]
GROUPS = TokenGroups(length=10, subjects=((4,), (6,)), fillers=(1, 3, 5), end=(7, 8, 9))
BOS, PHOTO, A0, A1, EOT, PAD = 0, 2, 4, 6, 7, 9


def regions():
    return box_regions(BOXES, 4)[None]  # (B=1, S=2, P=16)


def test_box_raster_exact_cells():
    r = box_regions(BOXES, 4).view(2, 4, 4)
    expected0 = torch.zeros(4, 4, dtype=torch.bool)
    expected0[:2, :2] = True
    expected1 = torch.zeros(4, 4, dtype=torch.bool)
    expected1[2:, 2:] = True
    assert torch.equal(r[0], expected0)
    assert torch.equal(r[1], expected1)


def test_box_raster_half_covered_cells_and_tiny_boxes():
    # covers 60 % of column 1 -> included; 40 % of column 2 -> excluded
    r = box_regions(torch.tensor([[0.0, 0.0, 0.4, 1.0]]), 4).view(4, 4)
    assert r[:, :2].all() and not r[:, 2:].any()
    # a box smaller than a cell still owns the cell under its centre
    r = box_regions(torch.tensor([[0.6, 0.6, 0.65, 0.65]]), 4).view(4, 4)
    assert r.sum() == 1 and r[2, 2]


def test_cross_attention_rules_while_denoising():
    vis = cross_attention_visibility(regions(), GROUPS, optimizing=False)[0]  # (P, T)
    # inside box 0: its own token, the start token, content words, end-of-text
    assert vis[IN0, A0] and vis[IN0, BOS] and vis[IN0, PHOTO] and vis[IN0, EOT] and vis[IN0, PAD]
    assert not vis[IN0, A1]
    assert vis[IN1, A1] and not vis[IN1, A0]
    # background: no subject token, no end-of-text, but the start token and content words
    assert not vis[BG, A0] and not vis[BG, A1] and not vis[BG, EOT] and not vis[BG, PAD]
    assert vis[BG, BOS] and vis[BG, PHOTO]
    # fillers hidden everywhere
    assert not vis[:, [1, 3, 5]].any()


def test_cross_attention_rules_while_optimising():
    vis = cross_attention_visibility(regions(), GROUPS, optimizing=True)[0]
    # the background now sees the subject tokens and the end-of-text token
    assert vis[BG, A0] and vis[BG, A1] and vis[BG, EOT]
    # but a subject token stays hidden inside the other subject's box
    assert not vis[IN0, A1] and not vis[IN1, A0]
    assert not vis[:, [1, 3, 5]].any()


def test_self_attention_rules():
    vis = self_attention_visibility(regions())[0]  # (Q, K)
    assert vis[IN0, IN0] and vis[IN0, BG] and not vis[IN0, IN1]
    assert vis[IN1, IN1] and vis[IN1, BG] and not vis[IN1, IN0]
    assert vis[BG].all()  # background pixels attend everything
    # every row has something to attend
    assert vis.any(dim=-1).all()


def test_overlapping_boxes_see_both_subjects():
    boxes = torch.tensor([[0.0, 0.0, 0.75, 0.75], [0.25, 0.25, 1.0, 1.0]])
    r = box_regions(boxes, 4)[None]
    vis = self_attention_visibility(r)[0]
    both = 1 * 4 + 1  # (1,1) lies in both boxes
    only0, only1 = 0, 15
    assert vis[both, only0] and vis[both, only1]
    assert not vis[only0, only1]


def test_to_bias_is_additive_mask():
    allowed = torch.tensor([[[True, False]]])
    bias = to_bias(allowed, torch.float32)
    assert bias.shape == (1, 1, 1, 2)
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == float("-inf")
    scores = torch.tensor([1.0, 5.0])
    probs = (scores + bias[0, 0, 0]).softmax(-1)
    assert probs.tolist() == [1.0, 0.0]


def test_refined_masks_fall_back_to_boxes_when_empty():
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :2, :2] = 1.0  # subject 0 refined to a small corner, subject 1 empty
    fallback = box_regions(BOXES, 4)
    r = mask_regions(masks, fallback, 4)[0].view(2, 4, 4)
    assert r[0, 0, 0] and r[0].sum() == 1
    assert torch.equal(r[1], fallback[1].view(4, 4))


def test_token_groups_from_a_tokenised_prompt():
    strings = [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "<asset0>",
        "and</w>",
        "<asset1>",
        "<|endoftext|>",
        "!",
        "!",
    ]
    ids = [100, 1, 2, 3, 50, 5, 51, 101, 0, 0]
    g = token_groups(strings, [[50], [51]], ids, eos_id=101, fillers=["a", "of", "and"])
    assert g == GROUPS
