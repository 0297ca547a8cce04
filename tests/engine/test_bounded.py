"""Bounded-attention regions and visibility masks on hand-made boxes (METHOD section 4)."""

import torch

from mifo_engine.bounded import (
    TokenGroups,
    box_regions,
    cross_attention_visibility,
    fill_empty_masks,
    mask_regions,
    self_attention_visibility,
    to_bias,
    token_groups,
)

# A 4x4 layer; box 0 is the top-left quarter, box 1 the bottom-right quarter.
BOXES = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
IN0, IN1, BG = 0 * 4 + 1, 3 * 4 + 2, 0 * 4 + 3  # pixel (0,1), (3,2), (0,3)
# [BOS, a, photo, of, <asset0>, and, <asset1>, EOT, pad, pad]
GROUPS = TokenGroups(length=10, subjects=((4,), (6,)), fillers=(1, 3, 5), eos=7)
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


def test_box_raster_rounds_edges_like_python():
    # x: 0.1*4 = 0.4 -> 0 and 0.6*4 = 2.4 -> 2; y: 0.125*4 = 0.5 -> 0 and 0.625*4 = 2.5 -> 2
    # (halves to even); the old "half a cell covered" rule gave columns 0-1 and rows 0-2
    r = box_regions(torch.tensor([[0.1, 0.125, 0.6, 0.625]], dtype=torch.float64), 4).view(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 0:2] = True
    assert torch.equal(r, expected)
    # Python's round(0.1 * 5) is 0: 0.1 * 5 is 0.5 in float64 (0.50000001 from a float32 0.1)
    r = box_regions(torch.tensor([[0.1, 0.0, 0.5, 1.0]], dtype=torch.float64), 5).view(5, 5)
    assert r[0, 0] and r[0, 1] and not r[0, 2]
    assert round(0.1 * 5) == 0 and round(0.5 * 5) == 2
    # a box no cell edge falls inside keeps the cell under its centre
    r = box_regions(torch.tensor([[0.6, 0.6, 0.65, 0.65]]), 4).view(4, 4)
    assert r.sum() == 1 and r[2, 2]


def test_cross_attention_rules_while_denoising():
    vis = cross_attention_visibility(regions(), GROUPS, optimizing=False)[0]  # (P, T)
    # inside box 0: its own token, the start token, content words, end-of-text
    assert vis[IN0, A0] and vis[IN0, BOS] and vis[IN0, PHOTO] and vis[IN0, EOT] and vis[IN0, PAD]
    assert not vis[IN0, A1]
    assert vis[IN1, A1] and not vis[IN1, A0]
    # background: no subject token, no end-of-text, but the start token and content words
    assert not vis[BG, A0] and not vis[BG, A1] and not vis[BG, EOT]
    assert vis[BG, BOS] and vis[BG, PHOTO]
    # the padding after end-of-text stays visible to every pixel (reference)
    assert vis[:, 8:].all()
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
    assert bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == torch.finfo(torch.float32).min
    scores = torch.tensor([1.0, 5.0])
    probs = (scores + bias[0, 0, 0]).softmax(-1)
    assert probs.tolist() == [1.0, 0.0]
    assert to_bias(allowed, torch.float16)[0, 0, 0, 1] == -65504.0


def test_refined_masks_are_resized_nearest_exact():
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 1, 1] = True  # the source pixel of cell (0, 0) at 4x4: floor((0 + 0.5) * 2) = 1
    masks[0, 0, 4, 4] = True  # not a source pixel: dropped
    r = mask_regions(masks, 4)[0, 0].view(4, 4)
    assert r[0, 0] and r.sum() == 1
    # the old antialiased bilinear + 0.5 threshold lost the single pixel altogether
    assert torch.equal(mask_regions(masks, 8)[0, 0], masks.flatten())


def test_an_empty_refined_mask_takes_its_box_out_of_the_others():
    boxes = box_regions(BOXES, 4)
    masks = torch.zeros(1, 2, 16, dtype=torch.bool)
    masks[0, 0] = True  # subject 0 spilled over the whole layer; subject 1 came out empty
    out = fill_empty_masks(masks, boxes)
    assert torch.equal(out[0, 1], boxes[1])
    assert torch.equal(out[0, 0], ~boxes[1])
    assert masks[0, 1].sum() == 0  # the input is left as it was


def test_a_mask_emptied_by_the_cut_is_filled_in_its_turn():
    boxes = box_regions(BOXES, 4)
    masks = torch.zeros(1, 2, 16, dtype=torch.bool)
    masks[0, 1] = boxes[0]  # subject 0 empty; subject 1 sits exactly in box 0
    out = fill_empty_masks(masks, boxes)[0]
    assert torch.equal(out[0], boxes[0] & ~boxes[1])
    assert torch.equal(out[1], boxes[1])


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
