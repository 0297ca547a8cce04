"""Mask post-processing on hand-made decoder outputs: scaling, cutting, choosing, de-duplicating."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mifo_engine.config import LearnConfig
from mifo_engine.inputs import check_inputs, mask_to_binary
from mifo_engine.maskpost import (
    best_by_iou,
    crop_low_res,
    dedupe,
    mask_boxes,
    mask_image,
    mask_iou,
    save_masks,
    stability_scores,
    threshold,
    upscale_logits,
)

# A 16x8 (width x height) image in an 8 px square: it fills rows 0-3 of the square, so rows
# 0-1 of 4x4 low-resolution logits, the rest is padding.
SQUARE, SCALED, SIZE = 8, (4, 8), (8, 16)


def test_upscale_gives_the_image_size_and_keeps_a_constant() -> None:
    out = upscale_logits(torch.full((2, 3, 4, 4), 1.5), input_size=SQUARE, scaled=SCALED, size=SIZE)
    assert out.shape == (2, 3, *SIZE)
    assert torch.allclose(out, torch.full_like(out, 1.5))


def test_upscale_puts_a_left_half_on_the_left_half() -> None:
    low = torch.full((4, 4), -3.0)
    low[:, :2] = 5.0
    mask = threshold(upscale_logits(low, input_size=SQUARE, scaled=SCALED, size=SIZE))
    assert mask[:, :7].all() and not mask[:, 10:].any()


def test_upscale_cuts_the_padding_away() -> None:
    """Logits only in the padding rows leave the image empty; scaling the whole square to the
    image's size instead would have put them in its bottom rows."""
    low = torch.full((4, 4), -5.0)
    low[3] = 5.0
    assert not threshold(upscale_logits(low, input_size=SQUARE, scaled=SCALED, size=SIZE)).any()
    naive = torch.nn.functional.interpolate(low[None, None], SIZE, mode="bilinear")
    assert threshold(naive).any()


def test_crop_low_res_keeps_the_image_part() -> None:
    low = torch.arange(16.0).reshape(4, 4)
    assert crop_low_res(low, input_size=SQUARE, scaled=SCALED).tolist() == low[:2].tolist()
    # 53 of 64 rows: 26.5 of 32 low-resolution rows, the part row included
    assert crop_low_res(torch.zeros(3, 32, 32), input_size=64, scaled=(53, 64)).shape == (
        3,
        27,
        32,
    )


def test_threshold_is_strictly_above_zero() -> None:
    assert threshold(torch.tensor([-1.0, 0.0, 1e-6])).tolist() == [False, False, True]


def test_best_by_iou_takes_the_highest_and_the_first_of_equals() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.7, 0.2]])
    assert best_by_iou(scores).tolist() == [1, 0]


def test_stability_is_the_iou_of_the_masks_at_minus_and_plus_the_offset() -> None:
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    scores = stability_scores(logits, offset=1.0)
    assert scores[0].item() == pytest.approx(1 / 3)  # 1 pixel above 1, 3 above -1
    assert scores[1].item() == 0.0  # empty even at -1
    assert stability_scores(logits[:1], offset=0.0).item() == 1.0


def test_mask_boxes_end_one_past_the_last_pixel() -> None:
    masks = torch.zeros(2, 5, 8, dtype=torch.bool)
    masks[0, 1:3, 3:6] = True
    masks[0, 4, 0] = True
    assert mask_boxes(masks) == [(0, 1, 6, 5), None]


def test_mask_iou_by_hand() -> None:
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 pixels
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    b[0, 1:3] = True  # 8 pixels, 4 shared with a[0]
    iou = mask_iou(a, b)
    assert iou[0, 0].item() == pytest.approx(4 / 12)
    assert iou[1].tolist() == [0.0, 0.0]  # an empty mask overlaps nothing


def test_dedupe_keeps_the_better_of_two_alike_and_ranks() -> None:
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = True  # score 0.90
    masks[1, :5, :4] = True  # IoU 0.8 with 0, score 0.95: it wins
    masks[2, 5:, 5:] = True  # apart, score 0.50
    masks[3, 5:, 5:] = True  # the same as 2, score 0.50: the first of equals is kept
    scores = torch.tensor([0.90, 0.95, 0.50, 0.50])
    assert dedupe(masks, scores, max_iou=0.7) == [1, 2]
    assert dedupe(masks, scores, max_iou=0.85) == [1, 0, 2]
    assert dedupe(masks[:0], scores[:0], max_iou=0.7) == []


def test_mask_image_is_mode_l_0_255_at_the_mask_size() -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:4] = True
    image = mask_image(torch.from_numpy(mask))
    assert image.mode == "L" and image.size == (7, 5)
    assert sorted(np.unique(np.asarray(image)).tolist()) == [0, 255]
    assert (mask_to_binary(image, 0.5) == mask).all()


def test_saved_masks_pass_the_learning_input_checks(tmp_path) -> None:
    masks = np.zeros((2, 40, 48), dtype=bool)
    masks[0, 5:30, 6:20] = True
    masks[1, 10:35, 26:44] = True
    paths = save_masks(masks, tmp_path / "masks")
    assert [p.name for p in paths] == ["mask_00.png", "mask_01.png"]
    assert all(Image.open(p).mode == "L" for p in paths)
    image = Image.new("RGB", (48, 40), (90, 120, 60))
    shares = check_inputs(image, paths, resolution=40, config=LearnConfig())
    assert len(shares) == 2 and all(0 < s < 0.5 for s in shares)


def test_upscale_equals_transformers_sam_post_processing() -> None:
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    processor = SamImageProcessorPil(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}
    )
    low = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    theirs = processor.post_process_masks(low[None], [[80, 96]], [[53, 64]], binarize=False)[0]
    mine = upscale_logits(low, input_size=64, scaled=(53, 64), size=(80, 96))
    assert torch.allclose(mine, theirs, atol=1e-6)
    assert torch.equal(
        threshold(mine), processor.post_process_masks(low[None], [[80, 96]], [[53, 64]])[0]
    )
